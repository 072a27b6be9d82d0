from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from offload.errors import StoreError
from offload.store.drv import (
    Derivation,
    DerivationOutput,
    derivation_to_json,
    drv_bytes,
    parse_derivation,
    print_derivation,
    read_derivation,
)
from tests.helpers.derivations import derivations, mutated, mutations

FIXTURES = Path(__file__).parent.parent / "fixtures" / "drv"
DRV_FIXTURES = sorted(FIXTURES.glob("*.drv"))
STORE = Path("/nix/store")


def fixture(name: str) -> Derivation:
    return read_derivation(FIXTURES / f"{name}.drv")


def recorded_json(drv_file: Path) -> tuple[str, object, bytes]:
    # nix show-derivation copies env bytes verbatim, so the file need not be valid UTF-8.
    raw = drv_file.with_suffix(".json").read_bytes()
    ((drv_path, value),) = json.loads(raw.decode("utf-8", "surrogateescape")).items()
    return drv_path, value, raw


def test_fixtures_are_present() -> None:
    names = {p.stem for p in DRV_FIXTURES}
    assert {
        "consumer-2.12.1",
        "deferred",
        "fixed-output",
        "fixed-recursive",
        "floating-ca",
        "floating-flat",
        "impure",
        "multi-out-1.0",
        "raw-bytes",
        "structured-attrs",
        "weird-env",
    } <= names


@pytest.mark.parametrize("drv_file", DRV_FIXTURES, ids=lambda p: p.stem)
def test_fixture_round_trips_byte_exactly(drv_file: Path) -> None:
    data = drv_file.read_bytes()
    drv = parse_derivation(data)
    assert drv_bytes(drv) == data
    assert print_derivation(drv).encode("utf-8", "surrogateescape") == data
    assert parse_derivation(data.decode("utf-8", "surrogateescape")) == drv
    assert read_derivation(drv_file) == drv
    assert read_derivation(str(drv_file)) == drv


@pytest.mark.parametrize("drv_file", DRV_FIXTURES, ids=lambda p: p.stem)
def test_fixture_json_matches_nix_show_derivation(drv_file: Path) -> None:
    drv_path, value, raw = recorded_json(drv_file)
    drv = read_derivation(drv_file)
    assert derivation_to_json(drv) == value
    # Key order too: pretty-printed like nlohmann's dump(2), it reproduces Nix's output exactly.
    text = json.dumps({drv_path: derivation_to_json(drv)}, indent=2, ensure_ascii=False)
    assert text.encode("utf-8", "surrogateescape") + b"\n" == raw
    assert drv_path.endswith(f"-{drv_file.stem}.drv")


def test_multiple_outputs_and_input_drvs() -> None:
    multi = fixture("multi-out-1.0")
    assert list(multi.outputs) == ["dev", "out"]
    assert multi.outputs["dev"].path.endswith("-multi-out-1.0-dev")
    assert multi.output_paths == {name: o.path for name, o in multi.outputs.items()}
    assert {o.kind for o in multi.outputs.values()} == {"input-addressed"}

    consumer = fixture("consumer-2.12.1")
    assert consumer.name == "consumer-2.12.1"
    assert [Path(p).name[33:] for p in consumer.input_drvs] == [
        "multi-out-1.0.drv",
        "fixed-output.drv",
    ]  # sorted by path, i.e. by hash
    multi_drv = next(p for p in consumer.input_drvs if p.endswith("multi-out-1.0.drv"))
    assert consumer.input_drvs[multi_drv] == ("dev", "out")
    assert len(consumer.input_srcs) == 1
    assert consumer.input_srcs[0].endswith("-input-script.sh")
    assert consumer.platform == "x86_64-linux"
    assert consumer.builder == "/bin/sh"
    assert consumer.args[2] == 'second arg with "quote"'
    assert consumer.required_features == frozenset({"kvm", "big-parallel"})
    assert consumer.prefer_local_build
    assert not multi.prefer_local_build
    assert multi.required_features == frozenset()


def test_output_kinds() -> None:
    fixed = fixture("fixed-output").outputs["out"]
    assert (fixed.kind, fixed.hash_algo) == ("fixed", "sha256")
    assert fixed.hash == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    recursive = fixture("fixed-recursive").outputs["out"]
    assert (recursive.kind, recursive.hash_algo) == ("fixed", "r:sha256")
    floating = fixture("floating-ca").outputs["out"]
    assert floating == DerivationOutput(path="", hash_algo="r:sha256", hash="")
    assert floating.kind == "floating"
    assert fixture("floating-flat").outputs["out"].kind == "floating"
    assert fixture("deferred").outputs["out"] == DerivationOutput("", "", "")
    assert fixture("deferred").outputs["out"].kind == "deferred"
    assert fixture("deferred").output_paths == {}
    impure = fixture("impure").outputs["out"]
    assert (impure.kind, impure.hash) == ("impure", "impure")


