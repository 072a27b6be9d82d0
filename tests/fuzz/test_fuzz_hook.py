"""The hook's wire: what Nix writes to the hook's stdin, and a hook process's hello.

Contracts (``hook.wire``, ``hook.handover``): ``read_settings``, ``read_request`` and
``read_accepted`` return their record (``read_request``: ``None`` at a clean end) or raise a
one-line ``ProtocolError``. The coordinator's ``parse_hello`` returns a ``Hello`` or raises
``ValueError`` (the connection is then dropped without a word); memory follows the bytes sent,
whatever lengths they claim.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from offload.errors import ProtocolError
from offload.hook.client import encode_hello
from offload.hook.handover import Hello, parse_hello
from offload.hook.wire import TryRequest, read_accepted, read_request, read_settings
from offload.protocol.wire import encode_int, encode_str, encode_strs
from tests.fuzz.support import FUZZ, Stream, bounded_memory, drive, outcome

DRV = "/nix/store/" + "a" * 32 + "-hello-2.12.drv"
PREFIXES = [
    b"",
    encode_int(1) + encode_str("builders") + encode_str(""),
    encode_int(0),
    encode_str("try") + encode_int(1) + encode_str("x86_64-linux"),
    encode_str("try") + encode_int(1) + encode_str("x86_64-linux") + encode_str(DRV),
    encode_strs([DRV]),
    encode_int(2**63),
]
stdin = st.tuples(st.sampled_from(PREFIXES), st.binary(max_size=256)).map(b"".join)


async def _conversation(stream: Stream) -> object:
    settings = await read_settings(stream)
    requests = []
    while (request := await read_request(stream)) is not None:
        requests.append(request)
        if request.am_willing:
            return settings, requests, await read_accepted(stream)
    return settings, requests


@FUZZ
@given(stdin, stdin)
def test_nix_to_hook(first: bytes, rest: bytes) -> None:
    data = first + rest
    with bounded_memory(len(data)):
        result = outcome(lambda: drive(_conversation(Stream(data))), ProtocolError)
    if isinstance(result, tuple):
        for request in result[1]:
            assert isinstance(request, TryRequest)
            assert request.pname is not None


text_lists = st.lists(st.text(max_size=20), max_size=5)
envs = st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=5)


def _damaged_hello(  # noqa: PLR0917 - the arguments st.builds draws
    argv: list[str],
    env: dict[str, str],
    parent: int,
    fds: list[int],
    at: int,
    cut: int,
    insert: bytes,
) -> bytes:
    body = encode_hello(argv, env, parent, fds)
    return body[:at] + insert + body[at + cut :]


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=300),
        st.builds(
            _damaged_hello,
            text_lists,
            envs,
            st.integers(0, 2**31),
            st.lists(st.sampled_from([0, 2, 4]), max_size=3, unique=True),
            st.integers(0, 400),
            st.integers(0, 4),
            st.binary(max_size=6),
        ),
    ),
    st.integers(0, 3),
)
def test_hello(body: bytes, sent: int) -> None:
    received = list(range(100, 100 + sent))
    with bounded_memory(len(body)):
        try:
            hello = parse_hello(body, received)
        except ValueError:
            return
    assert isinstance(hello, Hello)
    assert sorted(hello.fds.values()) == received


@FUZZ
@given(text_lists, envs, st.integers(0, 2**31), st.lists(st.sampled_from([0, 2, 4]), unique=True))
def test_hello_round_trip(
    argv: list[str], env: dict[str, str], parent: int, fds: list[int]
) -> None:
    argv = [a.replace("\0", "") for a in argv]
    env = {k.replace("\0", "").replace("=", ""): v.replace("\0", "") for k, v in env.items()}
    received = [10 + i for i in range(len(fds))]
    hello = parse_hello(encode_hello(argv, env, parent, fds), received)
    assert hello == Hello(argv, env, parent, dict(zip(fds, received, strict=True)))


def test_an_unknown_request_is_said_on_one_line() -> None:
    result = outcome(lambda: drive(read_request(Stream(encode_str("tr\ny")))), ProtocolError)
    assert isinstance(result, ProtocolError)
    assert result.message == "expected Nix's next request ('try'), got 'tr\\ny'"
    assert result.hint is not None
