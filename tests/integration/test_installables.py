"""`offload build`'s inputs against the real Nix 2.8: every form nix-build takes, and flakes.

Evaluation only (nix-instantiate, nix eval), except where offload's result link naming is
compared with what a real nix-build makes for the same arguments: those build trivial
derivations locally. Every expression carries a random salt so nothing is shared between runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest

from offload.build import DrvGraph, out_links
from offload.errors import ConfigError, NixError, OffloadError
from offload.nix import Installables, instantiate
from offload.nix_results import result_links
from offload.store.drv import read_derivation

# Each output gets its own name in its file, so every output path is a real, distinct file.
_MK = r"""
  mk = name: outs: derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    outputs = outs;
    salt = "@SALT@";
    args = [ "-c" "for o in $outputs; do eval \"echo $o > \\$$o\"; done" ];
  };
"""

DEFAULT_NIX = (
    '{ n ? 1, s ? "plain" }:\nlet\n'
    + _MK
    + r"""
in {
  a = mk "a" [ "out" ];
  m = mk "m" [ "out" "dev" "lib" ];
  nodev = mk "nodev" [ "bin" "dev" ];
  nested = {
    recurseForDerivations = true;
    c = mk "c" [ "out" ];
    deeper = { d = mk "d" [ "out" ]; };
    deeprec = { recurseForDerivations = true; e = mk "e" [ "out" ]; };
  };
  plain = { f = mk "f" [ "out" ]; };
  lst = [ (mk "g" [ "out" ]) [ (mk "h" [ "out" ]) ] ];
  args = mk "args-${toString n}-${s}" [ "out" ];
  withenv = derivation {
    name = "withenv"; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "echo > $out" ]; value = s; salt = "@SALT@";
  };
  notadrv = 42;
  empty = { };
}
"""
)


def _write_nix(path: Path, text: str = DEFAULT_NIX) -> Path:
    path.write_text(text.replace("@SALT@", uuid.uuid4().hex))
    return path


def _names(roots: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(read_derivation(drv).name, output) for drv, output in roots]


def _sh(*argv: str, cwd: Path | None = None) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=True, cwd=cwd, timeout=120)
    return done.stdout


def _system() -> str:
    return _sh("nix-instantiate", "--eval", "--json", "-E", "builtins.currentSystem").strip('"\n')


@pytest.fixture
def project(tmp_path: Path) -> Path:
    _write_nix(tmp_path / "default.nix")
    return tmp_path


# --- files, attributes, arguments ----------------------------------------------------------


def test_default_nix_is_a_set_searched_as_nix_build_does(project: Path) -> None:
    # Top-level derivations; nested sets only under recurseForDerivations (nested.c,
    # nested.deeprec.e, not nested.deeper.d); lists and sets without it (lst, plain) skipped.
    assert _names(instantiate(Installables(), project)) == [
        ("a", "out"),
        ("args-1-plain", "out"),
        ("m", "out"),
        ("c", "out"),
        ("e", "out"),
        ("nodev", "bin"),
        ("withenv", "out"),
    ]


def test_selected_sets_and_lists_yield_every_derivation(project: Path) -> None:
    roots = instantiate(Installables(attrs=("nested", "plain", "lst")), project)
    assert _names(roots) == [("c", "out"), ("e", "out"), ("f", "out"), ("g", "out"), ("h", "out")]


def test_directory_means_its_default_nix(project: Path) -> None:
    sub = project / "sub"
    sub.mkdir()
    (sub / "default.nix").write_text((project / "default.nix").read_text())
    by_dir = instantiate(Installables(files=("sub",), attrs=("a",)), project)
    by_file = instantiate(Installables(files=("sub/default.nix",), attrs=("a",)), project)
    assert by_dir == by_file
    assert _names(by_dir) == [("a", "out")]


def test_each_attr_applies_to_each_file_in_order(project: Path) -> None:
    _write_nix(project / "two.nix")  # same attributes, another salt: other derivations
    roots = instantiate(Installables(files=("default.nix", "two.nix"), attrs=("a", "m")), project)
    assert _names(roots) == [("a", "out"), ("m", "out"), ("a", "out"), ("m", "out")]
    assert len(set(roots)) == len(roots)
    first = instantiate(Installables(files=("default.nix",), attrs=("a",)), project)
    assert roots[0] == first[0]


def test_output_selection_keeps_the_output(project: Path) -> None:
    roots = instantiate(Installables(attrs=("m.dev", "m", "nodev", "nodev.dev")), project)
    assert _names(roots) == [("m", "dev"), ("m", "out"), ("nodev", "bin"), ("nodev", "dev")]
    assert roots[0][0] == roots[1][0]


def test_arg_and_argstr(project: Path) -> None:
    what = Installables(attrs=("args",), args=(("--arg", "n", "20 + 22"), ("--argstr", "s", "str")))
    assert _names(instantiate(what, project)) == [("args-42-str", "out")]


def test_values_are_never_seen_by_a_shell(project: Path) -> None:
    value = "$(touch pwned) `touch pwned2`; \"'\\ -x"
    [(drv, _)] = instantiate(
        Installables(attrs=("withenv",), args=(("--argstr", "s", value),)), project
    )
    assert read_derivation(drv).env["value"] == value
    assert not (project / "pwned").exists()
    assert not (project / "pwned2").exists()


def test_file_named_like_an_option(project: Path) -> None:
    (project / "-A").write_text((project / "default.nix").read_text())
    roots = instantiate(Installables(files=("-A",), attrs=("a",)), project)
    assert _names(roots) == [("a", "out")]


# --- expressions -----------------------------------------------------------------------------


def test_expression_relative_to_the_working_directory(project: Path) -> None:
    what = Installables(files=("(import ./default.nix { n = 7; }).args",), expr=True)
    assert _names(instantiate(what, project)) == [("args-7-plain", "out")]


def test_expression_with_attrs_and_args(project: Path) -> None:
    what = Installables(
        files=("import ./default.nix",),
        expr=True,
        attrs=("args", "a"),
        args=(("--argstr", "s", "e"),),
    )
    assert _names(instantiate(what, project)) == [("args-1-e", "out"), ("a", "out")]


def test_with_expr_positional_arguments_are_expressions(project: Path) -> None:
    what = Installables(
        files=("(import ./default.nix {}).a", "with import ./default.nix {}; [ m.dev nodev ]"),
        expr=True,
    )
    assert _names(instantiate(what, project)) == [("a", "out"), ("m", "dev"), ("nodev", "bin")]


# --- .drv paths ------------------------------------------------------------------------------


def _drv(project: Path, attr: str) -> str:
    return _sh("nix-instantiate", "-A", attr, "--", "./default.nix", cwd=project).strip()


def test_drv_builds_out_or_the_named_output(project: Path) -> None:
    m = _drv(project, "m")
    assert instantiate(Installables(files=(m,)), project) == [(m, "out")]
    assert instantiate(Installables(files=(f"{m}!lib",)), project) == [(m, "lib")]


def test_drv_through_a_symlink(project: Path) -> None:
    m = _drv(project, "m")
    (project / "link.drv").symlink_to(m)
    assert instantiate(Installables(files=("link.drv!dev",)), project) == [(m, "dev")]
    # Named anything (nix-instantiate --add-root ./mydrv): the target decides, as in nix-build.
    (project / "mydrv").symlink_to(m)
    assert instantiate(Installables(files=("mydrv",)), project) == [(m, "out")]


def test_a_loop_of_links_is_one_error_naming_it(project: Path) -> None:
    # `ln -s loop loop; offload build loop`: "internal error: RuntimeError: Symlink loop".
    (project / "loop").symlink_to("loop")
    with pytest.raises(ConfigError, match=r"^loop: too many symbolic links encountered"):
        instantiate(Installables(files=("loop",)), project)


def test_drv_without_out_must_name_an_output(project: Path) -> None:
    nodev = _drv(project, "nodev").partition("!")[0]
    with pytest.raises(ConfigError, match="does not have output 'out'") as info:
        instantiate(Installables(files=(nodev,)), project)
    assert f"{nodev}!bin" in (info.value.hint or "")
    with pytest.raises(ConfigError, match="more than one derivation output"):
        instantiate(Installables(files=(f"{nodev}!bin,dev",)), project)


def test_drvs_come_before_evaluated_files(project: Path) -> None:
    # nix-build reads .drv arguments while parsing its command line.
    m = _drv(project, "m")
    roots = instantiate(Installables(files=("default.nix", f"{m}!dev"), attrs=("a",)), project)
    assert _names(roots) == [("m", "dev"), ("a", "out")]


# --- flakes ----------------------------------------------------------------------------------


@pytest.fixture
def flake(tmp_path: Path) -> Path:
    # In tmp_path, outside any git repository: there a path flake sees every file.
    system = _system()
    root = tmp_path / "flake"
    root.mkdir()
    text = (
        "{\n  outputs = { self }: let\n"
        + _MK.replace("builtins.currentSystem", f'"{system}"')
        + f"""  in {{
    packages.{system}.hello = mk "hello" [ "out" "dev" ];
    packages.{system}.default = mk "dflt" [ "out" ];
    legacyPackages.{system}.legacy = mk "legacy" [ "bin" "dev" ];
    top = mk "top" [ "out" ];
    number = 3;
  }};
}}
"""
    )
    _write_nix(root / "flake.nix", text)
    return root


def test_flake_attribute_resolution(flake: Path) -> None:
    what = Installables(
        files=(
            f"path:{flake}#hello",  # packages.SYSTEM.hello
            f"path:{flake}#legacy",  # legacyPackages.SYSTEM.legacy, its first output
            f"path:{flake}#top",  # a top-level attribute
            f"path:{flake}#hello.dev",
        )
    )
    assert _names(instantiate(what, flake)) == [
        ("hello", "out"),
        ("legacy", "bin"),
        ("top", "out"),
        ("hello", "dev"),
    ]


def test_flake_dot_ref_from_its_directory(flake: Path) -> None:
    roots = instantiate(Installables(files=(".#hello", ".#")), flake)
    assert _names(roots) == [("hello", "out"), ("dflt", "out")]
    # What offload evaluated is what Nix itself names the derivation.
    nix = ["nix", "--extra-experimental-features", "nix-command flakes"]
    drv = _sh(*nix, "path-info", "--derivation", f"path:{flake}#hello", cwd=flake).strip()
    assert roots[0][0] == drv


def test_flake_missing_attribute_is_one_line(flake: Path) -> None:
    with pytest.raises(OffloadError) as info:
        instantiate(Installables(files=(".#nope",)), flake)
    message = info.value.message
    assert message.startswith("evaluating .#nope failed: flake ")
    assert "does not provide attribute" in message
    assert "\n" not in message


def test_flake_output_that_is_not_a_derivation(flake: Path) -> None:
    with pytest.raises(OffloadError, match=r"^evaluating \.#number failed: .*not a derivation"):
        instantiate(Installables(files=(".#number",)), flake)


# --- errors --------------------------------------------------------------------------------


def test_missing_attribute_is_nix_message_on_one_line(project: Path) -> None:
    with pytest.raises(OffloadError) as info:
        instantiate(Installables(attrs=("a", "nope")), project)
    assert info.value.message == (
        "evaluating ./default.nix failed: attribute 'nope' in selection path 'nope' not found"
    )
    # Nix's whole message goes to the user (the CLI prints it as it is), not offload's line.
    assert isinstance(info.value, NixError)
    assert info.value.text.startswith("error: attribute 'nope' in selection path 'nope' not found")


def test_evaluation_error_names_the_file(project: Path) -> None:
    (project / "bad.nix").write_text("let x = 1; in y\n")
    with pytest.raises(OffloadError, match=r"^evaluating bad\.nix failed: undefined variable 'y'$"):
        instantiate(Installables(files=("bad.nix",)), project)


def test_not_a_derivation(project: Path) -> None:
    with pytest.raises(OffloadError, match="does not evaluate to a derivation"):
        instantiate(Installables(attrs=("notadrv",)), project)


def test_nothing_to_build(project: Path) -> None:
    # No derivation is no error, as nix-build builds nothing and exits 0 (a job set empty on
    # this platform); it said "the expression produced no derivations".
    assert instantiate(Installables(attrs=("empty",)), project) == []


def test_cli_reports_nix_error_and_fails(project: Path) -> None:
    env = {**os.environ, "XDG_CONFIG_HOME": str(project), "XDG_STATE_HOME": str(project)}

    def offload_build(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "offload", "build", "--builders", "", *args]
        return subprocess.run(
            argv, check=False, capture_output=True, text=True, cwd=project, env=env, timeout=60
        )

    done = offload_build("-A", "nope")
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    wanted = "attribute 'nope' in selection path 'nope' not found"
    assert errors == [f"error: {wanted}"]  # Nix's own words, as nix-build prints them
    done = offload_build("missing.nix")
    assert (done.returncode, done.stderr.splitlines()[0]) == (1, "error: missing.nix: no such file")


# --- result links, against a real nix-build ---------------------------------------------------


def _nix_build_links(cwd: Path, args: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """What nix-build printed, and the links it made: {name: target}."""
    out = _sh("nix-build", "--option", "substituters", "", *args, cwd=cwd)
    links = {p.name: str(p.readlink()) for p in cwd.iterdir() if p.name.startswith("result")}
    for name in links:
        (cwd / name).unlink()
    return out.split(), links


@pytest.mark.parametrize(
    "args",
    [
        ["-A", "m.dev", "-A", "a", "-A", "m", "-A", "m.dev", "-A", "nodev"],
        ["-A", "m.out", "-A", "m.dev", "-A", "m.lib", "-A", "a", "-A", "a"],
        ["-A", "nested", "-A", "m.lib"],
        ["-A", "a", "default.nix", "@NODEV@!dev"],
    ],
)
def test_result_links_match_nix_build(project: Path, args: list[str]) -> None:
    nodev = _drv(project, "nodev").partition("!")[0]
    args = [arg.replace("@NODEV@", nodev) for arg in args]
    printed, made = _nix_build_links(project, args)

    attrs = tuple(args[i + 1] for i, arg in enumerate(args) if arg == "-A")
    files = tuple(arg for i, arg in enumerate(args) if arg != "-A" and args[i - 1 : i] != ["-A"])
    roots = instantiate(Installables(files=files, attrs=attrs), project)
    graph = DrvGraph(drvs={drv: read_derivation(drv) for drv, _ in roots}, wanted={}, order=[])
    paths = [graph.output_path(drv, output) for drv, output in roots]
    assert paths == printed
    assert dict(zip(result_links(roots, "result"), paths, strict=True)) == made
    assert {link: path for path, link in out_links(roots, graph, "result")} == made
