from __future__ import annotations

import shutil
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from offload.errors import StoreError
from offload.store.path import (
    NIX32_ALPHABET,
    STORE_DIR,
    StorePath,
    is_store_path,
    nix32_decode,
    nix32_encode,
    split_name_version,
)

HASH = "ymbjmsn61i4a464nfrl2yg5r3ch3rpwv"


def test_package_exports() -> None:
    import offload.store

    for name in offload.store.__all__:
        assert getattr(offload.store, name) is not None
    assert offload.store.StorePath is StorePath


# Recorded on this machine with `nix-hash --type <algo> --to-base32 <hex>` (Nix 2.8.0).
NIX32_PAIRS = [
    (
        "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
        "094qif9n4cq4fdg459qzbhg1c6wywawwaaivx0k0x8xhbyx4vwic",
    ),
    (
        "6ee06de890fd0f18e09f284f28ef1d35036fd91cdf8f759ea1d4db2cbcef95b6",
        "1dlmxyy2rnyll6g7b3yz3kcny0rm3ppjhkr8kzh1h3zxj3l6vq3f",
    ),
    ("00" * 32, "0" * 52),
    ("ff" * 32, "1" + "z" * 51),
    (
        "0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20",
        "080z3qfiq6qs34c1f5hm2h9i448h1w70s30b184hh1q60l2060h1",
    ),
    ("0102030405060708090a0b0c0d0e0f1011121314", "2h9i448h1w70s30b184hh1q60l2060h1"),  # sha1
    ("d41d8cd98f00b204e9800998ecf8427e", "3y8bwfr609h3lh9ch0izcqq7fl"),  # md5
    (  # sha512 of "abc"
        (
            "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
            "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
        ),
        "2gs8k559z4rlahfx0y688s49m2vvszylcikrfinm30ly9rak69236nkam5ydvly1ai7xac99vxfc4ii84hawjbk876blyk1jfhkbbyx",
    ),
]


@pytest.mark.parametrize(("hex_digest", "nix32"), NIX32_PAIRS)
def test_nix32_matches_recorded_nix_output(hex_digest: str, nix32: str) -> None:
    assert nix32_encode(bytes.fromhex(hex_digest)) == nix32
    assert nix32_decode(nix32) == bytes.fromhex(hex_digest)


