import shlex
import subprocess
from pathlib import Path

import pytest

from offload.errors import ConfigError
from offload.transport import ssh as ssh_module
from offload.transport.shared import SharedSshTransport
from offload.transport.ssh import (
    SshTarget,
    known_hosts_line,
    master_argv,
    serve_argv,
    split_sshopts,
    ssh_argv,
)
from offload.transport.ssh_options import without_sharing
from offload.transport.wrapper import (
    kill_script,
    parse_born,
    parse_pid_line,
    parse_slot,
    parse_start_line,
    serve_command,
)

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB3gKcV0 root@fast"


# The start line: the pid, then the load report of offload.load (cores, /proc/loadavg, boot
# id), then the builder-side slot; the script is run by real shells in test_builder_slots.
SCRIPT = serve_command()[2]
REPORTING = f"sh -c {shlex.quote(SCRIPT)} sh 0 - 0 - "


def test_the_start_line_script_reads_load_and_takes_a_slot_with_flock():
    assert serve_command()[:2] == ["sh", "-c"]
    assert serve_command(slots=3)[3:5] == ["sh", "3"]
    assert "{ read -r ofl_l </proc/loadavg; } 2>/dev/null; " in SCRIPT
    assert "{ read -r ofl_b </proc/sys/kernel/random/boot_id; } 2>/dev/null; " in SCRIPT
    assert "flock -n 9; then ofl_s=$ofl_i;" in SCRIPT
    # nproc only when the client does not know the cores, the slot directory made only once.
    assert "case $ofl_c in ''|*[!0-9]*) ofl_c=$(nproc 2>/dev/null </dev/null);; esac; " in SCRIPT
    assert SCRIPT.count("nproc") == 1
    assert 'if [ -d "$ofl_d" ] || (umask 077 && mkdir -p "$ofl_d") 2>/dev/null; then' in SCRIPT
    assert serve_command(cores=8)[6:8] == ["0", "8"]
    assert serve_command(cores=None)[7] == serve_command(cores=0)[7] == "-"
    assert SCRIPT.endswith(
        'echo "offload-serve-pid $$ ${ofl_c:--} ${ofl_l:--} ${ofl_b:--} start=$ofl_t '
        'count=$ofl_u slot=$ofl_s"; '
        'case $ofl_s in busy|yield) exit 75;; esac; exec "$@"'
    )


def test_serve_argv_exact_with_master_pinning_and_sshopts():
    target = SshTarget(host="fast", user="builder", identity_file="/k/id", compress=True)
    argv = serve_argv(
        target,
        known_hosts=Path("/tmp/kh"),
        nix_sshopts="-F /f/ssh_config  -o\tX=1",
        control_path=Path("/tmp/ofl-x/m"),
    )
    assert argv == [
        "ssh",
        # Pinning first: ssh keeps the first value, NIX_SSHOPTS cannot turn checking off.
        "-o", "UserKnownHostsFile=/tmp/kh", "-o", "StrictHostKeyChecking=yes",
        # The master's socket too: a ControlPath there hid the master from offload.
        "-o", "ControlMaster=no", "-o", "ControlPath=/tmp/ofl-x/m", "-o", "ControlPersist=no",
        "-F", "/f/ssh_config", "-o", "X=1",  # split on blanks like Nix, no quoting
        "-x", "-a",
        "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
        "-o", "ServerAliveInterval=4", "-o", "ServerAliveCountMax=2",
        "-i", "/k/id", "-C",
        "--", "builder@fast",
        REPORTING + "nix-store --serve --write",
    ]  # fmt: skip


def test_master_argv():
    target = SshTarget(host="h", port=2222)
    master = master_argv(target, control_path=Path("/c/m"), connect_timeout=3)
    assert master[1:7] == [
        "-o",
        "ControlMaster=yes",
        "-o",
        "ControlPath=/c/m",
        "-o",
        "ControlPersist=no",
    ]
    assert master[master.index("--") :] == [
        "--", "h", "sh -c 'echo offload-master-ready; exec cat >/dev/null'",
    ]  # fmt: skip
    assert "ConnectTimeout=3" in master
    # A persistent master (offload build's) stays in the background, idle that long: its
    # ControlPersist after NIX_SSHOPTS, whose ControlPersist=no keeps nothing (ssh takes the
    # first value); its socket and mode before them, which a ControlPath there cannot move.
    opts = "-o ControlPersist=no -o ControlPath=/u/%C -o ControlMaster=auto"
    kept = master_argv(target, control_path=Path("/c/m"), persist=120, nix_sshopts=opts)
    assert kept[1:5] == ["-o", "ControlMaster=yes", "-o", "ControlPath=/c/m"]
    assert kept.index("ControlPersist=no") < kept.index("ControlPersist=120")
    assert "ControlPersist=no" not in kept[:5]


