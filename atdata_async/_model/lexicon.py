"""``science.alt.dataset`` lexicon records as msgspec Structs, and their client-side
validation (the PDS stores these lexicons unvalidated, so we check before writing)."""

from __future__ import annotations

import binascii
from typing import Any

import msgspec

from .._errors import ValidationError
from .ids import parse_at_uri
from .lexval import LexiconViolation, decode_b64, encode_b64, validate_record
from .schema import SEMVER

NS = "science.alt.dataset"
SCHEMA_COLLECTION = f"{NS}.schema"
DATASET_COLLECTION = f"{NS}.entry"
NDARRAY_REF = "https://alt.science/schemas/atdata-ndarray-bytes/1.0.0#/$defs/ndarray"

LIMITS = {"schema.name": 100, "description": 5000, "dataset.name": 200, "tags": 30,
          "tag": 150, "license": 200, "metadata_bytes": 100_000}


class Checksum(msgspec.Struct, frozen=True):
    algorithm: str = "sha256"
    digest: str = ""


NO_CHECKSUM = Checksum("none", "")


class HttpShard(msgspec.Struct):
    url: str
    checksum: Checksum = NO_CHECKSUM


class S3Shard(msgspec.Struct):
    key: str
    checksum: Checksum = NO_CHECKSUM


class BlobShard(msgspec.Struct, omit_defaults=True):
    blob: dict[str, Any]
    checksum: Checksum | None = None


class StorageHttp(msgspec.Struct, tag=f"{NS}.storageHttp", tag_field="$type"):
    shards: list[HttpShard]


class StorageS3(msgspec.Struct, tag=f"{NS}.storageS3", tag_field="$type", omit_defaults=True):
    bucket: str
    shards: list[S3Shard]
    endpoint: str | None = None
    region: str | None = None


class StorageBlobs(msgspec.Struct, tag=f"{NS}.storageBlobs", tag_field="$type"):
    blobs: list[BlobShard]


class StorageExternal(msgspec.Struct, tag=f"{NS}.storageExternal", tag_field="$type"):
    """Read-only: the deprecated form older atdata wrote."""

    urls: list[str]


Storage = StorageHttp | StorageS3 | StorageBlobs | StorageExternal


class DatasetSize(msgspec.Struct, omit_defaults=True):
    samples: int | None = None
    bytes: int | None = None
    shards: int | None = None


class DatasetRecord(msgspec.Struct, tag=DATASET_COLLECTION, tag_field="$type", rename="camel",
                    omit_defaults=True):
    """``metadata`` is msgpack bytes as the lexicon says (``{"$bytes": ...}`` in JSON); a
    dict there is atdata 0.7's object form, read but never written."""

    name: str
    schema_ref: str
    storage: Storage
    created_at: str
    description: str | None = None
    tags: list[str] | None = None
    license: str | None = None
    size: DatasetSize | None = None
    metadata: bytes | dict[str, Any] | None = None
    metadata_schema_ref: str | None = None
    content_metadata: dict[str, Any] | None = None


class SchemaRecord(msgspec.Struct, tag=SCHEMA_COLLECTION, tag_field="$type", rename="camel",
                   omit_defaults=True):
    """A required lexicon field has no default here: ``omit_defaults`` would drop it."""

    name: str
    version: str
    schema_type: str
    schema: dict[str, Any]
    created_at: str
    description: str | None = None
    metadata: dict[str, Any] | None = None
    atdata_schema_version: int | None = None


def to_json(record: msgspec.Struct) -> dict[str, Any]:
    """The record as the JSON object a PDS stores (``$type`` included, bytes as
    ``{"$bytes": base64}``)."""
    return _bytes_to_json(msgspec.to_builtins(record, builtin_types=(bytes,)))


