"""`offload setup key|builder|client`: set up a key, a builder and a client for distributed builds.

``key`` writes a key pair and says where; ``builder`` and ``client`` print what to install (or
write it with ``--write DIR``), with each file's place in a header line. ``client`` reports each
builder's host key fingerprint on stderr, and a builder it cannot set up as one ``error:`` line;
the others are still printed, and the exit status is then 1. With ``--write``, such a run writes
nothing, so that the same command can be run again once the builder is mended.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from offload.cli import interrupts
from offload.cli.arguments import nonempty_path
from offload.config.machines.files import read_user_file
from offload.config.machines.model import shown, ssh_name_problem
from offload.doctor import DEFAULT_TIMEOUT, DoctorOptions
from offload.errors import ConfigError
from offload.numerals import is_decimal
from offload.setup.builder import DEFAULT_USER, BuilderSetup, builder_files
from offload.setup.client import Builder, ClientSetup, Overrides, client_files, where_they_go
from offload.setup.files import render, write_files
from offload.setup.key import create_key, default_key_path
from offload.setup.probe import Login, probe_all
from offload.setup.values import (
    PublicKey,
    check_path,
    parse_public_key,
    parse_targets,
)

__all__ = ["register"]

_RESTRICT_HELP = (
    "authorize the key for any command, not only `nix-store --serve --write`. By default the "
    "key may only run the serve program (what Nix's build-remote and offload open on ssh:// "
    "builders), so a stolen client key cannot get a shell on the builder; it can still "
    "build anything there as a trusted user, which is as good as root on the builder (Nix's "
    "trusted-users): guard it as such. Unrestricted, "
    "offload can also read the builder's load and `offload doctor` and `setup client` can ask "
    "its settings; restricted, give `setup client` --system, --feature and --jobs"
)
_SSH_NG_HELP = (
    "restrict the key to `nix-daemon --stdio` instead, what Nix and offload open on ssh-ng:// "
    "builders: give `setup client` --ssh-ng too"
)


def _positive(text: str) -> int:
    if not is_decimal(text) or not 0 < int(text) < 100_000:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number from 1 to 99999")
    return int(text)


def _list(text: str) -> list[str]:
    return [item for item in text.split(",") if item]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "setup",
        help="set up a key pair, a builder and a client for distributed builds",
        description="Set up distributed builds: setup key, then setup builder (for the "
        "builder), then setup client on the client, then offload doctor.",
    )
    steps = parser.add_subparsers(dest="step", metavar="STEP", required=True)
    key = steps.add_parser("key", help="make a dedicated ed25519 key pair (never overwrites)")
    key.add_argument(
        "path", nargs="?", type=nonempty_path, metavar="PATH",
        help="private key path (default: /etc/nix/offload_ed25519 as root, the nix-daemon's; "
        "else ~/.ssh/offload_ed25519)",
    )  # fmt: skip
    key.set_defaults(func=run_key)

    builder = steps.add_parser(
        "builder", help="the builder's side: a NixOS module and a script for other hosts"
    )
    builder.add_argument(
        "--user", default=DEFAULT_USER, help=f"build user (default {DEFAULT_USER})"
    )
    # A list, so that a second one is refused, not the first dropped without a word.
    builder.add_argument(
        "--key", metavar="PUBKEY|@FILE", action="append",
        help="the client's public key, or @ and its .pub file (default: @ the default key's)",
    )  # fmt: skip
    builder.add_argument("--unrestricted", action="store_true", help=_RESTRICT_HELP)
    builder.add_argument("--ssh-ng", action="store_true", help=_SSH_NG_HELP)
    builder.add_argument(
        "--write", type=nonempty_path, metavar="DIR", help="write the files into DIR"
    )
    builder.set_defaults(func=run_builder)
    _client_step(steps)


def _client_step(steps: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    client = steps.add_parser(
        "client", help="scan and probe builders; print machines lines, ssh aliases, NixOS module"
    )
    client.add_argument(
        "targets", nargs="+", metavar="[NAME=]HOST[:PORT]",
        help="builders; NAME is the ssh alias they get (default: the host; HOST-PORT for an "
        "address, or a host given on two ports)",
    )  # fmt: skip
    client.add_argument("--user", default=DEFAULT_USER, help=f"login user (default {DEFAULT_USER})")
    client.add_argument(
        "--identity", type=nonempty_path, metavar="PATH",
        help="private key to log in with (default: `setup key`'s)",
    )  # fmt: skip
    client.add_argument(
        "--system", action="append", type=_list, default=[], metavar="SYSTEM[,...]",
        help="systems instead of what the builder reports",
    )  # fmt: skip
    client.add_argument(
        "--feature", action="append", type=_list, metavar="FEATURE[,...]",
        help="supported features instead of what the builder reports",
    )  # fmt: skip
    client.add_argument("--jobs", type=_positive, help="max jobs (default: the builder's)")
    client.add_argument("--speed", type=_positive, default=1, help="speed factor (default 1)")
    client.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
        help=f"connect timeout per builder (default {DEFAULT_TIMEOUT:g})",
    )  # fmt: skip
    client.add_argument(
        "--ssh-ng", action="store_true",
        help="write ssh-ng:// machines lines (Nix's daemon protocol, `nix-daemon --stdio` on the "
        "builder: for keys that `setup builder --ssh-ng` restricted to it)",
    )  # fmt: skip
    client.add_argument(
        "--write", type=nonempty_path, metavar="DIR", help="write the files into DIR"
    )
    client.set_defaults(func=run_client)


def run_key(args: argparse.Namespace) -> int:
    path = args.path or default_key_path(os.geteuid(), os.environ)
    # Checked as `setup client --identity` checks it, before the key is made: the next steps
    # print and take this path in machines lines and commands.
    path = Path(os.path.abspath(path))  # noqa: PTH100 - normalised: "../k" is a path to take
    check_path(str(path), "key path")
    public = create_key(path)
    key = parse_public_key(public.read_text(), str(public))
    print(f"wrote {path} (private, 0600) and {public} (0644)")
    print(f"{key.line}")
    print(f"fingerprint: {key.fingerprint}")
    print(f"next, for the builder: offload setup builder --key @{public}")
    return 0


def _public_key(given: list[str] | None) -> PublicKey:
    if given is not None and len(given) > 1:
        raise ConfigError(
            f"--key given {len(given)} times: setup builder authorizes one client key a run",
            hint="run it once for each client's key: each run keeps the other keys' lines",
        )
    text = None if given is None else given[0]
    if text is None:
        default = default_key_path(os.geteuid(), os.environ)
        text = f"@{default}.pub"
        if not Path(text[1:]).exists():
            raise ConfigError(
                f"no --key given and {default}.pub does not exist",
                hint="give the client's key: --key @FILE.pub (made by `offload setup key`)",
            )
    if text.startswith("@"):
        # Bounded, as every file a user names: `--key @/dev/zero` hung the command.
        data = read_user_file(
            text[1:], "public key file", hint_big="give the key's .pub file: one line", named=True
        )
        if data is None:
            raise ConfigError(f"cannot read {text[1:]}: no such file", hint="check --key")
        try:
            return parse_public_key(data.decode(), text[1:])
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"{text[1:]}: not UTF-8 text ({exc.reason})",
                hint="give the key's .pub file (ssh-keygen -y -f KEY prints it)",
            ) from None
    return parse_public_key(text, "--key")


def _emit(files: list[tuple[str, str]], places: dict[str, str], write: Path | None) -> None:
    if write is None:
        print(render(files, places), end="")
        return
    for done in write_files(write, files):
        where = f": {places[done.path.name]}" if done.path.name in places else ""
        print(f"{'wrote' if done.new else 'unchanged'} {done.path}{where}")


def run_builder(args: argparse.Namespace) -> int:
    scheme = "ssh-ng" if args.ssh_ng else "ssh"
    setup = BuilderSetup(args.user, _public_key(args.key), not args.unrestricted, scheme)
    files = builder_files(setup)
    places = {
        files[0][0]: "NixOS",
        files[1][0]: "hosts without NixOS: run as root on the builder",
    }
    _emit(files, places, args.write)
    return 0


def _check_client_args(args: argparse.Namespace) -> None:
    """What setup client can refuse before it probes a builder: the user name its lines and
    ssh config name, and a --write place that is no directory."""
    # Any account name ssh and a store URI can carry (not only the ones setup builder makes).
    problem = ssh_name_problem(args.user) or (
        "holds '@', ':' or '/', which a store URI reads as its own" if set("@:/") & set(args.user)
        else None
    )  # fmt: skip
    if problem is not None:
        raise ConfigError(
            f"--user '{shown(args.user)}': the name {problem}",
            hint="give the user the builder's key logs in as (setup builder's --user: nixremote)",
        )
    if args.write is not None and args.write.exists() and not args.write.is_dir():
        raise ConfigError(
            f"--write {args.write}: not a directory",
            hint="give a directory for the files (it is made when missing)",
        )


def _say_host_blocks_shared(builders: Sequence[Builder], user: str) -> None:
    """A builder given no NAME has its host as its ssh alias: the Host block written for it
    applies to every `ssh HOST` of the account whose ssh config it goes into, logging in as
    ``user`` with the dedicated key (one that runs only Nix's program, as setup builder makes
    it): said, with the way to keep the two apart."""
    shared = [b.target.name for b in builders if b.target.name == b.target.host]
    if shared:
        print(
            f"note: the ssh config's Host {' '.join(shared)} applies to every ssh to"
            f" {'it' if len(shared) == 1 else 'them'} by the account whose config it goes into"
            f" (as {user}, with the key it names); give NAME=HOST to keep your own logins apart",
            file=sys.stderr,
        )


def run_client(args: argparse.Namespace) -> int:
    _check_client_args(args)
    identity = args.identity or default_key_path(os.geteuid(), os.environ)
    identity = Path(os.path.abspath(identity))  # noqa: PTH100 - normalised, as setup key's
    check_path(str(identity), "identity file")
    if not identity.exists():
        raise ConfigError(
            f"the identity file {identity} does not exist",
            hint="make one with `offload setup key`, or give --identity PATH",
        )
    if not identity.is_file():
        raise ConfigError(
            f"the identity file {identity} is not a file",
            hint="give --identity the private key file (made by `offload setup key`)",
        )
    if not 0 < args.timeout <= 600:
        raise ConfigError(
            "--timeout must be more than 0 and at most 600 seconds",
            hint="seconds to wait for each builder's answer, e.g. --timeout 10",
        )
    targets = parse_targets(args.targets)
    overrides = Overrides(
        systems=tuple(s for group in args.system for s in group),
        features=None if args.feature is None else tuple(f for g in args.feature for f in g),
        jobs=args.jobs,
        speed=args.speed,
    )
    options = DoctorOptions(timeout=args.timeout, env=dict(os.environ))
    login = Login(args.user, str(identity), "ssh-ng" if args.ssh_ng else "ssh")
    probed = interrupts.run(probe_all(targets, login, overrides, options))
    for outcome in probed:
        where = f"{outcome.target.host}:{outcome.target.port}"
        if outcome.builder is None:
            print(f"error: {outcome.target.name} ({where}): {outcome.error}", file=sys.stderr)
            if outcome.hint:
                print(f"hint: {outcome.hint}", file=sys.stderr)
            continue
        key = outcome.builder.host_key
        print(
            f"{outcome.target.name}: {where} has host key {key.kind} {key.fingerprint}, "
            "trusted on first use: compare it with `ssh-keygen -lf "
            "/etc/ssh/ssh_host_ed25519_key.pub` on the builder",
            file=sys.stderr,
        )
    builders = tuple(o.builder for o in probed if o.builder is not None)
    if 0 < len(builders) < len(probed):
        # Files for some of the builders asked for would be refused as taken once the others
        # are mended and the command is run again: a directory gets all of them or none, and
        # so does stdout (`> machines` kept a config without them, exit 1 or not).
        failed = len(probed) - len(builders)
        where = "printed" if args.write is None else f"written to {args.write}"
        raise ConfigError(
            f"nothing {where}: {failed} of {len(probed)} builders could not be set up",
            hint="mend them as said above and run it again, or leave them out",
        )
    if builders:
        files = client_files(ClientSetup(login.user, login.identity, builders, login.scheme))
        _emit(files, where_they_go([name for name, _ in files]), args.write)
        _say_host_blocks_shared(builders, login.user)
    return 0 if len(builders) == len(probed) else 1
