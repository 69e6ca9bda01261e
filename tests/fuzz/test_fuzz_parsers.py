"""Every on-disk format quantpipe reads, fuzzed: any bytes or any damage to a valid file
either parse or are refused with one QuantpipeError line naming the file; never another
exception, a hang or a giant allocation (tests/fuzz/strategies.py has the cases).

QUANTPIPE_FUZZ_EXAMPLES sets the cases per format; the default, 500, keeps this file under
a minute on a shared 2-core machine (about 20 s alone on it, 45 s beside other work).
tests/bench/bench_fuzz.py runs the same cases at any budget.
Below the fuzz tests, each crash the fuzzing found, as the smallest case that showed it.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from quantpipe.errors import CorruptArtifactError, QuantpipeError
from tests.fuzz.strategies import (
    FORMATS,
    address_space_cap,
    btc_seeds,
    calib_seed,
    check_refusal,
    engine_meta_json,
    frame,
    pbtxt_seeds,
    qpmix_seeds,
    run_case,
)

EXAMPLES = int(os.environ.get("QUANTPIPE_FUZZ_EXAMPLES", "500"))


def _fuzz(name: str) -> Any:
    """The fuzz test of one format: EXAMPLES cases, the same ones on every run."""

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(case=FORMATS[name][0])
    def test(case: Any) -> None:
        run_case(name, case)

    test.__name__ = f"test_fuzz_{name.replace('-', '_')}"
    test.__doc__ = f"{name}: any case parses or is refused in one line naming the file."
    return test


test_fuzz_btc = _fuzz("btc")
test_fuzz_qpmix = _fuzz("qpmix")
test_fuzz_calib_json = _fuzz("calib-json")
test_fuzz_calib_trtcache = _fuzz("calib-trtcache")
test_fuzz_engine_json = _fuzz("engine-json")
test_fuzz_triton_pbtxt = _fuzz("triton-pbtxt")
test_fuzz_triton_model_config = _fuzz("triton-model-config")


def test_every_format_is_fuzzed() -> None:
    assert {n for n in FORMATS} == {
        n.removeprefix("test_fuzz_").replace("_", "-")
        for n in globals()
        if n.startswith("test_fuzz_")
    }


def test_the_valid_files_the_mutations_start_from_parse() -> None:
    """Mutating files that are refused anyway would test nothing past the first check."""
    _, table, cache = calib_seed()
    cases = {
        "btc": btc_seeds(),
        "qpmix": qpmix_seeds(),
        "calib-json": [table],
        "calib-trtcache": [cache],
        "engine-json": [json.dumps(engine_meta_json()).encode()],
        "triton-pbtxt": pbtxt_seeds(),
    }
    for name, seeds in cases.items():
        for seed in seeds:
            assert run_case(name, seed), name


def test_a_refusal_that_is_not_one_line_fails_the_oracle() -> None:
    with pytest.raises(AssertionError, match="not one line"):
        check_refusal("btc", QuantpipeError("quantpipe-fuzzcase/x: two\nlines"))
    with pytest.raises(AssertionError, match="does not name the file"):
        check_refusal("btc", CorruptArtifactError("damaged"))


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
def test_a_giant_allocation_during_a_parse_fails_instead_of_passing() -> None:
    """run_case's address-space cap: what turns "a declared size allocated" into a crash."""
    import numpy as np

    with address_space_cap(), pytest.raises(MemoryError):
        np.ones(8 << 30, dtype=np.uint8)
    np.ones(64 << 20, dtype=np.uint8)  # and the cap is gone afterwards


def _refused(name: str, case: Any, match: str) -> None:
    """`case` is refused with a QuantpipeError matching `match`, one line naming the file."""
    with pytest.raises(QuantpipeError, match=match) as info:
        FORMATS[name][1](case)
    check_refusal(name, info.value)


# --- the crashes found, smallest cases ---------------------------------------------------

DEEP = b"[" * 100_000 + b"]" * 100_000  # valid JSON, nested past the recursion limit


