import pytest

from offload.scheduler.load import RemoteLoad, parse_load, usable_slots


def test_parse_load_reads_loadavg_and_cores():
    assert parse_load("3.50 2.10 1.00 2/345 6789\n8\n") == RemoteLoad(3.5, 8)


@pytest.mark.parametrize(
    "text", ["", "x y z\n4\n", "1.0 1.0 1.0 1/2 3\n", "nan 1 1\n4\n", "1 1 1\n0\n"]
)
def test_anything_else_is_no_reading(text):
    assert parse_load(text) is None


@pytest.mark.parametrize(
    ("slots", "load1", "cores", "expected"),
    [
        (4, 3.9, 8, 4),  # busy, but within its cores: all slots
        (4, 8.9, 8, 4),  # less than one whole core of excess
        (4, 10.0, 8, 2),  # two cores' worth of other work take two slots
        (4, 40.0, 8, 1),  # swamped: one slot stays
        (0, 40.0, 8, 0),  # a machine with no slots gets none
    ],
)
def test_load_beyond_the_cores_takes_slots_away(slots, load1, cores, expected):
    assert usable_slots(slots, RemoteLoad(load1, cores)) == expected
