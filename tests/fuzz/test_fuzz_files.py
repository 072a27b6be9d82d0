"""Files a user writes or may damage: offload.toml, DAG files, the state directory's files, and
the private key files doctor and build read for a passphrase.

Contracts: ``parse_offload_toml`` / ``load_offload_toml`` return the settings or raise a one-line
``ConfigError`` naming the file (and read at most 4 MiB); ``load_dag`` returns a ``Dag`` or
raises a one-line ``ConfigError``; ``load_backoff`` and ``read_choice`` read a damaged file as
no entry at all (these are caches of what offload learned, rewritten whole on the next save);
``History`` opens a damaged database with a one-line ``StoreError`` or reads what it can;
``encrypted_key`` answers True or False for any bytes.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from offload.backoff import load_backoff
from offload.config.settings import load_offload_toml, parse_offload_toml
from offload.dagfile import Dag, load_dag
from offload.errors import ConfigError, OffloadError, StoreError
from offload.transport.ssh_keys import encrypted_key
from offload.use import Choice, read_choice
from tests.fuzz.support import FUZZ, outcome

TOML_PIECES = ["[[machine]]\n", "[local]\n", "[machine]\n", "uri = ", "host = ", "name = ",
               "tags = ", "port = ", "max-jobs = ", "speed-factor = ", "enabled = ", "systems = ",
               '"a"', '"@x"', '"local"', '"a\\nb"', '"\\u0000"', "1", "-1", "99999999999999999999",
               "1e999", "nan", "inf", "0.5", "true", "[", "]", "{", "}", ",", "\n", "=", '"',
               "'", "[[", "]]", "#", "\\", '"ssh://h"', "[" * 2000, "{a=" * 600, '"\\"\n"=1\n',
               "\udcff", "\x00", "\r"]  # fmt: skip
tomls = st.lists(st.sampled_from(TOML_PIECES) | st.text(max_size=5), max_size=30).map("".join)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("files")


@FUZZ
@given(tomls | st.text(max_size=200))
def test_offload_toml_text(text: str) -> None:
    outcome(lambda: parse_offload_toml(text, "/etc/offload/offload.toml"), ConfigError)


@FUZZ
@given(data=st.binary(max_size=500) | tomls.map(lambda t: t.encode(errors="surrogateescape")))
def test_offload_toml_file(scratch: Path, data: bytes) -> None:
    path = scratch / "offload.toml"
    path.write_bytes(data)
    outcome(lambda: load_offload_toml(path, {}), ConfigError)


def test_offload_toml_of_an_endless_device_is_refused() -> None:
    result = outcome(lambda: load_offload_toml(Path("/dev/zero"), {}), ConfigError)
    assert isinstance(result, ConfigError)
    assert "larger than" in result.message


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
node_keys = st.sampled_from(["name", "work", "deps", "features", "system", "other"])
nodes = st.dictionaries(
    node_keys, json_values | st.sampled_from(["a", "b", 1, ["a"], ["b"], 10**400])
)
dags = st.one_of(
    json_values.map(json.dumps),
    st.lists(nodes, max_size=6).map(lambda ns: json.dumps({"nodes": ns})),
    st.integers(1, 100_000).map(lambda n: "[" * n),
    st.text(max_size=100),
)


@FUZZ
@given(data=dags.map(lambda t: t.encode(errors="surrogatepass")) | st.binary(max_size=200))
def test_dag_file(scratch: Path, data: bytes) -> None:
    path = scratch / "dag.json"
    path.write_bytes(data)
    result = outcome(lambda: load_dag(path), ConfigError)
    if isinstance(result, Dag):
        assert result.critical_path() >= 0


state_json = st.one_of(
    json_values.map(json.dumps),
    st.dictionaries(
        st.text(max_size=8),
        st.dictionaries(
            st.sampled_from(["failures", "until", "reason"]),
            json_values | st.sampled_from(["Infinity", 10**400, 1e308, -1, "x"]),
        ),
        max_size=3,
    ).map(lambda d: json.dumps(d).replace('"Infinity"', "Infinity")),
    st.dictionaries(
        st.sampled_from(["machines", "since", "until"]),
        json_values | st.sampled_from([10**400, ["a"], "NaN"]),
    ).map(json.dumps),
    st.integers(1, 100_000).map(lambda n: "[" * n),
)


@FUZZ
@given(data=state_json.map(str.encode) | st.binary(max_size=200))
def test_state_files(scratch: Path, data: bytes) -> None:
    (scratch / "backoff.json").write_bytes(data)
    (scratch / "use.json").write_bytes(data)
    backoff = load_backoff(scratch / "backoff.json", 1000.0)
    assert all(h.failures > 0 for h in backoff.values())
    choice = read_choice(scratch, 1000.0)
    assert choice is None or isinstance(choice, Choice)


def test_state_files_that_never_end_are_read_as_none(scratch: Path) -> None:
    (scratch / "zero").mkdir(exist_ok=True)
    (scratch / "zero" / "use.json").symlink_to("/dev/zero")
    assert load_backoff(Path("/dev/zero"), 0.0) == {}
    assert read_choice(scratch / "zero", 0.0) is None


@FUZZ
@given(data=st.binary(max_size=300), flip=st.integers(0, 1 << 16), cut=st.integers(0, 1 << 16))
def test_history_database(scratch: Path, data: bytes, flip: int, cut: int) -> None:
    from offload.history.db import History

    good = scratch / "good.sqlite"
    if not good.exists():
        with History(good):
            pass
        with closing(sqlite3.connect(good)) as db, db:
            db.execute(
                "INSERT INTO builds (run_id, drv_path, pname, machine, started, finished, status)"
                " VALUES ('r', '/nix/store/a-x.drv', 'x', 'm', 1, 2, 'built')"
            )
            db.execute("INSERT INTO runs VALUES ('r', 1, 2, '[\"x\"]', 'ok', '[]', NULL, 3)")
    damaged = bytearray(good.read_bytes())
    at = flip % len(damaged)
    damaged[at : at + len(data)] = data
    path = scratch / "history.sqlite"
    for leftover in scratch.glob("history.sqlite*"):
        leftover.unlink()
    path.write_bytes(bytes(damaged[: max(cut, 100)] if cut < len(damaged) else damaged))

    def use() -> object:
        with History(path) as history:
            return history.runs(), history.builds(), history.durations(["x"])

    outcome(use, OffloadError)


HUGE = "1" + "0" * 400  # an integer no float holds


@pytest.mark.parametrize(
    ("backoff", "use"),
    [
        ('{"m": {"failures": Infinity, "until": 2000}}', '{"machines": 5, "since": 1}'),
        (f'{{"m": {{"failures": 1, "until": {HUGE}}}}}', f'{{"machines": ["m"], "since": {HUGE}}}'),
        ("[" * 100_000, "[" * 100_000),
    ],
    ids=["infinity", "huge-int", "deep"],
)  # fmt: skip
def test_damaged_state_files_read_as_none(scratch: Path, backoff: str, use: str) -> None:
    (scratch / "backoff.json").write_text(backoff)
    (scratch / "use.json").write_text(use)
    assert load_backoff(scratch / "backoff.json", 1000.0) == {}
    assert read_choice(scratch, 1000.0) is None


def test_a_damaged_history_is_one_line(scratch: Path) -> None:
    from offload.history.db import History

    path = scratch / "damaged.sqlite"
    path.write_bytes(b"SQLite format 3\0" + b"\xff" * 200)
    with pytest.raises(StoreError, match="history database is damaged") as raised:
        History(path).close()
    assert "\n" not in raised.value.message


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('"a\\nb" = 1', "unknown key 'a\\nb'"),
        ('[[machine]]\nname = "@a\\nb"\nhost = "h"', "'-' or '@'), not '@a\\nb'"),
        ("x = " + "[" * 2000, "nested too deeply"),
        ("x = " + "{a=" * 600, "nested too deeply"),
    ],
    ids=["key", "name", "arrays", "tables"],
)
def test_offload_toml_errors_are_one_line(text: str, says: str) -> None:
    result = outcome(lambda: parse_offload_toml(text, "offload.toml"), ConfigError)
    assert isinstance(result, ConfigError)
    assert says in result.message


KEY_HEAD = b"-----BEGIN OPENSSH PRIVATE KEY-----\n"


@FUZZ
@given(st.binary(max_size=300) | st.binary(max_size=300).map(lambda b: KEY_HEAD + b))
def test_a_private_key_file_s_passphrase(data: bytes) -> None:
    # Any bytes where a private key should be: an answer, never an error.
    assert encrypted_key(data) in (True, False)
