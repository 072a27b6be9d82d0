"""What ``offload build`` says of a builder it could not connect to: what happened, then the
machines line to check and how to leave the builder out, whatever ssh's reason (recorded
OpenSSH 9.2 words, in a link's error as ``SshTransport._error`` makes it); and the hint that
error carries."""

from __future__ import annotations

import pytest

from offload.build.faults import HOOK_LEAVE_OUT, explain
from offload.config.machines import Machine, parse_machines
from offload.transport.links.ssh_errors import ssh_hint

LINES = "ssh://a x86_64-linux\nssh://b x86_64-linux\nssh://dfnohost.example x86_64-linux\n"


def machine(name: str) -> Machine:
    found, _ = parse_machines(LINES, source="/etc/nix/machines", system="x86_64-linux")
    return next(m for m in found if m.name == name)


def link_error(name: str, *lines: str) -> str:
    return f"cannot connect to builder '{name}' ({name}): {' | '.join(lines)}"


def test_a_host_name_that_does_not_resolve_names_its_line_and_the_way_out() -> None:
    error = link_error(
        "dfnohost.example",
        "ssh: Could not resolve hostname dfnohost.example: Temporary failure in name resolution",
    )
    # A fleet member's name with the fleet's ssh config not given (`offload fleet env` not
    # eval'd) read only 'is it right?', where the name is right and the config missing.
    assert explain(machine("dfnohost.example"), error) == (
        "host name dfnohost.example does not resolve (Temporary failure in name resolution): "
        "is it right, or an ssh Host alias from a config ssh was not given "
        "(NIX_SSHOPTS='-F FILE')? (check /etc/nix/machines:3, or leave it out with --exclude "
        "dfnohost.example)"
    )


def test_a_host_name_from_the_ssh_config_is_said_to_come_from_there() -> None:
    error = link_error(
        "b", "ssh: Could not resolve hostname b.example.org: Name or service not known"
    )
    why = explain(machine("b"), error)
    assert why.startswith(
        "host name b.example.org, the ssh config's HostName for b, does not resolve "
        "(Name or service not known)"
    )
    assert why.endswith(
        "(check the ssh config and /etc/nix/machines:2, or leave it out with --exclude b)"
    )


@pytest.mark.parametrize(
    "words",
    [
        "kex_exchange_identification: Connection closed by remote host",
        "ssh: connect to host 127.0.0.1 port 22: No route to host",
        "(ssh printed nothing)",
    ],
)
def test_any_other_failed_connection_names_its_line_too(words: str) -> None:
    why = explain(machine("a"), link_error("a", words))
    assert why.startswith(f"cannot connect to builder 'a' (a): {words}")
    assert why.endswith("(check /etc/nix/machines:1, or leave it out with --exclude a)")


def test_what_is_not_a_connection_is_left_as_it_is() -> None:
    error = "a: connection unusable: stream ended while reading a build result"
    assert explain(machine("a"), error) == error


def test_the_transports_hint_for_a_name_that_does_not_resolve_is_about_the_name() -> None:
    # The hint an SshError carries where no machines line is at hand (setup's probes, say).
    tail = "ssh: Could not resolve hostname b.example.org: Name or service not known"
    assert ssh_hint(tail) == (
        "check the host name (machines line, or the ssh config's HostName), or --exclude it"
    )


@pytest.mark.parametrize(
    "words",
    [
        "cannot connect to 'nobody@cache.example'",  # an ssh:// cache, without fallback
        "unable to download 'http://c.example/0123abcd.narinfo': Couldn't connect to server (7)",
    ],
)
def test_a_builder_whose_nix_stopped_on_its_own_cache_is_said_so_with_the_fix_there(
    words: str,
) -> None:
    # Its session's error, as the builder's Nix said it: it read as offload's own connection
    # to the builder failing ("a: cannot connect to '...'"), with no fix.
    why = explain(machine("a"), f"a: {words}")
    assert why.startswith("its Nix stopped on a binary cache of its own"), why
    assert f"a: {words}" in why
    assert "in the builder's nix.conf" in why


