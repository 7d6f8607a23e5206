"""Golden bytes of the sample wire format (no I/O)."""

from __future__ import annotations

import io
from typing import Optional

import msgspec
import numpy as np
import pytest
from numpy.typing import NDArray

import atdata_async
from atdata_async._model.sample import bytes_to_ndarray, ndarray_to_bytes
from tests.samples import FeatureSample, RichSample


def test_ndarray_layout_matches_the_45_byte_example():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    raw = ndarray_to_bytes(a)
    assert len(raw) == 45
    assert raw[:21] == bytes.fromhex("033c66340202000000000000000300000000000000")
    assert raw[21:] == a.tobytes()


def test_ndarray_roundtrip_keeps_dtype_shape_and_byte_order():
    for a in [np.zeros((0, 4), np.int16), np.array(3.5),
              np.arange(24, dtype=">i4").reshape(2, 3, 4),
              np.asfortranarray(np.arange(6, dtype=np.uint8).reshape(2, 3))]:
        back = bytes_to_ndarray(ndarray_to_bytes(a))
        assert back.dtype == a.dtype and back.shape == a.shape
        np.testing.assert_array_equal(back, a)
        assert back.flags.writeable


def test_legacy_npy_value_is_read_and_pickles_are_refused():
    buf = io.BytesIO()
    np.save(buf, np.arange(5, dtype=np.int64))
    np.testing.assert_array_equal(bytes_to_ndarray(buf.getvalue()), np.arange(5))
    obj = io.BytesIO()
    np.save(obj, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError):
        bytes_to_ndarray(obj.getvalue())
    with pytest.raises(TypeError):
        ndarray_to_bytes(np.array([object()]))


def test_sample_is_a_msgpack_map_in_field_order_with_bin_arrays():
    s = FeatureSample(np.ones(3, np.float32), 7)
    decoded = msgspec.msgpack.decode(s.packed)
    assert list(decoded) == ["features", "label"]
    assert decoded["label"] == 7
    assert isinstance(decoded["features"], bytes)
    # golden: map of 2, "features" -> bin8 of 1+3+1+8+12 = 25 bytes, "label" -> 7
    expected = (b"\x82\xa8features\xc4\x19\x03<f4\x01" + (3).to_bytes(8, "little")
                + np.ones(3, np.float32).tobytes() + b"\xa5label\x07")
    assert s.packed == expected


def test_numpy_scalars_are_stored_as_plain_values():
    s = FeatureSample(np.zeros(1, np.float32), np.int64(4))
    assert msgspec.msgpack.decode(s.packed)["label"] == 4
    assert s.packed == FeatureSample(np.zeros(1, np.float32), 4).packed


def test_every_ndarray_spelling_decodes_to_arrays():
    s = RichSample(
        image=np.arange(4, dtype=np.uint8), maybe=np.ones(2), legacy_opt=np.zeros(1),
        caption="c", score=0.5, ok=True, raw=b"\x00\x01", tags=["a", "b"],
    )
    back = RichSample.from_bytes(s.packed)
    for name in ("image", "maybe", "legacy_opt"):
        assert isinstance(getattr(back, name), np.ndarray), name
        np.testing.assert_array_equal(getattr(back, name), getattr(s, name))
    assert (back.caption, back.score, back.ok, back.raw, back.tags) == ("c", 0.5, True, b"\x00\x01",
                                                                       ["a", "b"])
    none = RichSample.from_bytes(
        RichSample(np.zeros(1, np.uint8), None, None, "", 0.0, False, b"", []).packed
    )
    assert none.maybe is None and none.legacy_opt is None


def test_as_wds_has_key_and_msgpack_and_packable_makes_a_dataclass():
    s = FeatureSample(np.zeros(2, np.float32), 1)
    wds = s.as_wds
    assert set(wds) == {"__key__", "msgpack"} and wds["msgpack"] == s.packed
    assert s.as_wds["__key__"] != wds["__key__"]
    assert isinstance(s, atdata_async.PackableSample)
    assert FeatureSample.__name__ == "FeatureSample"

    @atdata_async.packable
    class WithDefault:
        x: int
        arr: Optional[NDArray] = None  # noqa: UP045

    assert WithDefault(1).arr is None
    assert WithDefault.from_bytes(WithDefault(2).packed).x == 2


def test_non_map_payload_is_a_clear_error():
    with pytest.raises(ValueError, match="msgpack map"):
        FeatureSample.from_bytes(msgspec.msgpack.encode([1, 2]))
