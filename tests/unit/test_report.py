"""The run report: its model (lanes, rows, critical path) and the page's escaping. The page
in a real browser is tested in tests/integration/test_report_browser.py."""

from __future__ import annotations

import dataclasses
import os
import re
import select
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from offload.cli import main
from offload.errors import OffloadError
from offload.history.db import History
from offload.history.records import BuildRecord, MachineRecord, PhaseRecord, RunRecord
from offload.report import (
    check_target,
    make_model,
    render_html,
    write_page,
    write_report,
)

HOSTILE = '<script>document.title="pwned"</script><img src=x onerror=alert(1)>"\'&'


def _build(drv, machine, start, end, *, status="built", name=None, sent=0):
    return BuildRecord(
        "r1",
        drv,
        drv,
        machine,
        start,
        end,
        status,
        bytes_sent=sent,
        name=name or drv,
        phases=(PhaseRecord("sending", start - 1, start), PhaseRecord("building", start, end)),
    )


def _run(deps):
    machines = (MachineRecord("fast", 4.0, 2), MachineRecord("idle", 1.0, 1))
    return RunRecord("r1", 0.0, 20.0, ("top",), "ok", machines, 12.0, 10.0, deps)


def test_lanes_rows_and_the_critical_path():
    builds = [
        _build("a", "fast", 1, 5),
        _build("b", "fast", 2, 9),  # overlaps a: a second row
        _build("c", "fast", 10, 18),  # after both: back on row 0
        _build("d", "local", 1, 3),
        _build("c", "local", 11, 19, status="cancelled"),  # a speculative copy that lost
    ]
    model = make_model(_run({"c": ("a", "b"), "b": ("d",)}), builds)
    assert [lane.machine for lane in model.lanes] == ["fast", "local"]  # idle built nothing
    fast = model.lanes[0]
    assert [(bar.build.drv_path, bar.row) for bar in fast.bars] == [("a", 0), ("b", 1), ("c", 0)]
    # c finished last; of its dependencies b finished later than a; b's is d.
    assert [b.drv_path for b in model.critical] == ["d", "b", "c"]
    assert {bar.build.drv_path for lane in model.lanes for bar in lane.bars if bar.critical} == {
        "d",
        "b",
        "c",
    }
    assert model.distance == pytest.approx(10.0)
    assert model.slowest[0].drv_path == "c"
    # A run's page draws its lower bound, and says so in the legend.
    page = render_html(model)
    assert "the lower bound, from the first build" in page
    assert '<line class="bound"' in page
    assert "<h2>Critical path (3 builds, " in page
    one = render_html(make_model(_run({}), [_build("a", "fast", 1, 5)]))
    assert "<h2>Critical path (1 build, " in one  # "1 builds" before
    # Every mark a bar may have is in the key (faded and dashed had none: a tester).
    assert '<i class="failed"></i>failed' in page
    assert '<i class="stopped"></i>stopped or lost' in page
    idle = render_html(make_model(_run({}), [_build("a", "idle", 1, 5)]))
    assert re.findall(r"speed [^<]*", idle) == ["speed 1, 1 slot"]  # "1 slots" before
    assert re.findall(r"speed [^<]*", page) == ["speed 4, 2 slots"]


def test_a_fetch_home_beside_the_next_build_on_its_slot_opens_no_row():
    # One slot: a's outputs come home (4-5) while b, given the slot a let go, sends (4.5).
    a = dataclasses.replace(
        _build("a", "fast", 1, 4),
        phases=(PhaseRecord("building", 1, 4), PhaseRecord("fetching", 4, 5)),
    )
    b = _build("b", "fast", 5.5, 8)  # sending from 4.5
    run = RunRecord("r1", 0.0, 9.0, ("b",), "ok", (MachineRecord("fast", 4.0, 1),), None, 8.0)
    model = make_model(run, [a, b])
    (lane,) = model.lanes
    assert lane.rows == 1
    assert [bar.row for bar in lane.bars] == [0, 0]
    # Drawn on one row, a's fetch (along its foot) and b's sending (above it) overlap in time
    # and not on the page (a review: b's bar hid half of a's fetch).
    rects = re.findall(r'data-phase="(\w+)" x="[^"]+" y="(\d+)" width="[^"]+" height="(\d+)"',
                       render_html(model))  # fmt: skip
    bands = {phase: (int(y), int(y) + int(h)) for phase, y, h in rects}
    fetch, send = bands["fetching"], bands["sending"]
    assert fetch[0] >= send[1] or send[0] >= fetch[1], (fetch, send)