def test_escaped_env_values_decode() -> None:
    weird = fixture("weird-env")
    assert weird.env["weird"] == 'quote" backslash\\ tab\t nl\n cr\r end'
    assert weird.env["unicode"] == "h\u00e9llo w\u00f6rld \u2713 \u65e5\u672c\u8a9e \U0001f389"
    assert weird.env["control"] == "bell\x07 esc\x1b del\x7f"
    assert weird.env['key with "quote"'] == "v"
    assert weird.env["empty"] == ""
    assert weird.args == ("-c", 'echo "tab\there" > $out')
    assert weird.input_srcs[0].endswith("-fixtures.nix")


def test_raw_bytes_survive() -> None:
    raw = fixture("raw-bytes").env["raw"]
    assert raw.encode("utf-8", "surrogateescape") == b"raw\xff\xfe bytes \xc3( end"


def test_structured_attrs() -> None:
    drv = fixture("structured-attrs")
    assert "__json" in drv.env
    assert "requiredSystemFeatures" not in drv.env
    assert drv.name == "structured-attrs"
    assert drv.required_features == frozenset({"nixos-test"})
    assert drv.prefer_local_build
    assert list(drv.outputs) == ["lib", "out"]


def _with_env(env: dict[str, str]) -> Derivation:
    return Derivation.create(
        outputs={"out": DerivationOutput("/nix/store/x-a", "", "")},
        input_drvs={},
        input_srcs=[],
        platform="x86_64-linux",
        builder="/bin/sh",
        args=[],
        env=env,
    )


@pytest.mark.parametrize(
    ("json_text", "attribute", "reason"),
    [
        ("{not json", "required_features", "not valid JSON"),
        ("[1]", "required_features", "not a JSON object"),
        ('{"requiredSystemFeatures": "kvm"}', "required_features", "list of strings"),
        ('{"requiredSystemFeatures": [1]}', "required_features", "list of strings"),
        ('{"preferLocalBuild": "1"}', "prefer_local_build", "must be a boolean"),
        ('{"allowSubstitutes": 0}', "allow_substitutes", "must be a boolean"),
    ],
)
def test_bad_structured_attrs(json_text: str, attribute: str, reason: str) -> None:
    drv = _with_env({"__json": json_text})
    with pytest.raises(StoreError, match=reason):
        getattr(drv, attribute)


def test_plain_env_features() -> None:
    drv = _with_env(
        {"requiredSystemFeatures": " kvm\tbig-parallel\n kvm ", "preferLocalBuild": "true"}
    )
    assert drv.required_features == frozenset({"kvm", "big-parallel"})
    assert not drv.prefer_local_build  # Nix only accepts "1" from a plain env
    # Nix splits on space, tab, LF and CR only.
    odd = _with_env({"requiredSystemFeatures": "a\u00a0b\x0bc d"})
    assert odd.required_features == frozenset({"a\u00a0b\x0bc", "d"})
    deep = _with_env({"__json": "[" * 100_000})
    assert deep.name == ""
    with pytest.raises(StoreError, match="not valid JSON"):
        _ = deep.required_features
    assert _with_env({"__json": '{"name": 3}'}).name == ""
    assert _with_env({}).name == ""


def test_derivations_are_immutable_values() -> None:
    a = fixture("consumer-2.12.1")
    b = read_derivation(FIXTURES / "consumer-2.12.1.drv")
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b, fixture("deferred")}) == 2
    with pytest.raises(TypeError):
        a.env["name"] = "other"  # type: ignore[index]
    with pytest.raises(TypeError):
        a.outputs["x"] = a.outputs["out"]  # type: ignore[index]


def test_printer_escapes_only_builder_args_and_env() -> None:
    drv = Derivation.create(
        outputs={'o"ut': DerivationOutput('/p"\\', 'a"', "h\n")},
        input_drvs={"/d\\.drv": ["z", "a"]},
        input_srcs=["/s\t"],
        platform='p"',
        builder='b"\\\n\r\t',
        args=['a"\\\n\r\t\x01'],
        env={"k\n": 'v"\\\t'},
    )
    assert print_derivation(drv) == (
        'Derive([("o"ut","/p"\\","a"","h\n")],[("/d\\.drv",["a","z"])],["/s\t"],"p"",'
        '"b\\"\\\\\\n\\r\\t",["a\\"\\\\\\n\\r\\t\x01"],[("k\\n","v\\"\\\\\\t")])'
    )