def _btc_raw(shape: tuple[int, ...]) -> bytes:
    """A container of one zero-size float32 tensor of `shape`: every CRC right."""
    from quantpipe.btc.container import MAGIC, VERSION

    entry = struct.pack("<H", 1) + b"w" + struct.pack("<BBB", 2, 1, len(shape))
    entry += b"".join(struct.pack("<Q", d) for d in shape) + struct.pack("<I", 0)
    return frame(MAGIC, VERSION, 1, entry, b"{}", b"")


def _qpmix_raw(shape: tuple[int, ...]) -> bytes:
    from quantpipe.mixed.packed import MAGIC, VERSION

    entry = struct.pack("<H", 1) + b"w" + struct.pack("<BBBB", 2, 0, 0, len(shape))
    entry += struct.pack(f"<{len(shape)}II", *shape, 0)
    return frame(MAGIC, VERSION, 1, entry, b"{}", b"")


@pytest.mark.parametrize("shape", [(0, 2**63), (0, 2**40, 2**40)])
def test_btc_zero_size_tensor_with_impossible_dimensions(shape: tuple[int, ...]) -> None:
    """Was ValueError from numpy's reshape (maximum dimension exceeded / array too big)."""
    _refused("btc", _btc_raw(shape), "which no array can have")


def test_btc_a_zero_size_tensor_numpy_can_hold_still_loads() -> None:
    assert run_case("btc", _btc_raw((0, 2**20, 7)))


def test_qpmix_zero_size_tensor_with_impossible_dimensions() -> None:
    """Was ValueError from numpy's reshape (array too big)."""
    _refused("qpmix", _qpmix_raw((0, 2**32 - 1, 2**32 - 1)), "which no array can have")


@pytest.mark.parametrize("name", ["btc", "qpmix"])
def test_framed_metadata_nested_too_deep(name: str) -> None:
    """Was RecursionError from json.loads."""
    from quantpipe.btc import container
    from quantpipe.mixed import packed

    module = container if name == "btc" else packed
    data = frame(module.MAGIC, module.VERSION, 0, b"", DEEP, b"")
    _refused(name, data, "metadata is not valid UTF-8 JSON")


def _calib_json(**fields: str) -> bytes:
    """The valid table with `fields` set to raw JSON text (literals json.dumps never writes)."""
    doc = json.loads(calib_seed()[1])
    doc.update({k: f"@{k}@" for k in fields})
    text = json.dumps(doc)
    for k, literal in fields.items():
        text = text.replace(f'"@{k}@"', literal)
    return text.encode()


@pytest.mark.parametrize(
    ("case", "match"),
    [
        (DEEP, "nesting too deep"),  # was RecursionError
        (_calib_json(key="9" * 5000), "an integer too long"),  # was ValueError (digit limit)
        (_calib_json(amax='{"x": 1' + "0" * 400 + "}"), "beyond the float range"),  # OverflowError
    ],
    ids=["deep", "long-integer", "integer-amax-past-float"],
)
def test_calib_json_crashes(case: bytes, match: str) -> None:
    _refused("calib-json", case, match)


@pytest.mark.parametrize(
    ("field", "match"),
    [("key", r"holds key 'a\\nb'"), ("model_sha256", r"another model \(sha256 'a\\nb'")],
)
def test_calib_json_line_breaks_in_recorded_strings_stay_on_one_line(
    field: str, match: str
) -> None:
    """Was a two-line refusal: the key and model checks printed the file's strings raw."""
    _refused("calib-json", _calib_json(**{field: '"a\\nb"'}), match)


@pytest.mark.parametrize("digits", ["00 11 22", "ab cd ef"])
def test_trt_cache_hex_that_fromhex_reads_but_is_not_8_digits(digits: str) -> None:
    """Was struct.error: bytes.fromhex skips the spaces and gives 3 bytes, not 4."""
    _refused("calib-trtcache", f"TRT-1-MinMaxCalibration\nx: {digits}\n".encode(), "8 hex digits")


def test_engine_json_nested_too_deep() -> None:
    """Was RecursionError from json.loads."""
    _refused("engine-json", DEEP, "nested too deeply")