def test_pid_line_and_kill_script():
    assert parse_pid_line("offload-serve-pid 123\n") == 123
    assert parse_pid_line("offload-serve-pid 123 8 - -\n") == 123
    assert parse_pid_line("offload-serve-pid x") is None
    assert parse_pid_line("building '/nix/store/x.drv'") is None
    argv = kill_script(42, 3)
    assert argv[:2] == ["sh", "-c"]
    assert argv[-4:] == ["sh", "42", "3", "-"]
    assert kill_script(42, 3, "98765")[-4:] == ["sh", "42", "3", "98765"]


@pytest.mark.parametrize(
    ("line", "born", "slot"),
    [
        ("offload-serve-pid 7 2 0.1 0.2 0.3 1/9 5 boot start=2137796 slot=0", "2137796", "0"),
        ("offload-serve-pid 7 2 0.1 0.2 0.3 1/9 5 boot start=- slot=-", None, None),
        ("offload-serve-pid 7 2 0.1 0.2 0.3 1/9 5 boot slot=1", None, "1"),  # an older line
        ("offload-serve-pid 7 start=12 slot=-", "12", None),
        ("offload-serve-pid 7 2 0.1 0.2 0.3 1/9 5 boot start=21377", None, None),  # cut short
        ("offload-serve-pid 7 start=1x2 slot=0", None, "0"),
        ("offload-serve-pid 7 start=" + "9" * 21, None, None),
        ("building start=12", None, None),
    ],
)
def test_the_start_line_s_last_words(line: str, born: str | None, slot: str | None) -> None:
    assert parse_born(line) == born
    assert parse_slot(line) == slot
    if line.startswith("offload-serve-pid 7 2"):
        start = parse_start_line(line)
        assert start is not None
        assert start[1] is not None
        assert start[1].cores == 2


def test_remote_program_and_store_are_quoted_one_by_one():
    # remote-program's words, as Nix splits them (2.20 on; 2.8 ran the text as it was);
    # the store is one word, whatever it holds.
    target = SshTarget(host="h")
    argv = serve_argv(
        target,
        params={"remote-program": "sudo -n /opt/a;b/nix-store", "remote-store": "/a b;rm -rf /"},
    )
    assert argv[-1] == REPORTING + (
        "sudo -n '/opt/a;b/nix-store' --serve --write --store '/a b;rm -rf /'"
    )


def test_port_goes_to_ssh_and_known_hosts_uses_bracket_form():
    target = SshTarget(host="127.0.0.1", port=2222, public_host_key=KEY)
    argv = serve_argv(target)
    assert argv[argv.index("-p") + 1] == "2222"
    assert known_hosts_line(target) == f"[127.0.0.1]:2222 {KEY}\n"
    assert known_hosts_line(SshTarget(host="fast", public_host_key=KEY)) == f"fast {KEY}\n"


@pytest.mark.parametrize("host", ["", "-oProxyCommand=evil", "a b", "a\nb"])
def test_hosts_that_ssh_would_misread_are_rejected(host):
    with pytest.raises(ConfigError):
        SshTarget(host=host)


def test_user_that_looks_like_an_option_is_rejected():
    with pytest.raises(ConfigError):
        SshTarget(host="h", user="-oX")


def test_a_restricted_builder_is_asked_for_the_bare_serve_program():
    params = {"remote-program": "/run/nix-store", "remote-store": "/s"}
    assert serve_command(params, wrapped=False) == [
        "/run/nix-store", "--serve", "--write", "--store", "/s",
    ]  # fmt: skip
    bare = serve_argv(SshTarget(host="h"), params=params, wrapped=False)
    assert bare[-1] == "/run/nix-store --serve --write --store /s"
    assert serve_argv(SshTarget(host="h"), params=params)[-1].startswith("sh -c ")


def test_the_slot_at_the_end_of_the_start_line_is_read_apart_from_the_load():
    line = "offload-serve-pid 42 8 9.50 7.10 5.00 3/345 6789 b00t slot=1"
    start = parse_start_line(line)
    assert start is not None
    assert start[0] == 42
    assert start[1] is not None
    assert (start[1].load1, start[1].boot_id) == (9.5, "b00t")
    assert parse_slot(line) == "1"
    assert parse_slot(line.replace("slot=1", "slot=busy")) == "busy"
    assert parse_slot(line.replace("slot=1", "slot=noflock")) == "noflock"
    assert parse_slot(line.replace("slot=1", "slot=-")) is None  # none was asked for
    assert parse_slot(line.removesuffix(" slot=1")) is None  # an older wrapper
    assert parse_slot("hello slot=1") is None


