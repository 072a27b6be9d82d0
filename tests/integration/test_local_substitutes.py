"""`offload build` substitutes from the local machine's binary caches before building, as Nix does.

Each test makes a real binary cache on disk (``nix copy --to file://...``) from outputs that plain
nix-build made, deletes those outputs from the local store, and runs the CLI against the cache
with ``--option substituters file://... --option require-sigs false``. Nothing else is ever
configured as a substituter: the machine's default (cache.nixos.org) is never contacted.

A cache that cannot be reached, or answers with errors: ``test_unreachable_caches``. Whether a
derivation was built is read from marker files its builder leaves in a directory
outside the store (one file per build, since local builds run as different nixbld users), not
only from offload's own events. ``top`` reads ``dep``'s output without keeping a reference to it,
so a cache can hold ``top`` alone and substituting it needs nothing of ``dep``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.local_caches import (
    NIX,
    NIX_COMMAND,
    NO_CACHE,
    Project,
    delete,
    finished,
    made_project,
    own_nix_cache,
    run_out,
    valid,
)


@pytest.fixture(autouse=True)
def _nix_cache_of_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    own_nix_cache(tmp_path, monkeypatch)


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    yield from made_project(tmp_path)


def _cache_then_delete(project: Project, *attrs: str) -> tuple[str, str]:
    """Build both with nix-build, copy ``attrs``' outputs to the cache, delete both locally."""
    top = project.nix_build("top")
    dep = project.out("dep")
    assert (project.builds("sub-dep"), project.builds("sub-top")) == (1, 1)
    cached = [project.out(attr) for attr in attrs]
    run_out(*NIX_COMMAND, "copy", "--to", f"file://{project.cache}", *cached)
    delete(top, dep)
    assert not valid(top)
    assert not valid(dep)
    return top, dep


def test_a_cached_output_is_substituted_and_neither_it_nor_its_input_is_built(project):
    top, dep = _cache_then_delete(project, "top")
    done = project.offload(*project.from_cache())
    assert done.returncode == 0, done.stderr
    assert valid(top)
    assert (project.builds("sub-dep"), project.builds("sub-top")) == (1, 1)  # no new builds
    assert not valid(dep)  # only top needed it, and top came whole from the cache
    jobs = finished(done.stdout)
    assert set(jobs) == {"sub-top"}
    assert (jobs["sub-top"]["status"], jobs["sub-top"]["machine"]) == ("substituted", "local")
    # Substituted while the graph was read, told after the event that opens the run (which
    # counts it as settled before it).
    first = json.loads(done.stdout.splitlines()[0])
    assert (first["event"], first["total"], first["ready"]) == ("run_started", 0, 1), first
    assert project.offload(*project.from_cache()).returncode == 0  # now valid: nothing to do


def test_with_no_substituters_the_cache_is_not_used_and_both_are_built(project):
    top, dep = _cache_then_delete(project, "top")
    done = project.offload(*NO_CACHE)
    assert done.returncode == 0, done.stderr
    assert valid(top)
    assert valid(dep)
    assert (project.builds("sub-dep"), project.builds("sub-top")) == (2, 2)
    statuses = {name: job["status"] for name, job in finished(done.stdout).items()}
    assert statuses == {"sub-dep": "built", "sub-top": "built"}


def test_a_cache_with_only_the_input_gives_the_input_and_the_top_is_built(project):
    top, dep = _cache_then_delete(project, "dep")
    _input_substituted_top_built(project, top, dep)


def _input_substituted_top_built(project: Project, top: str, dep: str) -> None:
    """A run from the cache: ``dep`` comes from it, ``top`` is built again (only it)."""
    done = project.offload(*project.from_cache())
    assert done.returncode == 0, done.stderr
    assert valid(top)
    assert valid(dep)
    assert (project.builds("sub-dep"), project.builds("sub-top")) == (1, 2)  # top again only
    statuses = {name: job["status"] for name, job in finished(done.stdout).items()}
    assert statuses == {"sub-dep": "substituted", "sub-top": "built"}


