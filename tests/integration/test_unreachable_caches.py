"""`offload build` with a local binary cache it cannot reach, or one that answers with an error.

A cache that cannot be reached (a loopback port bound and not listening) costs Nix seconds of
retries: offload passes Nix's warnings on as nix-build shows them, compared with nix-build's,
and tells the cache left out as a fault of the run (stderr, ``--json``, the summary). A cache
that answers every narinfo with a 502 (a proxy whose upstream is down) stops Nix unless it is
left out; its response body is said once. The project is ``tests.helpers.local_caches``'.
"""

from __future__ import annotations

import functools
import http.server
import json
import re
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typing_extensions import override

from tests.helpers.local_caches import (
    NIX_COMMAND,
    Project,
    delete,
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


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A loopback port bound and not listening: every connection to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def _cache_warnings(stderr: str, cache: str) -> list[str]:
    """Nix's warning lines about ``cache`` (not offload's own), the retry delays (random) left
    out."""
    return [
        re.sub(r"retrying in \d+ ms", "retrying in N ms", line)
        for line in stderr.splitlines()
        if line.startswith("warning:") and cache in line and not _left_out(line)
    ]


def _left_out(line: str) -> bool:
    """Whether ``line`` is offload's own warning of a cache left out."""
    return line.startswith("warning: binary cache '") and "' is left out: " in line


def test_an_unreachable_cache_is_said_on_stderr_as_nix_build_says_it(project, refusing_port):
    cache = f"http://127.0.0.1:{refusing_port}"
    # Two attempts instead of Nix's five: the same words, one retry, without seconds of waits.
    flags = ["--option", "substituters", cache, "--option", "download-attempts", "2"]
    as_json = project.offload(*flags)
    delete(project.out("top"), project.out("dep"))
    plain = project.offload(*flags, as_json=False)
    delete(project.out("top"), project.out("dep"))
    nix = subprocess.run(
        ["nix-build", "--no-out-link", *project.args, "-A", "top", *flags],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert nix.returncode == 0, nix.stderr  # said: it failed once in CI, with no word why
    expected = _cache_warnings(nix.stderr, cache)
    assert len(expected) == 2, nix.stderr  # a retry, then giving up
    assert expected[-1].startswith(f"warning: unable to download '{cache}/nix-cache-info'")
    for done in (as_json, plain):
        assert done.returncode == 0, done.stderr
        assert _cache_warnings(done.stderr, cache) == expected, done.stderr
    # --json's stdout stays events; the plain lines say it while the run waits, before it starts.
    assert all(json.loads(line) for line in as_json.stdout.splitlines() if line.strip())
    lines = plain.stderr.splitlines()
    first_run_line = next(i for i, line in enumerate(lines) if "] run: " in line)
    assert lines.index(expected[-1]) < first_run_line, plain.stderr


def test_a_cache_nix_leaves_out_is_a_fault_of_the_run_once_per_cache(project, refusing_port):
    # Nix says a cache it cannot use only in its own warning lines (a retry, then giving up):
    # offload tells each such cache once, in --json, on stderr and in the summary, and the run
    # still builds what the caches would have given.
    refusing = f"http://127.0.0.1:{refusing_port}"
    other_store = project.dir / "other-store-cache"  # a cache made for another store directory
    other_store.mkdir()
    (other_store / "nix-cache-info").write_text("StoreDir: /gnu/store\n")
    caches = f"{refusing} file://{other_store}"
    flags = ["--option", "substituters", caches, "--option", "download-attempts", "2"]
    as_json = project.offload(*flags)
    assert as_json.returncode == 0, as_json.stderr
    assert valid(project.out("top"))
    events = [json.loads(line) for line in as_json.stdout.splitlines() if line.strip()]
    told = [e for e in events if e["event"] == "machine" and e["state"] == "cache"]
    assert [(e["machine"], e["cache"]) for e in told] == [
        ("local", refusing),
        ("local", f"file://{other_store}"),
    ], told
    assert "cannot be reached (Couldn't connect to server (7))" in told[0]["message"]
    assert "another store directory (/gnu/store)" in told[1]["message"]
    ours = [line for line in as_json.stderr.splitlines() if _left_out(line)]
    assert [line.split("'")[1] for line in ours] == [refusing, f"file://{other_store}"], ours
    assert _cache_warnings(as_json.stderr, refusing)  # Nix's own lines are still there
    delete(project.out("top"), project.out("dep"))
    plain = project.offload(*flags, as_json=False)
    assert plain.returncode == 0, plain.stderr
    lines = plain.stderr.splitlines()
    heading = lines.index("binary caches left out (2):")
    assert lines[heading + 1].startswith(f"  {refusing}: it cannot be reached"), plain.stderr
    assert lines[heading + 2].startswith(f"  file://{other_store}: it is for another"), lines


class _Cache:
    """A binary cache served over HTTP on loopback (only its ``nix-cache-info``: it has
    nothing), until ``down``: then its port refuses every connection."""

    def __init__(self, root: Path) -> None:
        root.mkdir()
        (root / "nix-cache-info").write_text("StoreDir: /nix/store\n")
        handler = functools.partial(_Quiet, directory=str(root))
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self._refusing: socket.socket | None = None

    def down(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        self._refusing = socket.socket()  # bound, not listening: refused
        self._refusing.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._refusing.bind(("127.0.0.1", self.port))

    def close(self) -> None:
        if self._refusing is not None:
            self._refusing.close()
        else:
            self.down()
            self.close()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    @override
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def http_cache(tmp_path: Path) -> Iterator[_Cache]:
    cache = _Cache(tmp_path / "http-cache")
    try:
        yield cache
    finally:
        cache.close()


def test_a_cache_used_lately_and_now_down_fails_the_run_with_its_error_said_once(
    project, http_cache
):
    # Nix remembers for 7 days a cache it opened (its nix-cache-info) and then asks it for
    # narinfos straight away: down, that query fails and Nix stops, as nix-build does (exit 1).
    # Its error ends the local session; offload's error says it, Nix's line is not said again.
    flags = ["--option", "substituters", http_cache.url, "--option", "download-attempts", "1"]
    # Opens the cache (nothing in it, and no path asked of it): Nix now remembers it.
    subprocess.run([*NIX_COMMAND, "store", "ping", "--store", http_cache.url], check=True)
    http_cache.down()
    done = project.offload(*flags, as_json=False)
    assert done.returncode == 1, done.stderr
    said = [line for line in done.stderr.splitlines() if ".narinfo" in line]
    assert len(said) == 1, done.stderr
    assert said[0].startswith("error: local: unable to download "), said
    assert said[0].endswith("(7)"), said
    # A dry run asks the cache too, as nix-build --dry-run does: it stops the same way.
    dry = project.offload("--dry-run", *flags, as_json=False)
    assert dry.returncode == 1, dry.stderr
    said = [line for line in dry.stderr.splitlines() if ".narinfo" in line]
    assert len(said) == 1, dry.stderr
    assert said[0].startswith("error: unable to download "), said
    # With --fallback Nix 2.8 goes on past that error, then aborts (SubstituterDisabled not
    # caught): said as the signal it died of ("exited with -6" before), its lines passed on.
    dry = project.offload("--dry-run", *flags, "--fallback", as_json=False)
    assert dry.returncode == 1, dry.stderr
    assert dry.stderr.splitlines()[-1] == (
        "error: nix-store --realise --dry-run was killed by SIGABRT"
    ), dry.stderr


def test_a_dry_run_says_a_cache_it_cannot_reach_as_the_run_does(project, refusing_port):
    # nix-build --dry-run asks its caches what they have (narinfos only): one it cannot reach
    # is said in Nix's words, and offload tells it left out as a run does, in --json too.
    cache = f"http://127.0.0.1:{refusing_port}"
    flags = ["--option", "substituters", cache, "--option", "download-attempts", "1"]
    plain = project.offload("--dry-run", *flags, as_json=False)
    as_json = project.offload("--dry-run", *flags)
    for done in (plain, as_json):
        assert done.returncode == 0, done.stderr
        lines = done.stderr.splitlines()
        nix_said = f"warning: unable to download '{cache}/nix-cache-info': "
        assert [line for line in lines if line.startswith(nix_said)], done.stderr
        ours = [line for line in lines if _left_out(line)]
        why = "it cannot be reached (Couldn't connect to server (7))"
        assert [line.split("; ")[0] for line in ours] == [
            f"warning: binary cache '{cache}' is left out: {why}"
        ], done.stderr
        # Nix's own lists are not passed on: the dry run's listing is offload's (plain only).
        headings = [line for line in lines if line.endswith(" will be built:")]
        assert len(headings) == (done is plain), done.stderr
    told = json.loads(as_json.stdout)["caches_left_out"]
    assert [(e["machine"], e["cache"]) for e in told] == [("local", cache)], told
    assert not valid(project.out("top"))  # nothing built, nothing fetched


class _BadGateway(http.server.BaseHTTPRequestHandler):
    """A cache behind a proxy whose upstream is down: its nix-cache-info answers, every
    narinfo is a 502 with a short HTML body (which Nix quotes in its error, blank lines and
    all)."""

    def do_GET(self) -> None:
        up = self.path.endswith("/nix-cache-info")
        body = b"StoreDir: /nix/store\n" if up else b"<html><body>upstream down</body></html>\n"
        self.send_response(200 if up else 502)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    @override
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def bad_gateway() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BadGateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_cache_error_nix_stops_on_is_said_once_with_its_response_body(project, bad_gateway):
    # Nix quotes the response body in its error, after a blank line (unindented): the block
    # ended there, so Nix's error went on to stderr and was said again as offload's (a run), or
    # a second line said only that nix-store failed (a dry run).
    flags = ["--option", "substituters", bad_gateway, "--option", "download-attempts", "1"]
    for extra in ((), ("--dry-run",)):
        done = project.offload(*extra, *flags, as_json=False)
        assert done.returncode == 1, done.stderr
        lines = done.stderr.splitlines()
        said = [line for line in lines if ".narinfo" in line]
        assert len(said) == 1, done.stderr
        assert "HTTP error 502" in said[0], said
        assert sum("upstream down" in line for line in lines) == 1, done.stderr
        assert not [line for line in lines if "exited with" in line], done.stderr
    assert not valid(project.out("top"))


class _AllBadGateway(_BadGateway):
    """A cache behind a proxy whose upstream is down: nix-cache-info is a 502 with a short
    HTML body, after which Nix leaves the cache out. A narinfo asked for all the same (Nix
    asks several at once, one may go before the cache is left out: it did once in CI, and
    Nix failed the run on its 502) is not there."""

    @override
    def do_GET(self) -> None:
        if not self.path.endswith("/nix-cache-info"):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b"<html><body>upstream down</body></html>\n"
        self.send_response(502)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_a_cache_left_out_with_a_response_body_is_told_once(project):
    # Nix quotes the body in its warning (each line after the first indented): the cache is
    # read from the block as a whole (a retry's, Nix 2.34.1 on, ends with "; retrying"), and
    # told once, by a run and a dry run alike.
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AllBadGateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    cache = f"http://127.0.0.1:{server.server_address[1]}"
    flags = ["--option", "substituters", cache, "--option", "download-attempts", "1"]
    try:
        dry = project.offload("--dry-run", *flags)
        run = project.offload(*flags)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert dry.returncode == 0, dry.stderr
    told = json.loads(dry.stdout)["caches_left_out"]
    assert [(e["machine"], e["cache"], e["message"]) for e in told] == [
        ("local", cache, "it cannot be reached (HTTP error 502 ('Bad Gateway'))")
    ], dry.stderr
    assert run.returncode == 0, run.stderr
    events = [json.loads(line) for line in run.stdout.splitlines() if line.strip()]
    told = [e for e in events if e["event"] == "machine" and e["state"] == "cache"]
    assert [(e["machine"], e["cache"]) for e in told] == [("local", cache)], run.stdout
    assert sum(_left_out(line) for line in run.stderr.splitlines()) == 1, run.stderr
    assert valid(project.out("top"))


class _HeldNars(_Quiet):
    """Serves a cache's directory; each NAR only once its server's ``release`` is set (as a
    large download keeps Nix waiting)."""

    @override
    def do_GET(self) -> None:
        if self.path.startswith("/nar/"):
            release: threading.Event = getattr(self.server, "release")  # noqa: B009
            release.wait(timeout=60)  # bounded: a test that never releases still ends
        super().do_GET()


def test_a_download_the_caches_are_slow_with_is_said_while_the_run_waits(project):
    # The local store fetched what its caches had before the run started, and said nothing
    # of it (its serve session prints no "copying path"): minutes of silence for a closure.
    top = project.nix_build("top")
    run_out(*NIX_COMMAND, "copy", "--to", f"file://{project.cache}", top)
    delete(top, project.out("dep"))
    handler = functools.partial(_HeldNars, directory=str(project.cache))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    release = server.release = threading.Event()  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        flags = ["--option", "substituters", url, "--option", "require-sigs", "false"]
        with subprocess.Popen(
            project.offload_argv(*flags), env=project.offload_env(), cwd=project.dir,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ) as proc:  # fmt: skip
            assert proc.stderr is not None
            said = next((line for line in proc.stderr if "waiting for the binary" in line), "")
            release.set()
            out, rest = proc.communicate(timeout=120)
        assert said.startswith(
            "offload: waiting for the binary caches, asked for 1 path(s): the local store "
            "fetches what they have before the builds start"
        ), rest
        assert proc.returncode == 0, rest
        assert valid(top)
        assert project.builds("sub-top") == 1  # fetched, not built
        [job] = [json.loads(line) for line in out.splitlines() if '"job_finished"' in line]
        assert job["status"] == "substituted"
    finally:
        server.shutdown()
        server.server_close()