def test_the_critical_path_goes_through_the_copy_whose_output_was_used():
    # a and b built on fast, lost with it, built again on local; c used those. The path went
    # back to fast's first copies, which fed nothing (a tester: across a 32 s gap).
    builds = [
        _build("a", "fast", 1, 3),
        _build("b", "fast", 3, 5, name="b"),
        _build("a", "local", 6, 9),
        _build("b", "local", 9, 13),
        _build("c", "local", 14, 18),
    ]
    model = make_model(_run({"c": ("b",), "b": ("a",)}), builds)
    assert [(b.drv_path, b.machine) for b in model.critical] == [
        ("a", "local"),
        ("b", "local"),
        ("c", "local"),
    ]
    # A dependency's output fetched home while the build using it began: its one copy.
    racing = [_build("a", "fast", 1, 5), _build("c", "fast", 4.9, 8)]
    assert [b.drv_path for b in make_model(_run({"c": ("a",)}), racing).critical] == ["a", "c"]


@pytest.mark.parametrize(
    ("outcome", "bound", "said_bound", "ratio"),
    [("ok", 10.0, "10.0s", "2.00x"), ("interrupted", 10.0, None, None), ("ok", 0.8, "0.8s", None)],
)
def test_the_page_holds_the_run_to_its_bound_as_history_does(outcome, bound, said_bound, ratio):
    # A run stopped early has a bound of what it built; one under a second is all start-up:
    # history shows no ratio for either, and the page said 1.82x and 4.05x in red.
    run = RunRecord(
        "r1", 0.0, 20.0, ("top",), outcome, (MachineRecord("fast", 4.0, 2),), None, bound
    )
    page = render_html(make_model(run, [_build("a", "fast", 1, 5)]))
    facts = dict(re.findall(r'data-fact="([^"]+)">[^<]*<b>([^<]*)</b>', page))
    assert facts["lower bound"] == (said_bound or "-")
    if ratio is None:
        assert "from the bound" not in facts
    else:
        assert facts["from the bound"].endswith(f"({ratio})")
    assert ('<line class="bound"' in page) == (said_bound is not None)


def test_a_failed_build_is_named_at_the_top_with_its_error_and_its_log():
    # A 0.8 s failure among 15 builds was in no table: the page's only mark of it was a bar.
    failed = _build("f", "fast", 1, 1.8, status="failed", name="r1-failing")
    said = "\x1b[31;1merror:\x1b[0m builder for 'r1-failing' failed with exit code 3\nlast lines"
    drv = "/nix/store/" + "a" * 32 + "-r1-failing.drv"
    failed = dataclasses.replace(failed, drv_path=drv, error=said)
    slow = [_build(f"s{i}", "fast", 2, 3 + i) for i in range(12)]
    page = render_html(make_model(_run({}), [*slow, failed]))
    table = page[page.index('<table id="failed">') :].split("</table>")[0]
    assert "<h2>Failed (1)</h2>" in page
    assert page.index('id="failed"') < page.index("<h2>Timeline</h2>")
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", table)
    assert cells == [
        "r1-failing",
        "fast",
        "error: builder for &#x27;r1-failing&#x27; failed with exit code 3",
        f"offload log /nix/store/{'a' * 32}-r1-failing.drv",
    ]
    assert 'id="failed"' not in render_html(make_model(_run({}), slow))


def test_what_the_run_said_of_its_machines_is_on_the_page():
    machines = (
        MachineRecord("fast", 4.0, 2, ("+3.0s down: connection reset",)),
        MachineRecord("away", 1.0, 1, ("+0.1s down: \x1b[31mno route\x1b[0m",), usable=False),
    )
    run = RunRecord("r1", 0.0, 20.0, ("top",), "ok", machines, None, 4.0)
    page = render_html(make_model(run, [_build("a", "fast", 1, 5)]))
    table = page[page.index('<table id="said">') :].split("</table>")[0]
    assert re.findall(r"<td[^>]*>([^<]*)</td>", table) == [
        "fast",
        "+3.0s down: connection reset",
        "away",
        "+0.1s down: no route",
        "away",
        "down or not answering all run",
    ]
    assert 'id="said"' not in render_html(make_model(_run({}), [_build("a", "fast", 1, 5)]))