def test_parser_unescapes_like_nix() -> None:
    text = (
        'Derive([("out","/o","","")],[],[],"sys","\\/bin\\/sh",'
        '["\\n\\r\\t\\\\\\"\\q\\\\"],[("k","\\x")])'
    )
    drv = parse_derivation(text)
    assert drv.builder == "/bin/sh"
    assert drv.args == ('\n\r\t\\"q\\',)
    assert drv.env == {"k": "x"}


def test_create_sorts_like_nix() -> None:
    drv = Derivation.create(
        outputs={"out": DerivationOutput("/o", "", ""), "dev": DerivationOutput("/d", "", "")},
        input_drvs={"/b.drv": ["out", "dev", "out"], "/a.drv": ["x"]},
        input_srcs=["/z", "/a", "/z"],
        platform="s",
        builder="b",
        args=["2", "1"],
        env={"\u00e9": "1", "z": "2", "\udcff": "3"},
    )
    assert list(drv.outputs) == ["dev", "out"]
    assert list(drv.input_drvs.items()) == [("/a.drv", ("x",)), ("/b.drv", ("dev", "out"))]
    assert drv.input_srcs == ("/a", "/z")
    assert drv.args == ("2", "1")
    # Byte order: "z" (7a) < "\u00e9" (c3 a9) < raw byte ff.
    assert list(drv.env) == ["z", "\u00e9", "\udcff"]


MINIMAL = 'Derive([("out","/o","","")],[],[],"s","b",[],[])'


@pytest.mark.parametrize(
    ("text", "offset", "expected"),
    [
        ("", 0, "'Derive('"),
        ("Derive(", 7, "'['"),
        ("derive([", 0, "'Derive('"),
        ('Derive([("out","/o","","")],[],[],"s","b",[],[]) ', 48, "the end of the derivation"),
        ('Derive([("out","/o","","")],[],[],"s","b",[],[])\n', 48, "the end of the derivation"),
        ('Derive([("out","/o","",""],[],[],"s","b",[],[])', 25, "')'"),
        ('Derive([("out","/o","","")],[],[],"s","b",[],[]', 47, "')'"),
        ('Derive([("out","/o","","")],[],[],"s","b",[],[', 46, "'('"),
        ('Derive([("out","/o","","")],[],[],"s","b",[],[("k","v', 53, "closing an environment"),
        ('Derive([("out","/o","","")],[],[],"s","b",[],[("k","v\\', 54, "an escaped character"),
        ('Derive([("out","o","","")],[],[],"s","b",[],[])', 15, "an absolute output path"),
        ('Derive([("out","/o","","")],[("a.drv",[])],[],"s","b",[],[])', 30, "absolute path"),
        ('Derive([("out","/o","","")],[],["src"],"s","b",[],[])', 32, "absolute path"),
        ('Derive([("out","/o","","")],[],[],s,"b",[],[])', 34, "opening the platform"),
        (
            'Derive([("out","/o","",""),("out","/p","","")],[],[],"s","b",[],[])',
            27,
            "duplicate 'out'",
        ),
        (
            'Derive([("out","/o","","")],[],[],"s","b",[],[("k","1"),("k","2")])',
            56,
            "duplicate 'k'",
        ),
        (
            'Derive([("out","/o","","")],[("/a",[]),("/a",[])],[],"s","b",[],[])',
            39,
            "duplicate '/a'",
        ),
        ('Derive([("out","/o","","");],[],[],"s","b",[],[])', 26, "']'"),
        ('DrvWithVersion("xp-dyn-drv",[])', 0, "'Derive('"),
    ],
)
def test_malformed_derivations(text: str, offset: int, expected: str) -> None:
    with pytest.raises(StoreError) as info:
        parse_derivation(text)
    message = str(info.value)
    assert f"at byte {offset}:" in message
    assert expected in message
    assert "\n" not in message


def test_minimal_parses() -> None:
    drv = parse_derivation(MINIMAL)
    assert drv.outputs == {"out": DerivationOutput("/o", "", "")}
    assert print_derivation(drv) == MINIMAL


def test_unencodable_text_is_a_store_error() -> None:
    with pytest.raises(StoreError, match="cannot be encoded"):
        parse_derivation('Derive([("\ud800')


