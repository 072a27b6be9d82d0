"""The argv offload gives Nix for each kind of input, and how arguments are classified.

Exact lists: the order and the separation of every value into its own argv element is the
contract (no shell, no value spliced into Nix code).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from offload.errors import ConfigError
from offload.nix import (
    FLAKE_APPLY,
    Installables,
    Source,
    error_position,
    first_error_line,
    flake_eval_argv,
    instantiate_argv,
    sources,
)
from offload.nix_results import add_root_argv, realise_argv, result_links

# No "--option substituters ''": the user's caches serve an import-from-derivation.
NIX_INSTANTIATE = ["nix-instantiate", "--no-gc-warning"]


def test_file_argv_with_every_option() -> None:
    what = Installables(
        files=("a.nix",),
        attrs=("x", "y.dev"),
        args=(("--arg", "n", "1 + 1"), ("--argstr", "s", "$(touch pwned); 'q\"")),
    )
    assert instantiate_argv(what, Source("file", "a.nix")) == [
        *NIX_INSTANTIATE,
        "--arg",
        "n",
        "1 + 1",
        "--argstr",
        "s",
        "$(touch pwned); 'q\"",
        "-A",
        "x",
        "-A",
        "y.dev",
        "--",
        "a.nix",
    ]


def test_plain_file_argv() -> None:
    assert instantiate_argv(Installables(), Source("file", "./default.nix")) == [
        *NIX_INSTANTIATE,
        "--",
        "./default.nix",
    ]


def test_expression_argv() -> None:
    what = Installables(files=("import ./x.nix",), attrs=("a",), expr=True)
    assert instantiate_argv(what, Source("expr", "import ./x.nix")) == [
        *NIX_INSTANTIATE,
        "-A",
        "a",
        "--expr",
        "--",
        "import ./x.nix",
    ]


def test_expression_starting_with_dash_gets_a_space() -> None:
    # Nix 2.8 rejects a positional argument starting with "-" even after "--".
    argv = instantiate_argv(Installables(files=("-1",), expr=True), Source("expr", "-1"))
    assert argv[-3:] == ["--expr", "--", " -1"]


def test_show_trace_goes_before_the_positional_arguments() -> None:
    argv = instantiate_argv(Installables(attrs=("a",)), Source("file", "f.nix"), show_trace=True)
    assert argv == [*NIX_INSTANTIATE, "-A", "a", "--show-trace", "--", "f.nix"]


@pytest.mark.parametrize("kind", ["drv", "flake"])
def test_nix_instantiate_is_not_for_drvs_or_flakes(kind: str) -> None:
    with pytest.raises(ValueError, match="not evaluated by nix-instantiate"):
        instantiate_argv(Installables(), Source(kind, "x"))  # type: ignore[arg-type]


def test_flake_argv() -> None:
    assert flake_eval_argv("path:/x#hello") == [
        "nix",
        "eval",
        "--extra-experimental-features",
        "nix-command flakes",
        "--json",
        "--apply",
        FLAKE_APPLY,
        "--",
        "path:/x#hello",
    ]
    assert flake_eval_argv(".#a", show_trace=True)[-3:] == ["--show-trace", "--", ".#a"]


def test_add_root_argv() -> None:
    assert add_root_argv(["/nix/store/x-a"], "result-2") == [
        "nix-store",
        "--realise",
        "/nix/store/x-a",
        "--add-root",
        "result-2",
        "--indirect",
    ]


# --- classification --------------------------------------------------------------------------


def test_default_is_default_nix(tmp_path: Path) -> None:
    (tmp_path / "default.nix").write_text("{}")
    assert sources(Installables(), tmp_path) == [Source("file", "./default.nix")]


def test_missing_default_nix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^\./default\.nix: no such file$"):
        sources(Installables(), tmp_path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^nope\.nix: no such file$"):
        sources(Installables(files=("nope.nix",)), tmp_path)


def test_directory_without_default_nix(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    with pytest.raises(ConfigError, match=r"^pkg/default\.nix: no such file$"):
        sources(Installables(files=("pkg/",)), tmp_path)


def test_directory_with_default_nix_is_passed_as_given(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "default.nix").write_text("{}")
    assert sources(Installables(files=("pkg",)), tmp_path) == [Source("file", "pkg")]


def test_file_starting_with_dash_gets_dot_slash(tmp_path: Path) -> None:
    (tmp_path / "-foo.nix").write_text("{}")
    assert sources(Installables(files=("-foo.nix",)), tmp_path) == [Source("file", "./-foo.nix")]


def test_lookup_paths_and_urls_are_left_to_nix(tmp_path: Path) -> None:
    what = Installables(files=("<nixpkgs>", "https://example.invalid/x.tar.gz"))
    assert [s.text for s in sources(what, tmp_path)] == list(what.files)


def test_with_expr_every_positional_argument_is_an_expression(tmp_path: Path) -> None:
    # As nix-build -E: "a.nix" is not a file here, and need not exist.
    what = Installables(files=("1", "a.nix", "x#y"), expr=True)
    assert sources(what, tmp_path) == [
        Source("expr", "1"),
        Source("expr", "a.nix"),
        Source("expr", "x#y"),
    ]


def test_expr_with_no_argument_is_refused_not_default_nix(tmp_path: Path) -> None:
    (tmp_path / "default.nix").write_text("{}")
    with pytest.raises(ConfigError, match="-E/--expr makes the arguments expressions"):
        sources(Installables(attrs=("a",), expr=True), tmp_path)


def test_hash_makes_a_flake_unless_such_a_file_exists(tmp_path: Path) -> None:
    (tmp_path / "odd#name.nix").write_text("{}")
    what = Installables(files=(".#hello", "odd#name.nix", "path:/x#a"))
    assert sources(what, tmp_path) == [
        Source("flake", ".#hello"),
        Source("file", "odd#name.nix"),
        Source("flake", "path:/x#a"),
    ]


def test_attrs_with_a_flake_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="-A does not apply to FLAKEREF#ATTR"):
        sources(Installables(files=(".#hello",), attrs=("x",)), tmp_path)


def test_a_drv_outside_the_store_is_a_nix_file(tmp_path: Path) -> None:
    # nix-build only takes store paths as derivations; anything else is evaluated as Nix.
    (tmp_path / "x.drv").write_text("{}")
    assert sources(Installables(files=("x.drv",)), tmp_path) == [Source("file", "x.drv")]


def test_missing_store_drv(tmp_path: Path) -> None:
    drv = "/nix/store/00000000000000000000000000000000-gone.drv"
    with pytest.raises(ConfigError, match=f"^{drv}!dev: no such file$"):
        sources(Installables(files=(f"{drv}!dev",)), tmp_path)


def test_check_and_repair_argv_make_no_gc_warning() -> None:
    roots = [("/nix/store/00000000000000000000000000000000-a.drv", "dev")]
    assert realise_argv(roots, "check") == [
        "nix-store", "--realise", "--check", "--no-gc-warning", "--",
        "/nix/store/00000000000000000000000000000000-a.drv!dev",
    ]  # fmt: skip


# --- messages and link names -----------------------------------------------------------------


def test_first_error_line_skips_warnings_and_trace() -> None:
    stderr = (
        "warning: you did not specify '--add-root'\n"
        "path '/x' does not contain a 'flake.nix', searching up\n"
        "\x1b[31;1merror:\x1b[0m undefined variable 'q'\n"
        "\n"
        "       at /x/default.nix:1:1:\n"
        "error: a second one\n"
    )
    assert first_error_line(stderr) == "undefined variable 'q'"


def test_first_error_line_reads_nix_s_json_messages() -> None:
    # --check with --log-format internal-json ended on '--check failed: @nix {"action":...'.
    stderr = (
        '@nix {"action":"start","id":1,"level":0,"text":"","type":104}\n'
        '@nix {"action":"msg","level":0,"msg":"\\u001b[31;1merror:\\u001b[0m some outputs'
        " of '/nix/store/x.drv' are not valid, so checking is not possible\\nmore\"}\n"
        '@nix {"action":"stop","id":1}\n'
    )
    said = "some outputs of '/nix/store/x.drv' are not valid, so checking is not possible"
    assert first_error_line(stderr) == said


def test_error_position_is_the_first_at_line_above_the_code_frame() -> None:
    stderr = (
        "error: syntax error, unexpected '}', expecting ';'\n\n"
        "       at \x1b[35;1m/x/m.nix\x1b[0m:1:20:\n\n"
        '            1| [ { hostName = "a" } ]\n'
        "       at /x/other.nix:2:2:\n"
    )
    assert error_position(stderr) == "/x/m.nix:1:20"
    assert error_position("error: cannot convert a function to JSON\n") is None


def test_first_error_line_without_an_error_prefix() -> None:
    assert first_error_line("something odd\nlast words\n\n") == "last words"
    assert first_error_line("") == "(no message)"


def test_expression_description_is_short() -> None:
    assert Source("expr", "import ./a.nix").describe() == "-E 'import ./a.nix'"
    assert Source("expr", "x" * 60).describe() == "the -E expression"
    assert Source("file", "./-a.nix").describe() == "./-a.nix"


def test_result_links_number_derivations_not_roots() -> None:
    # As nix-build 2.8 names them for -A m.dev -A a -A m -A m.dev -A b (b's first output is bin);
    # tests/integration/test_installables.py checks this against a real nix-build.
    roots = [("m.drv", "dev"), ("a.drv", "out"), ("m.drv", "out"), ("m.drv", "dev"), ("b", "bin")]
    assert result_links(roots, "result") == [
        "result-dev",
        "result-2",
        "result",
        "result-dev",
        "result-3-bin",
    ]
    assert result_links([("a", "out"), ("b", "out")], "/t/o") == ["/t/o", "/t/o-2"]


@pytest.mark.parametrize(
    ("jobs", "expected"),
    [(None, []), ("2", ["--max-jobs", "2"]), ("0", [])],
)
def test_a_check_runs_with_the_runs_jobs_but_never_none(
    jobs: str | None, expected: list[str]
) -> None:
    # Nix checks and repairs on this host only: -j 0 (offload's remote only) gave it no slot,
    # and it failed "unable to start any build" after offload had built everything.
    from offload.cli import root_parser
    from offload.cli.build_args import realise_flags

    argv = ["build", "-k", "x.nix", *(["-j", jobs] if jobs is not None else [])]
    args = root_parser().parse_args(argv)
    flags = list(realise_flags(args))
    assert "--keep-going" in flags
    assert [f for f in flags if f in ("--max-jobs", jobs)] == expected