def test_outside_text_is_escaped_everywhere():
    builds = [_build("/nix/store/x-evil.drv", HOSTILE, 1, 2, name=HOSTILE, sent=9)]
    run = RunRecord("r1", 0.0, 3.0, (HOSTILE,), "ok", (), None, None)
    page = render_html(make_model(run, builds))
    # The page's own two scripts only, and no element or attribute made from the name.
    assert len(re.findall(r"<script", page)) == 2
    assert "<img" not in page
    assert "&lt;script&gt;document.title=&quot;pwned&quot;&lt;/script&gt;" in page
    assert "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")  # no fetch


def test_the_report_file_is_written_whole_and_mistakes_are_one_line(tmp_path, monkeypatch, capsys):
    with History(tmp_path / "history.sqlite") as history:
        history.record_run(_run({}), [_build("a", "fast", 1, 5)])
        target = tmp_path / "out.html"
        model = write_report(history, "r", target)
        assert model.run.run_id == "r1"
        assert target.read_text().startswith("<!DOCTYPE html>")
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
        with pytest.raises(OffloadError, match="no run 'zz'"):
            write_report(history, "zz", target)
    with pytest.raises(OffloadError, match="no directory"):
        check_target(tmp_path / "missing" / "r.html")
    with pytest.raises(OffloadError, match="is a directory"):
        check_target(tmp_path)
    monkeypatch.setenv("OFFLOAD_STATE_DIR", str(tmp_path / "empty"))
    (tmp_path / "empty").mkdir()
    History(tmp_path / "empty" / "history.sqlite").close()  # a history of no run
    assert main(["report", "-o", str(tmp_path / "r.html")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "error: no run in the history"
    assert err[1].startswith("hint: ")
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_the_report_file_gets_the_mode_the_umask_allows(tmp_path, umask, mode):
    # It holds derivation paths, machine names and error lines: umask 077 keeps it private.
    with History(tmp_path / "history.sqlite") as history:
        history.record_run(_run({}), [_build("a", "fast", 1, 5)])
        before = os.umask(umask)
        try:
            write_report(history, "r", tmp_path / "out.html")
        finally:
            os.umask(before)
    assert (tmp_path / "out.html").stat().st_mode & 0o777 == mode


def test_a_link_is_written_through_a_pipe_in_place_and_dash_is_stdout(tmp_path, capsys):
    # As a shell's redirection writes them: replacing a link, a pipe or a device (as root,
    # /dev/null) with a file would break what the user pointed the report at.
    model = make_model(_run({}), [_build("a", "fast", 1, 5)])
    target = tmp_path / "t.html"
    link = tmp_path / "l.html"
    link.symlink_to(target)
    check_target(link)
    write_page(model, link)
    assert link.is_symlink()
    assert target.read_text().startswith("<!DOCTYPE html>")

    fifo = tmp_path / "p"
    os.mkfifo(fifo)
    check_target(fifo)
    read: list[str] = []
    reader = threading.Thread(target=lambda: read.append(fifo.read_text()))
    reader.start()
    write_page(model, fifo)
    reader.join(timeout=30)
    assert read[0].startswith("<!DOCTYPE html>")
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.html", "p", "t.html"]

    check_target(None)
    write_page(model, None)
    assert capsys.readouterr().out.startswith("<!DOCTYPE html>")
    assert not (tmp_path / "-").exists()


def test_a_link_planted_by_another_user_is_not_followed_as_root(tmp_path):
    # /tmp/report.html -> /etc/shadow, planted by another user: refused, whether or not the
    # kernel's protected_symlinks would (it is 0 here); resolved and renamed over, the file
    # was replaced by a 0644 page.
    shared = tmp_path / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    secret = tmp_path / "secret"
    secret.write_text("root's")
    secret.chmod(0o600)
    link = shared / "report.html"
    link.symlink_to(secret)
    os.lchown(link, 65534, 65534)  # nobody's
    model = make_model(_run({}), [_build("a", "fast", 1, 5)])
    with pytest.raises(OffloadError, match="a link of another user's"):
        check_target(link)
    with pytest.raises(OffloadError, match="a link of another user's"):
        write_page(model, link)
    assert secret.read_text() == "root's"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert link.is_symlink()


def test_a_pipe_planted_by_another_user_in_a_shared_directory_gets_no_page(tmp_path):
    # /tmp/report.html as a FIFO of another user's: root wrote the page into it, for that
    # user to read (the history's builds, machines and names).
    shared = tmp_path / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    fifo = shared / "report.html"
    os.mkfifo(fifo)
    os.chown(fifo, 65534, 65534)  # nobody's
    # Read while the page is refused, so that one written in spite of it would arrive (not
    # block: a writer waits for room in the pipe) and be seen. Opened read-write: it never
    # waits for a writer, and reads wait for data rather than end at once.
    fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    done, read = threading.Event(), []

    def drain() -> None:
        while not done.is_set():
            if select.select([fd], [], [], 0.05)[0]:
                read.append(os.read(fd, 1 << 16))

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        model = make_model(_run({}), [_build("a", "fast", 1, 5)])
        with pytest.raises(OffloadError, match="a pipe or device of another user's"):
            write_page(model, fifo)
    finally:
        done.set()
        reader.join(timeout=30)
        os.close(fd)
    assert b"DOCTYPE" not in b"".join(read)


def test_a_link_of_another_user_outside_a_shared_directory_is_followed(tmp_path):
    # /dev/stdout is root's link: a user's `-o /dev/stdout` was refused as "another user's
    # link". Only a sticky directory others write to (/tmp) lets another user plant one.
    target = tmp_path / "t.html"
    link = tmp_path / "stdout"
    link.symlink_to(target)
    os.lchown(link, 65534, 65534)
    write_page(make_model(_run({}), [_build("a", "fast", 1, 5)]), link)
    assert target.read_text().startswith("<!DOCTYPE html>")


def test_a_pipe_swapped_for_a_link_after_the_look_is_not_followed(tmp_path, monkeypatch):
    # The window between looking at a pipe and opening it: a link put there meanwhile
    # (to /etc/shadow, say) must not be opened through, nor truncated.
    secret = tmp_path / "secret"
    secret.write_text("root's")
    fifo = tmp_path / "p"
    os.mkfifo(fifo)
    looked = Path.is_file

    def look_then_swap(path: Path) -> bool:
        answer = looked(path)
        if path == fifo and not fifo.is_symlink():
            fifo.unlink()
            fifo.symlink_to(secret)
        return answer

    monkeypatch.setattr(Path, "is_file", look_then_swap)
    with pytest.raises(OffloadError, match="cannot write the report"):
        write_page(make_model(_run({}), [_build("a", "fast", 1, 5)]), fifo)
    assert secret.read_text() == "root's"


def test_a_directory_gone_since_the_check_is_one_line(tmp_path):
    # --report is checked before a build and written after it: the directory may be gone.
    model = make_model(_run({}), [_build("a", "fast", 1, 5)])
    target = tmp_path / "gone" / "r.html"
    target.parent.mkdir()
    check_target(target)
    target.parent.rmdir()
    with pytest.raises(OffloadError, match=r"r\.html: cannot write the report: No such file"):
        write_page(model, target)


def test_a_place_no_file_can_be_made_in_is_one_line_with_a_hint() -> None:
    # /proc passes the checks (a directory, no such file) and takes no file: the error said
    # only "No such file or directory", with no hint of what to do.
    model = make_model(_run({}), [_build("a", "fast", 1, 5)])
    with pytest.raises(OffloadError, match=r"x\.html: cannot write the report") as raised:
        write_page(model, Path("/proc/x.html"))
    assert raised.value.hint == "name a file in a directory you may write, with room for it"


def test_ctrl_c_while_the_page_is_written_leaves_no_temporary_file(tmp_path, monkeypatch):
    # `offload build --report` writes it after the run, where Ctrl-C is a KeyboardInterrupt:
    # only an OSError removed the temporary file, so `.r.html.XXXX` stayed beside the page.
    model = make_model(_run({}), [_build("a", "fast", 1, 5)])

    def ctrl_c(**_: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr("offload.report.readable_mode", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        write_page(model, tmp_path / "r.html")
    assert list(tmp_path.iterdir()) == []


def test_a_page_on_standard_output_is_utf8_whatever_the_locale(tmp_path):
    # The page says charset utf-8: in an ISO-8859-1 locale "∞" was an internal error, and
    # "ü" a byte the browser then misread.
    with History(tmp_path / "history.sqlite") as history:
        history.record_run(_run({}), [_build("a", "fast-\u00fc\u221e", 1, 5)])
    env = {**os.environ, "OFFLOAD_STATE_DIR": str(tmp_path), "PYTHONIOENCODING": "latin-1"}
    done = subprocess.run(
        [sys.executable, "-m", "offload", "report", "-o", "-"],
        capture_output=True,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "fast-\u00fc\u221e".encode() in done.stdout


def test_a_long_machine_name_is_cut_in_its_lane_and_whole_in_the_tooltip():
    # Uncut, it ran on under the lane's bars, hidden by them.
    name = "builder-eu-west-1.example.org:2222"
    page = render_html(make_model(_run({}), [_build("a", name, 1, 5)]))
    label = re.search(r'<text class="lane-name"[^>]*>(.*?)</text>', page)
    assert label is not None
    assert label[1] == f"builder-eu-west-1.exa\u2026<title>{name}</title>"


def test_a_status_no_run_writes_is_escaped_too():
    # Only a tampered history holds one, but it closed the bar's class attribute.
    builds = [_build("/nix/store/x-a.drv", "fast", 1, 2, status='built" onmouseover="alert(1)')]
    page = render_html(make_model(RunRecord("r1", 0.0, 3.0, ("a",), "ok", (), None, None), builds))
    assert 'onmouseover="alert(1)' not in page
    assert "built&quot; onmouseover=&quot;alert(1)" in page


def test_a_replaced_page_keeps_its_mode_and_its_name_may_be_long(tmp_path):
    with History(tmp_path / "history.sqlite") as history:
        history.record_run(_run({}), [_build("a", "fast", 1, 5)])
        private = tmp_path / "private.html"
        private.write_text("old")
        private.chmod(0o600)
        write_report(history, "r", private)
        assert stat.S_IMODE(private.stat().st_mode) == 0o600  # was made 0644
        long = tmp_path / ("p" * 250 + ".html")  # 255 bytes: its temporary was over
        write_report(history, "r", long)
        assert long.read_text().startswith("<!DOCTYPE html>")


def test_the_history_itself_or_a_directory_to_be_is_no_target(tmp_path, capsys):
    with History(tmp_path / "history.sqlite") as history:
        history.record_run(_run({}), [_build("a", "fast", 1, 5)])
        with pytest.raises(OffloadError, match="is the history database the report is made"):
            write_report(history, "r", tmp_path / "history.sqlite")
        assert history.runs()[0].run_id == "r1"  # not replaced by a page
    with pytest.raises(SystemExit) as refused:  # a file named newdir was written
        main(["report", "-o", f"{tmp_path}/newdir/"])
    assert refused.value.code == 1
    assert "names a directory: name a file" in capsys.readouterr().err
    assert not (tmp_path / "newdir").exists()


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        (["report", "--hook"], "history.sqlite"),  # only `offload report RUN` checked it
        (["report"], "history.sqlite-shm"),  # "written", then SQLite removed it on closing
        (["build", "-E", "1", "--builders", ""], "history.sqlite"),  # before the run
    ],
)
def test_no_page_replaces_the_history_or_its_files(tmp_path, capsys, monkeypatch, argv, name):
    monkeypatch.setenv("OFFLOAD_STATE_DIR", str(tmp_path))
    with History(tmp_path / "history.sqlite") as history:
        history.record_run(_run({}), [_build("a", "fast", 1, 5)])
    target = tmp_path / name
    before = target.read_bytes() if target.exists() else None
    assert main([*argv, "-o" if argv[0] == "report" else "--report", str(target)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {target}: is the history database the report is made from")
    assert (target.read_bytes() if target.exists() else None) == before
    with History(tmp_path / "history.sqlite") as history:
        assert history.runs()[0].run_id == "r1"


def test_standard_output_that_cannot_be_written_is_one_line(tmp_path, capsys):
    with History(tmp_path / "history.sqlite") as history:
        history.record_run(_run({}), [_build("a", "fast", 1, 5)])
    env = {**os.environ, "OFFLOAD_STATE_DIR": str(tmp_path)}
    with Path("/dev/full").open("w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "offload", "report", "-o", "-"],
            env=env, stdout=full, stderr=subprocess.PIPE, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "error: cannot write the report to standard output: No space left on device",
        "hint: free space where it goes, or name a file with -o",
    ]


def test_the_page_is_on_disk_whole_before_it_takes_the_name(tmp_path, monkeypatch):
    # Renamed unsynced, a crash could leave an empty file under the page's name.
    target = tmp_path / "r.html"
    target.write_text("the page before")
    synced: list[tuple[bytes, str]] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append((Path(f"/proc/self/fd/{fd}").read_bytes(), target.read_text()))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    write_page(make_model(_run({}), [_build("a", "fast", 1, 5)]), target)
    ((written, there),) = synced
    assert written.decode() == target.read_text()  # the whole page, synced
    assert there == "the page before"  # before the rename
