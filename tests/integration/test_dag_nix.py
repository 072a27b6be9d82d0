"""DAG -> Nix derivations, evaluated and built by the real Nix.

Every test gets its own Nix store: Nix runs inside a private mount namespace where directories
under tmp_path are bind-mounted over /nix and /etc/nix, as the local fleet does for its members.
That keeps the host store untouched and lets a test put a speed file in /etc/nix.
"""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from offload.dagfile import Dag, DagNode, write_nix_file

WORK = 0.05
FIVE = Dag.of(
    [
        DagNode("a", WORK),
        DagNode("b", WORK, ("a",)),
        DagNode("c", WORK, ("a",)),
        DagNode("d", WORK, ("b", "c")),
        DagNode("e", 0.2),
    ]
)

_IN_NAMESPACE = 'mount --bind "$1" /nix && mount --bind "$2" /etc/nix && shift 2 && exec "$@"'


@dataclass(frozen=True)
class Store:
    root: Path

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                "unshare",
                "-m",
                "--propagation",
                "private",
                "/bin/sh",
                "-c",
                _IN_NAMESPACE,
                "sh",
                str(self.root / "nix"),
                str(self.root / "etc"),
                *argv,
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )

    def host_path(self, store_path: str) -> Path:
        """Where a /nix/store path of this store lives outside the namespace."""
        assert store_path.startswith("/nix/store/"), store_path
        return self.root / "nix" / store_path.removeprefix("/nix/")

    def instantiate(self, nix_file: Path, names: list[str]) -> dict[str, str]:
        argv = ["nix-instantiate", str(nix_file)]
        for name in names:
            argv += ["-A", name]
        drvs = self.run(*argv).stdout.split()
        return dict(zip(names, drvs, strict=True))

    def build(self, nix_file: Path, names: list[str]) -> tuple[dict[str, str], str]:
        argv = ["nix-build", str(nix_file), "--no-out-link", "--option", "substituters", ""]
        for name in names:
            argv += ["-A", name]
        done = self.run(*argv)
        return dict(zip(names, done.stdout.split(), strict=True)), done.stderr


def make_store(root: Path, speed: str | None = None) -> Store:
    (root / "nix").mkdir(parents=True)
    (root / "etc").mkdir()
    # No nixbld users: they are shared by uid with the host's Nix (design.md).
    (root / "etc" / "nix.conf").write_text("build-users-group =\nsandbox = false\nsubstituters =\n")
    if speed is not None:
        (root / "etc" / "offload-speed").write_text(speed + "\n")
    return Store(root)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return make_store(tmp_path / "store")


def test_drv_graph_mirrors_the_dag(store: Store, tmp_path: Path) -> None:
    nix_file = write_nix_file(FIVE, tmp_path / "dag.nix", "mirror")
    names = [n.name for n in FIVE.nodes]
    drvs = store.instantiate(nix_file, names)
    for node in FIVE.nodes:
        refs = set(store.run("nix-store", "-q", "--references", drvs[node.name]).stdout.split())
        # Exactly the deps' derivations, and no input sources (everything else is /bin/*).
        assert refs == {drvs[d] for d in node.deps}, node.name
        # The derivation name is the node name whatever the salt, so history can key on it.
        assert drvs[node.name].endswith(f"-{node.name}.drv")


def test_every_node_is_instantiated_whatever_its_name(store: Store, tmp_path: Path) -> None:
    # nix-instantiate skips, without a word, what a top-level set names with a "." or "?" or
    # a leading digit: "app-1.0" depending on "lib" instantiated "lib" alone, and exited 0.
    names = ["lib", "app-1.0", "0lib", "x?y", "ok_name"]
    dag = Dag.of([DagNode("lib", WORK), *(DagNode(n, WORK, ("lib",)) for n in names[1:])])
    nix_file = write_nix_file(dag, tmp_path / "dag.nix", "names")
    drvs = store.run("nix-instantiate", str(nix_file)).stdout.split()
    assert sorted(d.split("-", 1)[1] for d in drvs) == sorted(f"{n}.drv" for n in names)


def test_features_and_system_reach_the_derivation(store: Store, tmp_path: Path) -> None:
    dag = Dag.of(
        [
            DagNode("plain", 1),
            DagNode("special", 1, ("plain",), frozenset({"kvm", "big-parallel"}), "riscv64-linux"),
        ]
    )
    nix_file = write_nix_file(dag, tmp_path / "dag.nix", "features")
    drvs = store.instantiate(nix_file, ["plain", "special"])
    here = store.run("nix-instantiate", "--eval", "--json", "-E", "builtins.currentSystem").stdout
    plain = store.host_path(drvs["plain"]).read_text()
    special = store.host_path(drvs["special"]).read_text()
    assert f'{here.strip()},"/bin/sh"' in plain
    assert "requiredSystemFeatures" not in plain
    assert '"riscv64-linux","/bin/sh"' in special
    assert '("requiredSystemFeatures","big-parallel kvm")' in special


def test_build_outputs_carry_salt_and_depend_on_inputs(store: Store, tmp_path: Path) -> None:
    salt = 'run-1 "${quoted}" \\ $HOME'
    nix_file = write_nix_file(FIVE, tmp_path / "dag.nix", salt)
    names = [n.name for n in FIVE.nodes]
    outs, log = store.build(nix_file, names)
    text = {name: store.host_path(path).read_text() for name, path in outs.items()}
    for node in FIVE.nodes:
        assert f"node {node.name}\n" in text[node.name]
        assert f"salt {salt}\n" in text[node.name]
    # d's output names each input's output path and the hash of its contents.
    for dep in ("b", "c"):
        digest = hashlib.sha256(text[dep].encode()).hexdigest()
        assert f"dep {outs[dep]} {digest}\n" in text["d"]
    assert "dep " not in text["a"]
    assert "dep " not in text["e"]
    # With no speed file the builder assumes speed 1.
    assert "offload-dag: e sleeps 0.200 s (work 0.2, speed 1)" in log

    # Same salt: same derivations, nothing to build. Another salt: every output is new.
    again, _ = store.build(nix_file, names)
    assert again == outs
    other_file = write_nix_file(FIVE, tmp_path / "other.nix", "run-2")
    other, _ = store.build(other_file, names)
    for name in names:
        assert other[name] != outs[name]
        assert other[name].split("-", 1)[1] == outs[name].split("-", 1)[1] == name
    assert "salt run-2\n" in store.host_path(other["d"]).read_text()
    # A new salt changes the inputs, so the dependent's recorded input paths change too.
    assert f"dep {other['b']} " in store.host_path(other["d"]).read_text()


def test_builder_sleeps_work_over_the_machine_speed(tmp_path: Path) -> None:
    fast = make_store(tmp_path / "fast", speed="4")
    nix_file = write_nix_file(FIVE, tmp_path / "dag.nix", "speed")
    _, log = fast.build(nix_file, ["e", "d"])
    assert "offload-dag: e sleeps 0.050 s (work 0.2, speed 4)" in log
    # d's closure (a, b, c, d) and e were all built, each reading the same speed file.
    assert log.count(", speed 4)") == 5
    assert ", speed 1)" not in log