def _as_ssh_reads_them(argv: list[str]) -> dict[str, str]:
    """ssh's own configuration for ``argv`` up to its destination (``-G`` prints it and
    connects to nothing)."""
    end = argv.index("--")
    done = subprocess.run(
        [*argv[:end], "-G", "127.0.0.1"], capture_output=True, text=True, check=True, timeout=30
    )
    return dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)


def test_paths_with_a_percent_reach_ssh_as_they_are(tmp_path: Path) -> None:
    # ssh reads % in ControlPath and UserKnownHostsFile as its tokens (%h: the host): a state
    # directory with one in its name must not become another path.
    where = tmp_path / "100%h"
    target = SshTarget("127.0.0.1", user="root", public_host_key=KEY)
    argv = ssh_argv(target, known_hosts=where / "known_hosts", control_path=where / "socket")
    said = _as_ssh_reads_them(argv)
    assert said["controlpath"] == str(where / "socket")
    assert said["userknownhostsfile"] == str(where / "known_hosts")
    # The hook's shared masters too (offload.transport.shared).
    shared = SharedSshTransport(target, name="b", directory=where, env={})
    said = _as_ssh_reads_them(shared.argv(["true"]))
    assert said["controlpath"] == str(shared.control_path)
    assert said["userknownhostsfile"] == str(shared.known_hosts)


QUOTED = """-F '/etc/ssh dir/config' -o "ProxyCommand=ssh -W %h:%p jump" -i a\\ b"""


@pytest.mark.parametrize(
    ("version", "words"),
    [
        # Nix 2.26 on (nix#12020): as a POSIX shell splits words.
        (
            (2, 26),
            ["-F", "/etc/ssh dir/config", "-o", "ProxyCommand=ssh -W %h:%p jump", "-i", "a b"],
        ),
        (
            (2, 35, 1),
            ["-F", "/etc/ssh dir/config", "-o", "ProxyCommand=ssh -W %h:%p jump", "-i", "a b"],
        ),
        # Before: on blanks, quotes and backslashes as they are.
        ((2, 25, 9), QUOTED.split()),
        ((2, 8), QUOTED.split()),
    ],
)
def test_nix_sshopts_are_split_as_the_hosts_nix_splits_them(
    version: tuple[int, ...], words: list[str]
) -> None:
    assert split_sshopts(QUOTED, version) == words


def test_nix_sshopts_without_quotes_need_no_version(monkeypatch: pytest.MonkeyPatch) -> None:
    # The two splits agree: `nix --version` is not asked (its start is the hook's cost).
    def asked() -> None:
        raise AssertionError("nix --version was asked")

    monkeypatch.setattr(ssh_module, "local_nix_version", asked)
    assert split_sshopts("-o  Port=2222\t-v", None) == ["-o", "Port=2222", "-v"]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        # As Nix's shellSplitString, not Python's shlex: a trailing backslash is dropped, a
        # backslash in double quotes keeps $ (shlex keeps "\\$"), only blanks and tabs split.
        ("-i /k\\", ["-i", "/k"]),
        # Alone at the end it begins no word: ssh took an empty one for its destination.
        ('-o "X=1" \\', ["-o", "X=1"]),
        ("-o X=1 \\  -v", ["-o", "X=1", " ", "-v"]),
        ('-o "A=\\$x"', ["-o", "A=$x"]),
        ('-o "A=\\q"', ["-o", "A=\\q"]),
        ("-o 'A=\\$x'", ["-o", "A=\\$x"]),
        ("a\nb ''", ["a\nb", ""]),
    ],
)
def test_nix_sshopts_are_split_as_nixs_shell_split_string(text: str, words: list[str]) -> None:
    assert split_sshopts(text, (2, 30)) == words


@pytest.mark.parametrize(("text", "kind"), [("-o 'A=b", "single"), ('-o "A=b', "double")])
def test_an_unclosed_quote_in_nix_sshopts_is_a_config_error(text: str, kind: str) -> None:
    with pytest.raises(ConfigError, match=rf"^NIX_SSHOPTS: unterminated {kind} quote: "):
        split_sshopts(text, (2, 26))