def test_engine_json_of_the_wrong_form_names_the_file() -> None:
    """Was refused without naming the file (from_json's message does not know it)."""
    _refused("engine-json", b"[]", "is not valid engine metadata: a recorded EngineMeta")


def _engine_json(**changes: Any) -> bytes:
    doc = engine_meta_json()
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        node = doc
        for key in parents:
            node = node[key]
        node[leaf] = value
    return json.dumps(doc).encode()


def test_engine_json_with_an_impossible_batch_profile_names_the_file() -> None:
    """Was refused without naming the file (BatchProfile's own check, inside pydantic)."""
    _refused("engine-json", _engine_json(profile__min=0), r"metadata: batch profile 0/8/32")


def test_engine_json_line_breaks_in_recorded_versions_stay_on_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Was a two-line refusal: the host checks printed the recorded strings as they were."""
    case = _engine_json(runtime="tensorrt", runtime_version="10.3\n0")
    _refused("engine-json", case, r"built by tensorrt '10.3\\n0'")
    monkeypatch.setattr("quantpipe.engines.metadata.installed_runtime_version", lambda _: "10")
    case = _engine_json(runtime="tensorrt", runtime_version="10", gpu__name="H100\r\n")
    _refused("engine-json", case, r"built for 'H100\\r\\n \(compute")


def test_triton_pbtxt_parse_error_quoting_a_carriage_return_is_one_line() -> None:
    """Was a two-line refusal: protobuf's message quotes the offending line, \\r and all."""
    _refused("triton-pbtxt", "name: x\ry", "Expected string")


def _config_case(**changes: Any) -> dict[str, Any]:
    case: dict[str, Any] = {
        "name": "m",
        "backend": "onnxruntime-cpu",
        "precision": "fp32",
        "inputs": [("x", "float32", ["batch", 3])],
        "outputs": [("y", "float32", ["batch", 10])],
        "profile": [1, 8, 32],
        "instances": 1,
        "delay": 100,
        "preferred": None,
        "python_backend": False,
    }
    return case | changes


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"preferred": ()}, "one or more sizes"),  # was ValueError: min() of an empty tuple
        ({"profile": [1, 8, 2**31]}, "max_batch_size limit"),  # protobuf's int32 ValueError
        ({"inputs": [("x", "float32", ["batch", 2**63])]}, "which is no size"),  # int64
        ({"inputs": [("x", "float32", ["batch", -5])]}, "which is no size"),  # not a crash:
        # it round-tripped, but Triton reads no dimension below -1
        ({"instances": 2**31}, "--instances must be in"),  # int32 ValueError
        ({"delay": 2**64}, "--max-queue-delay-us in"),  # uint64 ValueError
        ({"preferred": (2**31,)}, "one or more sizes in"),  # int32 ValueError
        ({"inputs": [("\ud800", "float32", ["batch"])]}, "not valid Unicode"),  # UnicodeEncodeError
        ({"name": "\ud800"}, "not valid Unicode"),
        ({"backend": "a\nb"}, "has no Triton backend"),  # was a two-line refusal
        ({"inputs": [("x\ny", "x\ny", ["batch"])]}, "which this Triton configuration"),  # two lines
    ],
    ids=[
        "no-preferred-sizes",
        "max-batch-past-int32",
        "dim-past-int64",
        "dim-below-minus-1",
        "instances-past-int32",
        "delay-past-uint64",
        "preferred-past-int32",
        "surrogate-tensor",
        "surrogate-model-name",
        "backend-with-newline",
        "dtype-with-newline",
    ],
)
def test_triton_model_config_crashes(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(QuantpipeError, match=match) as info:
        FORMATS["triton-model-config"][1](_config_case(**changes))
    check_refusal("triton-model-config", info.value)


def test_triton_model_config_round_trips_the_edges_it_accepts() -> None:
    edges = _config_case(
        name='a"\\\n\x00ü',
        inputs=[('in "1"\n', "float32", ["batch", 2**63 - 1, -1, 0, "seq"])],
        profile=[1, 2**31 - 1, 2**31 - 1],
        instances=2**31 - 1,
        delay=2**64 - 1,
        preferred=(2**31 - 1, 1),
    )
    assert run_case("triton-model-config", edges)
