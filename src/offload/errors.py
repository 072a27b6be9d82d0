"""The exceptions offload raises.

Every error a user can cause or meet is an ``OffloadError`` carrying a one-line message and,
where there is a likely fix, a hint. The CLI prints ``error: <message>`` plus the hint and exits
non-zero; tracebacks only under ``offload --traceback``.

    OffloadError
    ├── ConfigError          bad machines file, offload.toml, command-line value
    ├── StoreError           invalid store path, malformed .drv or NAR, local store refused
    │   └── HookFailed       Nix's post-build-hook failed here: the run stops, as nix-build's
    ├── TransportError       a process could not be started or died (ssh, nix-store)
    │   ├── SshError         ssh could not connect or authenticate to a builder
    │   └── NotStarted       a program could not be started on this host (EMFILE, no ssh)
    ├── ProtocolError        the peer broke the serve protocol (bad magic, truncated stream)
    │   ├── PeerSilent       the stream ended because its peer stopped answering
    │   └── RemoteError      the remote nix-store reported ``error: ...`` and exited
    │       └── DaemonError  a nix-daemon answered a request with its error frame
    ├── NixError             a Nix command failed; carries Nix's own words whole (evaluation)
    ├── BuildFailed          a derivation failed to build; carries its status and log tail
    ├── FleetError           the local test fleet could not be started or stopped
    └── SchedulerError       no machine can build a derivation, or the run cannot go on
"""

from __future__ import annotations

from offload.names import LOCAL
from offload.typing_compat import override

__all__ = [
    "BuildFailed",
    "ConfigError",
    "DaemonError",
    "FleetError",
    "HookFailed",
    "NixError",
    "OffloadError",
    "PeerSilent",
    "ProtocolError",
    "RemoteError",
    "SchedulerError",
    "SshError",
    "StoreError",
    "TransportError",
    "Unschedulable",
]


class OffloadError(Exception):
    """Base of every error offload reports to a user."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    @override
    def __str__(self) -> str:
        return self.message


class ConfigError(OffloadError):
    """A configuration input (file, setting or option) is wrong."""


class StoreError(OffloadError):
    """A store path, derivation or archive is malformed, or the local store refused it.

    ``peer`` "local": this host's own store failed (a derivation file it could not read), as
    ``TransportError.peer`` says; no builder is to blame then."""

    peer: str | None = None


class HookFailed(StoreError):
    """Nix's ``post-build-hook`` failed on this host after a build (``offload.build.post_hook``):
    the build is failed and the run stops, with ``-k`` too, as nix-build stops there."""

    peer = LOCAL


class TransportError(OffloadError):
    """A child process (ssh, nix-store) could not be started or ended unexpectedly.

    ``peer``, when set, names the store whose process it was ("local": this host's own
    ``nix-store --serve``), as ``ProtocolError.peer`` does: no builder is to blame then.
    """

    peer: str | None = None


class SshError(TransportError):
    """ssh could not reach or authenticate to a builder."""


class NotStarted(TransportError):
    """A program could not be started on this host (``offload.spawn_errors``): ``peer`` is
    ``"local"``, the fault neither a builder's nor a derivation's."""


class ProtocolError(OffloadError):
    """The peer does not speak the expected protocol, or the stream ended early.

    ``peer`` names the store whose connection failed (a builder, or "local"), so a copy between
    two stores can blame the right one.
    """

    peer: str | None = None


class PeerSilent(ProtocolError):
    """A stream ended after its peer had sent nothing for ``seconds``, and the transport takes
    that for the peer having stopped answering (``why``: how it knows, and the likely causes):
    what the transport's reader raises in place of the end of the stream. A protocol client
    says it with what it was doing (``during``)."""

    def __init__(self, seconds: float, why: str) -> None:
        super().__init__(f"no answer for {seconds:.0f} s, and the connection ended ({why})")
        self.seconds = seconds
        self.why = why

    def during(self, name: str, what: str) -> ProtocolError:
        error = ProtocolError(
            f"{name} did not answer for {self.seconds:.0f} s during {what}, and its "
            f"connection ended ({self.why})"
        )
        error.peer = name
        return error


class RemoteError(ProtocolError):
    """The remote nix-store printed ``error: ...`` and exited; ``message`` is its text, or
    offload's rewording of it with ``said`` its own words."""

    said: str | None = None


class DaemonError(RemoteError):
    """A nix-daemon (worker protocol) refused a request; ``message`` carries Nix's own text.

    Unlike a ``RemoteError`` of the serve protocol, the daemon says so in-band and keeps the
    connection in step, as Nix's own client assumes.
    """


class NixError(OffloadError):
    """A Nix command failed and said why: ``text`` is its stderr, printed as it is (the
    position, the code frame, "Did you mean"), as nix-build would print it, or "" when it was
    shown as it came (nothing more is printed then); ``message`` is its first line, for
    one-line uses (``--json``, tests)."""

    def __init__(self, message: str, *, text: str, status: int = 1) -> None:
        super().__init__(message)
        self.text = text
        self.status = status


class BuildFailed(OffloadError):
    """A derivation failed to build.

    ``status`` is Nix's BuildResult status code (3 = PermanentFailure, 8 = TimedOut, ...);
    ``log_tail`` holds the last lines of the build log when they are known; ``exit_code``,
    the command's exit status as Nix would give it for all of a run's failures (None: from
    ``status`` alone).
    """

    def __init__(
        self,
        message: str,
        *,
        drv_path: str,
        status: int,
        log_tail: tuple[str, ...] = (),
        hint: str | None = None,
        exit_code: int | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.drv_path = drv_path
        self.status = status
        self.log_tail = log_tail
        self.exit_code = exit_code


class FleetError(OffloadError):
    """The local fleet could not be brought up, inspected or stopped."""


class SchedulerError(OffloadError):
    """The scheduler cannot place some work, or the run cannot continue."""


class Unschedulable(SchedulerError):
    """A job no machine of the pool can build (its system or features), found before the run.
    ``needs``: the first such job's system and required features, for who can say which
    machine left out of the pool (-j 0, --on, --exclude) would have built it."""

    needs: tuple[str, frozenset[str]] | None = None
