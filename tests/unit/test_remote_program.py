"""A store URI's ``remote-program`` of several words (``sudo -n nix-store``): its words, each
quoted, as Nix 2.20 on splits it (2.8 put the text in as it was); a blank one is the default."""

from __future__ import annotations

from offload.transport.dialect import daemon_program
from offload.transport.wrapper import serve_command, serve_program


def test_its_words_are_the_program() -> None:
    params = {"remote-program": " sudo\t-n  nix-store\n", "remote-store": "/s"}
    assert serve_program(params) == [
        "sudo",
        "-n",
        "nix-store",
        "--serve",
        "--write",
        "--store",
        "/s",
    ]
    daemon = {"remote-program": "sudo -n nix-daemon"}
    assert daemon_program(daemon) == ["sudo", "-n", "nix-daemon", "--stdio"]


def test_a_blank_one_is_the_default() -> None:
    assert serve_program({"remote-program": "  "})[0] == "nix-store"
    assert daemon_program({"remote-program": ""})[0] == "nix-daemon"


def test_the_remote_command_has_each_word_as_one() -> None:
    # It was one word, 'sudo -n nix-store' (quoted so on its way): not found on the builder.
    unwrapped = serve_command({"remote-program": "sudo -n nix-store"}, wrapped=False)
    assert unwrapped == ["sudo", "-n", "nix-store", "--serve", "--write"]
    wrapped = serve_command({"remote-program": "sudo -n nix-store"})
    assert wrapped[-5:] == unwrapped  # the slot wrapper's "$@"
