"""Packable samples and their msgpack wire form (pure, no I/O).

A sample serializes to a msgpack map of field name -> value in field order. NDArray
values are msgpack ``bin`` in atdata's compact layout::

    u8 len(dtype.str) | dtype.str (ASCII) | u8 ndim | ndim x int64 LE shape | C-order bytes

Values starting with ``\\x93NUMPY`` are legacy ``.npy`` blobs and are read too.
"""

from __future__ import annotations

import dataclasses
import io
import struct
import types
import typing
import uuid
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Self, TypeVar, dataclass_transform

import msgspec
import numpy as np

_NPY_MAGIC = b"\x93NUMPY"
_PRIMITIVES: dict[Any, str] = {str: "str", int: "int", float: "float", bool: "bool", bytes: "bytes"}


def ndarray_to_bytes(array: np.ndarray) -> bytes:
    """Encode an array in atdata's compact NDArray layout."""
    array = np.asarray(array, order="C")
    if array.dtype.hasobject:
        raise TypeError("object-dtype arrays cannot be serialized")
    dtype = array.dtype.str.encode("ascii")
    header = bytes([len(dtype)]) + dtype + bytes([array.ndim])
    return header + struct.pack(f"<{array.ndim}q", *array.shape) + array.tobytes()


def bytes_to_ndarray(data: bytes) -> np.ndarray:
    """Decode the compact layout (or a legacy ``.npy`` blob) into a writable array."""
    if data[:6] == _NPY_MAGIC:
        return np.load(io.BytesIO(data), allow_pickle=False)
    view = memoryview(data)
    dtype_len = view[0]
    dtype = np.dtype(bytes(view[1 : 1 + dtype_len]).decode("ascii"))
    if dtype.hasobject:
        raise TypeError("object-dtype arrays cannot be deserialized")
    pos = 1 + dtype_len
    ndim = view[pos]
    pos += 1
    shape = struct.unpack_from(f"<{ndim}q", view, pos)
    pos += 8 * ndim
    return np.frombuffer(view[pos:], dtype=dtype).reshape(shape).copy()


def _is_ndarray(tp: Any) -> bool:
    return tp is np.ndarray or typing.get_origin(tp) is np.ndarray


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """``X | None`` / ``Optional[X]`` -> (X, True); anything else -> (tp, False)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _decoder_for(tp: Any) -> Callable[[Any], Any] | None:
    """A function turning a decoded msgpack value back into ``tp``, or None if as-is."""
    inner, _ = _unwrap_optional(tp)
    if _is_ndarray(inner):
        return lambda v: None if v is None else bytes_to_ndarray(v)
    if typing.get_origin(inner) is list:
        (item,) = typing.get_args(inner) or (Any,)
        item_decoder = _decoder_for(item)
        if item_decoder is not None:
            return lambda v: None if v is None else [item_decoder(x) for x in v]
    return None


def _encode_hook(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return ndarray_to_bytes(value)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot serialize a value of type {type(value).__name__}")


_ENCODER = msgspec.msgpack.Encoder(enc_hook=_encode_hook)


def field_types(sample_type: type) -> dict[str, Any]:
    """The resolved annotation of each dataclass field, in field order."""
    try:
        hints = typing.get_type_hints(sample_type)
    except Exception:  # unresolvable forward refs: fall back to raw annotations
        hints = {}
    return {f.name: hints.get(f.name, f.type) for f in dataclasses.fields(sample_type)}


def field_type_record(tp: Any) -> dict[str, Any]:
    """The local schema ``fieldType`` for an annotation (without optionality)."""
    if tp in _PRIMITIVES:
        return {"$type": "local#primitive", "primitive": _PRIMITIVES[tp]}
    if _is_ndarray(tp):
        dtype_args = typing.get_args(tp)
        dtype = "float32"
        scalar = typing.get_args(dtype_args[1]) if len(dtype_args) == 2 else ()
        if scalar and not isinstance(scalar[0], typing.TypeVar):
            dtype = np.dtype(scalar[0]).name
        return {"$type": "local#ndarray", "dtype": dtype}
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp) or (str,)
        return {"$type": "local#array", "items": field_type_record(_unwrap_optional(item)[0])}
    raise TypeError(f"unsupported field type for a schema: {tp!r}")


class PackableSample:
    """Base of every ``@packable`` class: msgpack encoding, decoding and ``as_wds``."""

    _field_decoders: ClassVar[dict[str, Callable[[Any], Any] | None]]

    @classmethod
    def _decoders(cls) -> dict[str, Callable[[Any], Any] | None]:
        if "_field_decoders" not in cls.__dict__:
            cls._field_decoders = {n: _decoder_for(t) for n, t in field_types(cls).items()}
        return cls._field_decoders

    @property
    def packed(self) -> bytes:
        """The msgpack map of this sample's fields, in field order."""
        body = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        return _ENCODER.encode(body)

    @property
    def as_wds(self) -> dict[str, Any]:
        """A WebDataset sample dict; override ``__key__`` to choose the member name."""
        return {"__key__": str(uuid.uuid1()), "msgpack": self.packed}

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Self:
        """Build a sample from a decoded msgpack map."""
        decoders = cls._decoders()
        kwargs = {}
        for name, value in data.items():
            if name not in decoders:
                continue  # a field this version of the type no longer has
            decode = decoders[name]
            kwargs[name] = decode(value) if decode is not None else value
        return cls(**kwargs)

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Decode one ``.msgpack`` member."""
        decoded = msgspec.msgpack.decode(data)
        if not isinstance(decoded, dict):
            raise ValueError(f"a sample must be a msgpack map, got {type(decoded).__name__}")
        return cls.from_data(decoded)


T = TypeVar("T")


@dataclass_transform()
def packable(cls: type[T]) -> type[T]:
    """Turn an annotated class into a dataclass sample that packs to msgpack."""
    if issubclass(cls, PackableSample):
        return dataclasses.dataclass(cls)
    namespace = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
    bases = (*(b for b in cls.__bases__ if b is not object), PackableSample)
    return dataclasses.dataclass(type(cls.__name__, bases, namespace))  # type: ignore[return-value]