def test_a_derivation_that_disallows_substitutes_is_built_though_the_cache_has_it(project):
    # allowSubstitutes = false, as nixpkgs' writeText and runCommandLocal set it: nix-build
    # builds it and takes its input from the cache; offload substituted it from the cache.
    project.more = ("--arg", "topSubstitutes", "false")
    top, dep = _cache_then_delete(project, "top", "dep")
    _input_substituted_top_built(project, top, dep)
    delete(top, dep)  # and so does nix-build
    project.nix_build_from_cache("top")
    assert (project.builds("sub-dep"), project.builds("sub-top")) == (1, 3)


def test_a_cache_the_local_store_does_not_trust_is_not_used(project):
    # Unsigned paths with require-sigs on (Nix's default): the store refuses them, so the run
    # builds instead. This shows the option reaches the local store and is not ignored there.
    top, _ = _cache_then_delete(project, "top")
    done = project.offload("--option", "substituters", f"file://{project.cache}")
    assert done.returncode == 0, done.stderr
    assert valid(top)
    assert (project.builds("sub-dep"), project.builds("sub-top")) == (2, 2)


def test_a_dry_run_lists_what_the_cache_has_as_fetched_and_plans_only_the_rest(project):
    # It counted what the caches have as to be built: `nix-build --dry-run | grep 'will be
    # fetched'` ("is it all cached?") found nothing (tester).
    _, dep = _cache_then_delete(project, "dep")
    done = project.offload("--dry-run", *project.from_cache(), as_json=False)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0] == "this derivation will be built:"
    assert lines[1].split()[0].endswith("-sub-top.drv")
    fetched = lines.index(next(line for line in lines if "will be fetched" in line))
    assert lines[fetched].startswith("this path will be fetched (")  # Nix's own words
    assert lines[fetched + 1] == f"  {dep}"
    plan = json.loads(project.offload("--dry-run", *project.from_cache()).stdout)
    assert [row["name"] for row in plan["build"]] == ["sub-top"]
    assert plan["substitute"] == [dep]
    assert not valid(dep)  # asked, not fetched


def test_a_dry_run_of_what_the_cache_has_whole_builds_nothing(project):
    top, _ = _cache_then_delete(project, "top")
    done = project.offload("--dry-run", *project.from_cache(), as_json=False)
    assert done.returncode == 0, done.stderr
    assert "will be built" not in done.stderr
    assert "nothing to build" not in done.stderr  # it is not all valid here
    assert f"  {top}" in done.stderr.splitlines()


# ``top`` keeps a reference to ``dep``: the cache's ``top`` is no use without ``dep``.
REFERRING = NIX.replace('"/bin/cat $dep > $out"', '"echo $dep > $out"')


def test_a_cache_holding_the_top_but_not_what_it_refers_to_has_both_built(project):
    # As Nix 2.30 and later do (NixOS/nix#13176 took out the "incomplete closure" retry):
    # Nix 2.8-2.29 built dep, then fetched top. offload asks the caches once, as the graph is
    # read: what refers to a path they lack is built.
    assert REFERRING != NIX
    project.file.write_text(REFERRING)
    top = project.nix_build("top")
    dep = project.out("dep")
    assert dep in Path(top).read_text()
    run_out(*NIX_COMMAND, "copy", "--to", f"file://{project.cache}", top)  # and dep with it
    (project.cache / f"{Path(dep).name.split('-')[0]}.narinfo").unlink()  # now only top
    delete(top, dep)
    done = project.offload(*project.from_cache())
    assert done.returncode == 0, done.stderr
    assert valid(top)
    assert (project.builds("sub-dep"), project.builds("sub-top")) == (2, 2)
    statuses = {name: job["status"] for name, job in finished(done.stdout).items()}
    assert statuses == {"sub-dep": "built", "sub-top": "built"}
    delete(top, dep)
    project.nix_build_from_cache("top")  # Nix 2.8, as installed here: dep built, top fetched
    assert (project.builds("sub-dep"), project.builds("sub-top")) == (3, 2)