def test_the_hooks_way_out_is_offload_use_not_exclude() -> None:
    # offload-hook said "leave it out with --exclude b", a flag nix-build refuses.
    error = link_error("b", "ssh: connect to host b port 22: Connection refused")
    why = explain(machine("b"), error, HOOK_LEAVE_OUT)
    assert why.endswith(
        "(check /etc/nix/machines:2, or leave it out by choosing the others with `offload use`)"
    )
    unresolved = link_error("b", "ssh: Could not resolve hostname b: Name or service not known")
    assert "--exclude" not in explain(machine("b"), unresolved, HOOK_LEAVE_OUT)


@pytest.mark.parametrize(
    "words",
    [
        "command-line line 0: invalid time value.",  # -o ServerAliveInterval=x
        "command-line: line 0: Bad configuration option: serveralivinterval",
    ],
)
def test_an_option_ssh_refuses_in_nix_sshopts_is_said_to_be_there(words: str) -> None:
    # ssh exits before connecting; it read as the machines line's fault ("check
    # /etc/nix/machines:1"), where nothing is wrong: offload's own options are valid, so the
    # option ssh refuses is one of NIX_SSHOPTS', which come first on its command line.
    why = explain(machine("a"), link_error("a", words))
    assert why == (
        f"ssh refused an option of NIX_SSHOPTS ({words}); fix or remove it there "
        "(`ssh -G $NIX_SSHOPTS a` shows how ssh reads them)"
    )
    assert ssh_hint(words) == "ssh refused an option of NIX_SSHOPTS: fix or remove it there"


@pytest.mark.parametrize(
    "last",
    [
        "curl: (7) Failed to connect to mirror port 443: Connection refused",
        "test_network ... timed out",
        "ssh: Could not resolve hostname github.com: Name or service not known",
    ],
)
def test_a_builds_own_last_line_is_quoted_never_read_as_a_connection_fault(last: str) -> None:
    # A session that closed mid-build quotes its last line: a build's own words, which were
    # read as "connection refused by b: is sshd running?" and the like, with the wrong fix.
    error = f"b closed the connection during BuildDerivation (its last line: {last!r})"
    said = explain(machine("b"), error)
    assert said == error
    assert "sshd" not in said
    assert "reachable" not in said


def test_only_ssh_s_own_words_are_read_as_a_connection_fault() -> None:
    # The same words, not from ssh connecting (no "cannot connect to builder"): left as said.
    error = "b: build of x failed: Connection refused"
    assert explain(machine("b"), error) == error


def test_a_local_session_that_cannot_start_is_the_local_stores_fault() -> None:
    # The local nix-daemon restarted by a nixos-rebuild meanwhile: a TransportError naming the
    # local store, which was taken for the builder's and backed a sound builder off.
    from offload.errors import ProtocolError, SshError, TransportError
    from offload.names import LOCAL
    from offload.scheduler.run.outcome import local_store_failed

    started = TransportError("local: `nix-store --serve` did not start: daemon gone")
    started.peer = LOCAL
    broke = ProtocolError("local closed the connection during ImportPaths")
    broke.peer = LOCAL
    assert local_store_failed(started)
    assert local_store_failed(broke)
    builders = SshError("cannot connect to builder 'b': Connection refused")
    assert not local_store_failed(builders)
    assert not local_store_failed(RuntimeError("x"))


def test_the_hooks_own_ssh_words_are_read_as_a_connection_fault_too() -> None:
    # offload-hook's sessions open their own ssh: its failure starts "cannot open a session on
    # builder", which the rule for ssh's own words left out, so the hook said ssh's raw line.
    error = "cannot open a session on builder 'b' (b): ssh: connect to host b port 22: "
    error += "Connection refused"
    said = explain(machine("b"), error, HOOK_LEAVE_OUT)
    assert said.startswith("connection refused by b")
    assert "`offload use`" in said


def test_a_builder_whose_daemon_does_not_trust_the_user_is_said_with_the_file_to_edit() -> None:
    # The down line said only "only trusted-users may ...": not where, nor the restart.
    from offload.protocol.trust import untrusted_hint, untrusted_message

    refused = "a: cannot add path '/nix/store/x-y' because it lacks a valid signature"
    said = explain(machine("a"), untrusted_message("a", refused))
    assert said.startswith("builder 'a' does not trust the ssh user: its Nix daemon refused")
    assert said.endswith(f"; {untrusted_hint('a')}")
    assert "trusted-users` in a's nix.conf and restart its nix-daemon" in said