def test_nix32_matches_live_nix_hash() -> None:
    nix_hash = shutil.which("nix-hash")
    assert nix_hash is not None
    digest = bytes(range(200, 232))
    out = subprocess.run(
        [nix_hash, "--type", "sha256", "--to-base32", digest.hex()],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert nix32_encode(digest) == out
    back = subprocess.run(
        [nix_hash, "--type", "sha256", "--to-base16", out],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert back == digest.hex()


@given(st.binary(max_size=80))
def test_nix32_round_trip(data: bytes) -> None:
    encoded = nix32_encode(data)
    assert set(encoded) <= set(NIX32_ALPHABET)
    assert len(encoded) == (0 if not data else (len(data) * 8 - 1) // 5 + 1)
    assert nix32_decode(encoded) == data


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("094qif9n4cq4fdg459qzbhg1c6wywawwaaivx0k0x8xhbyx4vwie", "'e' is not in"),
        ("0" * 51, "encodes no whole bytes"),
        ("0", "encodes no whole bytes"),
        # 52 digits carry 260 bits; a leading digit above 1 does not fit in 32 bytes.
        ("2" + "0" * 51, "does not fit"),
    ],
)
def test_nix32_decode_rejects(text: str, reason: str) -> None:
    with pytest.raises(StoreError, match=reason):
        nix32_decode(text)


def test_store_path_properties() -> None:
    p = StorePath.parse(f"/nix/store/{HASH}-consumer-2.12.1.drv")
    assert p.hash_part == HASH
    assert p.name == "consumer-2.12.1.drv"
    assert p.base_name == f"{HASH}-consumer-2.12.1.drv"
    assert p.is_derivation
    assert str(p) == f"/nix/store/{HASH}-consumer-2.12.1.drv"
    out = StorePath.parse(f"/nix/store/{HASH}-consumer-2.12.1")
    assert not out.is_derivation
    assert out < p  # ordered by full path
    assert StorePath.parse(str(out)) == out


@pytest.mark.parametrize(
    "path",
    [
        f"/nix/store/{HASH}-a",
        f"/nix/store/{HASH}-hello-2.12.1",
        f"/nix/store/{HASH}-A+z-_.?=9",
        f"/nix/store/{HASH}-" + "x" * 211,
        f"/nix/store/{HASH}-a..b",
        f"/nix/store/{HASH}--",
        f"/nix/store/{HASH}-.dotfiles",  # src = ./. in ~/.dotfiles
        f"/nix/store/{HASH}-.zshrc",
        f"/nix/store/{HASH}-...",
    ],
)
def test_valid_store_paths(path: str) -> None:
    assert is_store_path(path)
    assert StorePath.parse(path).path == path


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        (f"/nix/store/{HASH}-hello/bin/hello", "sub-path"),
        (f"/nix/store/{HASH}-hello/", "sub-path"),
        (f"/nix/store/{HASH}-..", "'.' or '..', which Nix 2.20.2 and later refuse"),
        (f"/nix/store/{HASH}-.", "'.' or '..'"),
        (f"/nix/store/{HASH}-.-1.0", "'.' or '..'"),
        (f"/nix/store/{HASH}-..-2", "'.' or '..'"),
        (f"/nix/store/{HASH}-", "name is empty"),
        (f"/nix/store/{HASH}", "no '-<name>'"),
        (f"/nix/store/{HASH}-" + "x" * 212, "212 characters"),
        (f"/nix/store/{HASH}-has space", "' '"),
        (f"/nix/store/{HASH}-caf\u00e9", "'\u00e9'"),
        (f"/nix/store/{HASH}-a:b", "':'"),
        (f"/nix/store/{HASH}-new\nline", "'\\\\n'"),
        ("/nix/store/ymbjmsn61i4a464nfrl2yg5r3ch3rpwe-hello", "not 32 nix32"),  # 'e'
        ("/nix/store/YMBJMSN61I4A464NFRL2YG5R3CH3RPWV-hello", "not 32 nix32"),
        ("/nix/store/ymbjmsn61i4a464nfrl2yg5r3ch3rpw-hello", "not 32 nix32"),  # 31 chars
        ("/nix/store/ymbjmsn61i4a464nfrl2yg5r3ch3rpwvv-hello", "not 32 nix32"),  # 33 chars
        (f"/gnu/store/{HASH}-hello", "not in the store directory /nix/store"),
        (f"nix/store/{HASH}-hello", "not in the store directory"),
        (f"/nix/store/../store/{HASH}-hello", "not 32 nix32"),
        (f"/nix/storex/{HASH}-hello", "not in the store directory"),
        ("/nix/store/", "not 32 nix32"),
        ("", "not in the store directory"),
    ],
)
def test_invalid_store_paths(path: str, reason: str) -> None:
    assert not is_store_path(path)
    with pytest.raises(StoreError, match=reason) as info:
        StorePath.parse(path)
    message = str(info.value)
    assert "\n" not in message
    assert repr(path) in message


def test_other_store_dir() -> None:
    path = f"/tmp/store/{HASH}-x"
    assert not is_store_path(path)
    assert is_store_path(path, "/tmp/store")
    assert is_store_path(path, "/tmp/store/")
    assert StorePath.parse(path, store_dir="/tmp/store").name == "x"
    assert STORE_DIR == "/nix/store"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("hello-2.12.1", ("hello", "2.12.1")),
        ("gcc-wrapper-12.3.0", ("gcc-wrapper", "12.3.0")),
        ("foo", ("foo", "")),
        ("foo-", ("foo-", "")),
        ("foo-bar", ("foo-bar", "")),
        ("python3.11-pytest-8.0", ("python3.11-pytest", "8.0")),
        ("nix-2.8.0-dev", ("nix", "2.8.0-dev")),
        ("a--b", ("a", "-b")),
        ("hello-\u00e9t\u00e9", ("hello", "\u00e9t\u00e9")),  # C isalpha() knows ASCII only
        ("-1", ("", "1")),
    ],
)
def test_split_name_version(name: str, expected: tuple[str, str]) -> None:
    assert split_name_version(name) == expected


def _split_by_hand(name: str) -> tuple[str, str]:
    """DrvName's loop, character by character (the reference the regular expression keeps)."""
    for i, c in enumerate(name[:-1]):
        nxt = name[i + 1]
        if c == "-" and not (nxt.isascii() and nxt.isalpha()):
            return name[:i], name[i + 1 :]
    return name, ""


@given(st.text(st.sampled_from("-aZ0.\n\u00e9_\udce2") | st.characters(), max_size=16))
def test_split_name_version_as_nix_s_loop(name: str) -> None:
    assert split_name_version(name) == _split_by_hand(name)
