"""Where outputs end up: intermediate ones stay on the builder that made them and go straight
to the builder that needs them next; requested ones (or, with --fetch-all, all) come home."""

from __future__ import annotations

from pathlib import Path

import pytest

from offload.fleet import Fleet
from tests.helpers.fleets import host_of, machines_lines
from tests.helpers.nix_files import SPEED, nix_file, out_path, valid_locally
from tests.helpers.offload_run import built_on, finished, offload


def split_by_feature(fleet: Fleet, tmp_path: Path) -> Path:
    """A machines file where only fast takes `kvm` work and only medium takes `nixos-test`
    work (features every member's own Nix offers)."""
    demands = {"fast": "kvm", "medium": "nixos-test"}
    lines = []
    for columns in machines_lines(fleet):
        name = host_of(columns[0])
        if name in demands:
            columns[5] = columns[6] = demands[name]
            lines.append(" ".join(columns))
    machines = tmp_path / "machines"
    machines.write_text("\n".join(lines) + "\n")
    return machines


BODY = f"""rec {{
  a = mk "a" "{SPEED} > $out" {{ requiredSystemFeatures = [ "kvm" ]; }};
  b = mk "b" "/bin/cat ${{a}} > $out; {SPEED} >> $out"
    {{ requiredSystemFeatures = [ "nixos-test" ]; }};
}}
"""


@pytest.mark.parametrize("fetch_all", [False, True])
def test_an_input_goes_from_builder_to_builder_and_only_requested_outputs_come_home(
    fleet, tmp_path, fetch_all
):
    machines = split_by_feature(fleet, tmp_path)
    file = nix_file(tmp_path, BODY)
    extra = ["--fetch-all"] if fetch_all else []
    done = offload(
        fleet,
        tmp_path,
        file,
        "-A",
        "b",
        "--builders",
        f"@{machines}",
        "-j",
        "0",
        "--json",
        "--no-out-link",
        *extra,
    )
    assert done.returncode == 0, done.stderr
    assert built_on(done.stdout) == {"a": "fast", "b": "medium"}
    a, b = out_path(file, "a"), out_path(file, "b")
    assert valid_locally(b)
    assert Path(b).read_text().split() == ["4", "2"]  # a's content, made on fast, then medium's
    assert fleet.store_has("medium", a)
    assert valid_locally(a) is fetch_all
    received = {e["name"]: e["bytes_received"] for e in finished(done.stdout)}
    assert (received["a"] > 0) is fetch_all
    assert received["b"] > 0