def _bytes_to_json(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$bytes": encode_b64(value)}
    if isinstance(value, dict):
        return {k: _bytes_to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_bytes_to_json(v) for v in value]
    return value


def _metadata_from_json(value: dict[str, Any]) -> dict[str, Any]:
    meta = value.get("metadata")
    if isinstance(meta, dict) and set(meta) == {"$bytes"} and isinstance(meta["$bytes"], str):
        try:
            return {**value, "metadata": decode_b64(meta["$bytes"])}
        except (binascii.Error, ValueError):
            raise ValidationError("metadata", "is not valid base64") from None
    return value


def dataset_from_json(value: dict[str, Any]) -> DatasetRecord:
    try:
        return msgspec.convert(_metadata_from_json(value), DatasetRecord)
    except msgspec.ValidationError as exc:
        raise ValidationError("record", f"not a {DATASET_COLLECTION} record: {exc}") from None


def schema_from_json(value: dict[str, Any]) -> SchemaRecord:
    """Either record shape (see ``json_schema_of``); a missing ``schemaType`` (older
    writers dropped it) reads as ``jsonSchema``."""
    if isinstance(value, dict):
        value = {"schemaType": "jsonSchema", **value}
        if "$atdataSchemaVersion" in value and "atdataSchemaVersion" not in value:
            value["atdataSchemaVersion"] = value["$atdataSchemaVersion"]
    try:
        return msgspec.convert(value, SchemaRecord)
    except msgspec.ValidationError as exc:
        raise ValidationError("record", f"not a {SCHEMA_COLLECTION} record: {exc}") from None


def json_schema_of(record: SchemaRecord | dict[str, Any]) -> dict[str, Any]:
    """The JSON Schema document of a schema record, from either shape: atdata 0.7's flat
    ``jsonSchemaFormat`` (``{"$type", "$schema", "type", "properties", ...}``) or the
    canonical ``{"draft": "draft-07", "content": {...}}`` of atdata-lexicon 0.4+."""
    schema = record.schema if isinstance(record, SchemaRecord) else record.get("schema")
    if not isinstance(schema, dict):
        raise ValidationError("schema", "must be an object")
    if isinstance(schema.get("content"), dict):
        doc = dict(schema["content"])
        if "arrayFormatVersions" in schema and "arrayFormatVersions" not in doc:
            doc["arrayFormatVersions"] = schema["arrayFormatVersions"]
    else:
        doc = {k: v for k, v in schema.items() if k != "$type"}
    if not isinstance(doc.get("properties"), dict):
        raise ValidationError("schema.properties", "must be an object of field schemas")
    return doc


# -- metadata: msgpack bytes on the wire, read from every form atdata writes --------------

_CAMEL_METADATA = {"sourceUri": "source_uri", "createdBy": "created_by",
                   "processingSteps": "processing_steps"}


def encode_metadata(metadata: dict[str, Any] | None) -> bytes | None:
    """The lexicon's form: the metadata dict msgpack-encoded (floats are fine in there)."""
    if not metadata:
        return None
    try:
        body = msgspec.msgpack.encode(metadata)
    except (TypeError, msgspec.EncodeError) as exc:
        raise ValidationError("metadata", f"cannot be msgpack-encoded: {exc}") from None
    return _length_divisible_by_3(body)


# msgpack header forms as (max value, header bytes), narrowest first
_MAP_HEADERS = ((15, 1), (0xFFFF, 3), (0xFFFFFFFF, 5))
_STR_HEADERS = ((31, 1), (0xFF, 2), (0xFFFF, 3), (0xFFFFFFFF, 5))


def _header(kind: str, n: int, size: int) -> bytes:
    if kind == "map":
        return {1: bytes([0x80 | n]), 3: b"\xde" + n.to_bytes(2, "big"),
                5: b"\xdf" + n.to_bytes(4, "big")}[size]
    return {1: bytes([0xA0 | n]), 2: b"\xd9" + n.to_bytes(1, "big"),
            3: b"\xda" + n.to_bytes(2, "big"), 5: b"\xdb" + n.to_bytes(4, "big")}[size]


def _parse_header(body: bytes, at: int, kind: str) -> tuple[int, int]:
    """(value, header size) of the map or str header at ``at``."""
    first = body[at]
    if (kind == "map" and 0x80 <= first <= 0x8F) or (kind == "str" and 0xA0 <= first <= 0xBF):
        return first & (0x0F if kind == "map" else 0x1F), 1
    size = {"map": {0xDE: 3, 0xDF: 5}, "str": {0xD9: 2, 0xDA: 3, 0xDB: 5}}[kind][first]
    return int.from_bytes(body[at + 1:at + size], "big"), size


def _length_divisible_by_3(body: bytes) -> bytes:
    """The same msgpack map, its map header and first key's header widened (both still
    valid msgpack) so the length divides by 3. A PDS hands ``$bytes`` back as unpadded
    base64 (the data model's form), and atdata 0.7 decodes it with ``base64.b64decode``,
    which accepts a missing padding only when there is none to add."""
    if len(body) % 3 == 0:
        return body
    n, map_size = _parse_header(body, 0, "map")
    key_len, key_size = _parse_header(body, map_size, "str")
    rest = body[map_size + key_size:]
    for m in (size for limit, size in _MAP_HEADERS if n <= limit):
        for k in (size for limit, size in _STR_HEADERS if key_len <= limit):
            if (m + k + len(rest)) % 3 == 0:
                return _header("map", n, m) + _header("str", key_len, k) + rest
    raise AssertionError("some pair of header widths always fits")  # pragma: no cover


def decode_metadata(metadata: Any) -> dict[str, Any] | None:
    """Metadata as a flat dict from any form: msgpack bytes, ``{"$bytes": base64}`` (both
    the lexicon's), or atdata 0.7's object form (known keys camelCased, the rest under
    ``custom``), flattened the way atdata's own reader does."""
    if metadata is None:
        return None
    if isinstance(metadata, dict) and set(metadata) == {"$bytes"}:
        metadata = decode_b64(metadata["$bytes"])
    if isinstance(metadata, bytes | bytearray):
        try:
            decoded = msgspec.msgpack.decode(metadata)
        except msgspec.DecodeError:
            raise ValidationError("metadata", "is not msgpack") from None
        if not isinstance(decoded, dict):
            raise ValidationError("metadata", "must be a msgpack map")
        return decoded
    if isinstance(metadata, dict):
        flat = {_CAMEL_METADATA.get(k, k): v for k, v in metadata.items() if k != "custom"}
        custom = metadata.get("custom")
        if isinstance(custom, dict):
            for k, v in custom.items():
                flat.setdefault(k, v)
        return flat
    raise ValidationError("metadata", f"unexpected form {type(metadata).__name__}")


# -- validation ------------------------------------------------------------------------


def find_float(value: Any, path: str) -> str | None:
    """The path of the first float inside ``value`` (ATProto records allow none)."""
    if isinstance(value, float):
        return path
    if isinstance(value, dict):
        for k, v in value.items():
            found = find_float(v, f"{path}.{k}")
            if found:
                return found
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            found = find_float(v, f"{path}[{i}]")
            if found:
                return found
    return None


def _check_len(field: str, value: str | None, limit: int) -> None:
    if value is not None and len(value.encode("utf-8")) > limit:
        raise ValidationError(field, f"is {len(value.encode('utf-8'))} bytes of UTF-8; the "
                                     f"lexicon allows {limit}")


def check_lexicon(collection: str, body: dict[str, Any]) -> dict[str, Any]:
    """The lexicon's own rules (the same documents the network validates with), then the
    PDS's: no floats anywhere. ValidationError names the field."""
    try:
        validate_record(collection, body)
    except LexiconViolation as exc:
        raise ValidationError(exc.path, exc.message) from None
    found = find_float(body, "record")
    if found:
        raise ValidationError(found.removeprefix("record."),
                              "is a float; ATProto records allow no floats "
                              "(store it as a string or a scaled integer)")
    return body


def validate_dataset(record: DatasetRecord) -> DatasetRecord:
    """Refuse, naming the field, anything the lexicon or the PDS would reject."""
    if not record.name.strip():
        raise ValidationError("name", "must not be empty")
    _check_len("name", record.name, LIMITS["dataset.name"])
    _check_len("description", record.description, LIMITS["description"])
    _check_len("license", record.license, LIMITS["license"])
    if record.tags is not None:
        if len(record.tags) > LIMITS["tags"]:
            raise ValidationError("tags", f"has {len(record.tags)} tags; at most 30 are allowed")
        for tag in record.tags:
            if not isinstance(tag, str) or not tag:
                raise ValidationError("tags", f"every tag must be a non-empty string: {tag!r}")
            _check_len("tags", tag, LIMITS["tag"])
    try:
        parse_at_uri(record.schema_ref, SCHEMA_COLLECTION)
    except ValueError as exc:
        raise ValidationError("schemaRef", str(exc)) from None
    shards = getattr(record.storage, "shards", None)
    if shards is not None and not shards:
        raise ValidationError("storage", "has no shards")
    if isinstance(record.storage, StorageHttp):
        for shard in record.storage.shards:
            if not shard.url.startswith(("http://", "https://")):
                raise ValidationError("storage", f"storageHttp needs http(s) URLs: {shard.url}")
    if isinstance(record.metadata, dict):
        raise ValidationError("metadata", "must be msgpack bytes (encode_metadata); the "
                                          "object form is read, never written")
    check_lexicon(DATASET_COLLECTION, to_json(record))
    return record


def validate_schema(record: SchemaRecord) -> SchemaRecord:
    if not record.name:
        raise ValidationError("name", "must not be empty")
    _check_len("name", record.name, LIMITS["schema.name"])
    _check_len("description", record.description, LIMITS["description"])
    if not SEMVER.match(record.version):
        raise ValidationError("version", f"must be semver, got {record.version!r}")
    check_lexicon(SCHEMA_COLLECTION, to_json(record))
    return record


# -- local schema -> JSON schema -------------------------------------------------------

_PRIMITIVE_JSON = {
    "str": {"type": "string"},
    "int": {"type": "integer"},
    "float": {"type": "number"},
    "bool": {"type": "boolean"},
    "bytes": {"type": "string", "format": "byte", "contentEncoding": "base64"},
}


def _json_type(field_type: dict[str, Any]) -> dict[str, Any]:
    kind = field_type.get("$type", "")
    if kind.endswith("#primitive"):
        return dict(_PRIMITIVE_JSON[field_type["primitive"]])
    if kind.endswith("#ndarray"):
        return {"$ref": NDARRAY_REF}
    if kind.endswith("#array"):
        return {"type": "array", "items": _json_type(field_type["items"])}
    raise ValidationError("schema", f"unsupported field type {field_type!r}")


def schema_record_from_local(local: dict[str, Any], created_at: str) -> SchemaRecord:
    """The atmosphere schema record for a local schema record (atdata's mapping)."""
    properties = {f["name"]: _json_type(f["fieldType"]) for f in local["fields"]}
    schema: dict[str, Any] = {
        "$type": f"{SCHEMA_COLLECTION}#jsonSchemaFormat",
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": properties,
        "required": [f["name"] for f in local["fields"] if not f.get("optional")],
    }
    if any(p.get("$ref") == NDARRAY_REF for p in properties.values()):
        schema["arrayFormatVersions"] = {"ndarrayBytes": "1.0.0"}
    return validate_schema(SchemaRecord(
        name=local["name"], version=local["version"], schema_type="jsonSchema", schema=schema,
        created_at=created_at, description=local.get("description"), atdata_schema_version=1))