def _controls(tmp_path: Path, opts: str) -> dict[str, dict[str, str]]:
    """How ssh reads a kept master's, a session's and the hook's shared master's words with
    NIX_SSHOPTS ``opts``; each must stay offload's own socket and mode."""
    target = SshTarget("127.0.0.1", user="root", public_host_key=KEY)
    socket = tmp_path / "socket"
    said = {
        "master": _as_ssh_reads_them(
            master_argv(target, control_path=socket, persist=120, nix_sshopts=opts)
        ),
        "session": _as_ssh_reads_them(ssh_argv(target, nix_sshopts=opts, control_path=socket)),
    }
    shared = SharedSshTransport(target, name="b", directory=tmp_path, env={"NIX_SSHOPTS": opts})
    said["shared"] = _as_ssh_reads_them(shared.argv(["true"]))
    assert (said["master"]["controlpath"], said["master"]["controlmaster"]) == (str(socket), "true")
    assert (said["session"]["controlpath"], said["session"]["controlmaster"]) == (
        str(socket),
        "false",
    )
    assert (said["shared"]["controlpath"], said["shared"]["controlmaster"]) == (
        str(shared.control_path),
        "auto",
    )
    return said


def test_a_control_path_in_nix_sshopts_cannot_take_the_master_out_of_sight(
    tmp_path: Path,
) -> None:
    # ssh takes the first value of an option, and NIX_SSHOPTS came before offload's Control*:
    # a ControlPath there put the master at the user's socket, never reused nor ended (it
    # ran on in the background after the run), and ControlMaster=auto rode a master whose
    # host key offload never pinned. ControlPersist=no there still keeps nothing (README).
    opts = "-o ControlPath=/tmp/elsewhere/%C -o ControlMaster=auto -o ControlPersist=no"
    said = _controls(tmp_path, opts)
    assert said["master"]["controlpersist"] == "no"  # the user's no, over offload's 120


def test_sharing_flags_in_nix_sshopts_and_the_users_config_are_not_taken(
    tmp_path: Path,
) -> None:
    # -S replaces the first -o ControlPath (ssh sets it, whatever came before): sessions rode
    # the user's own master, whose host key no pin checked, and -M made each one a master.
    opts = "-S /tmp/elsewhere/%C -vM -O exit -p 2222"
    said = _controls(tmp_path, opts)
    assert said["session"]["port"] == "2222"  # the rest of NIX_SSHOPTS is taken
    # Without a master of offload's (a kill after it died, doctor's login), none of the
    # user's config either: ControlMaster auto there rode or left a master unpinned.
    config = tmp_path / "config"
    config.write_text("ControlMaster auto\nControlPath /tmp/mine-%C\nControlPersist yes\n")
    target = SshTarget("127.0.0.1", user="root", public_host_key=KEY)
    alone = _as_ssh_reads_them(ssh_argv(target, nix_sshopts=f"-F {config} {opts}"))
    assert alone["controlmaster"] == "false"
    assert "controlpath" not in alone  # "none": ssh -G prints no path


@pytest.mark.parametrize(
    ("words", "kept"),
    [
        (["-vS", "/x", "-C"], ["-v", "-C"]),
        (["-Spath", "-oA=1"], ["-oA=1"]),
        (["-MCS", "p", "-i", "k"], ["-C", "-i", "k"]),
        (["-O", "exit", "-o", "A=1"], ["-o", "A=1"]),
        # Past the first word that is not an option, nothing is an option of NIX_SSHOPTS'.
        (["-F", "c", "host", "-S", "x"], ["-F", "c", "host", "-S", "x"]),
    ],
)
def test_without_sharing_reads_flags_as_getopt_does(words: list[str], kept: list[str]) -> None:
    assert without_sharing(words) == kept


@pytest.mark.parametrize(
    ("text", "version", "words"),
    [
        # Nix 2.28's shellSplitString splits on blanks and tabs only; 2.18's tokenizeString
        # on newlines and carriage returns too; neither on a no-break space or a form feed.
        ("-o Foo=1\n-p 22", (2, 28), ["-o", "Foo=1\n-p", "22"]),
        ("-o Foo=1\n-p 22", (2, 18), ["-o", "Foo=1", "-p", "22"]),
        ("-o\xa0X=1 -p 22", (2, 28), ["-o\xa0X=1", "-p", "22"]),
        ("-o\xa0X=1 -p 22", (2, 18), ["-o\xa0X=1", "-p", "22"]),
        ("-F  /f\t-o X\x0cY", (2, 28), ["-F", "/f", "-o", "X\x0cY"]),
    ],
)
def test_nix_sshopts_is_split_on_what_nix_splits_it_on(
    text: str, version: tuple[int, int], words: list[str]
) -> None:
    # str.split() took any whitespace for a separator: ssh got other words than Nix's.
    assert split_sshopts(text, version) == words