def test_read_derivation_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.drv"
    with pytest.raises(StoreError, match=r"missing\.drv") as info:
        read_derivation(missing)
    assert isinstance(info.value.__cause__, OSError)
    with pytest.raises(StoreError, match="cannot read derivation"):
        read_derivation(tmp_path)  # a directory
    bad = tmp_path / "bad.drv"
    bad.write_bytes(b"Derive([)")
    with pytest.raises(StoreError, match=r"bad\.drv: malformed derivation at byte 8"):
        read_derivation(bad)


# --- property tests ------------------------------------------------------------------------------

FIXTURE_BYTES = [p.read_bytes() for p in DRV_FIXTURES]
ATERM_ALPHABET = st.sampled_from([*'Derive([]),"\\/abnrt\x00\xff\u00e9', "Derive("])


def _parse_or_store_error(data: str | bytes) -> None:
    try:
        drv = parse_derivation(data)
    except StoreError:
        return
    # Whatever parses must print to something that parses to the same value.
    assert parse_derivation(drv_bytes(drv)) == drv


@given(st.text())
def test_arbitrary_text_only_raises_store_error(text: str) -> None:
    _parse_or_store_error(text)


@given(st.binary())
def test_arbitrary_bytes_only_raise_store_error(data: bytes) -> None:
    _parse_or_store_error(data)


@given(st.lists(ATERM_ALPHABET, max_size=60).map("".join))
def test_aterm_like_text_only_raises_store_error(text: str) -> None:
    _parse_or_store_error("Derive(" + text)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(FIXTURE_BYTES), mutations)
def test_mutated_fixtures_only_raise_store_error(
    data: bytes, changes: list[tuple[int, int, bool]]
) -> None:
    _parse_or_store_error(mutated(data, changes))


@given(st.sampled_from(FIXTURE_BYTES), st.integers(min_value=0))
def test_truncated_fixtures_raise_store_error(data: bytes, cut: int) -> None:
    with pytest.raises(StoreError, match="malformed derivation at byte"):
        parse_derivation(data[: cut % len(data)])


@given(derivations)
def test_print_parse_round_trip(drv: Derivation) -> None:
    text = print_derivation(drv)
    parsed = parse_derivation(text)
    assert parsed == drv
    assert print_derivation(parsed) == text
    assert parse_derivation(drv_bytes(drv)) == drv
    assert json.loads(json.dumps(derivation_to_json(drv)))["args"] == list(drv.args)


# --- every derivation in the local store ---------------------------------------------------------

INSTANTIATE = """
let mk = n: derivation {
  name = "offload-test-${n}"; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "echo \\"${n}\\"\\t> $out" ]; outputs = [ "out" "doc" ];
};
in { a = mk "a"; b = derivation {
  name = "offload-test-b"; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "cat ${(mk "a").doc} > $out" ]; note = "line\\nline"; };
}
"""


def test_store_derivations_round_trip(tmp_path: Path) -> None:
    nix_instantiate = shutil.which("nix-instantiate")
    assert nix_instantiate is not None
    expr = tmp_path / "drvs.nix"
    expr.write_text(INSTANTIATE)
    created = subprocess.run(
        [nix_instantiate, str(expr)], check=True, capture_output=True, text=True
    ).stdout.split()
    assert len(created) == 2
    paths = sorted(STORE.glob("*.drv"))[:300]
    for drv_path in {*map(Path, created), *paths}:
        data = drv_path.read_bytes()
        assert drv_bytes(parse_derivation(data)) == data, drv_path
    b_drv = read_derivation(next(p for p in created if p.endswith("-offload-test-b.drv")))
    assert b_drv.env["note"] == "line\nline"
    assert list(b_drv.input_drvs.values()) == [("doc",)]


@pytest.mark.parametrize(
    ("env", "allowed"),
    [
        ({}, True),  # Nix's default
        ({"allowSubstitutes": "1"}, True),
        ({"allowSubstitutes": ""}, False),  # `allowSubstitutes = false` in a plain env
        ({"allowSubstitutes": "true"}, False),  # Nix reads only "1" as true there
        ({"__json": '{"allowSubstitutes": false}'}, False),
        ({"__json": '{"allowSubstitutes": true}'}, True),
        ({"__json": "{}"}, True),
    ],
)
def test_allow_substitutes_is_read_as_nix_reads_it(env: dict[str, str], allowed: bool) -> None:
    # Nix's getBoolAttr: a plain env's "1" is true and anything else false; structured attrs
    # a JSON boolean; unset, true.
    assert _with_env(env).allow_substitutes is allowed
