"""``science.alt.dataset`` lexicon records as msgspec Structs, and their client-side
validation (the PDS stores these lexicons unvalidated, so we check before writing)."""

from __future__ import annotations

import base64
from typing import Any

import msgspec

from ._atproto import parse_at_uri
from ._errors import ValidationError
from ._schema import SEMVER

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
    name: str
    schema_ref: str
    storage: Storage
    created_at: str
    description: str | None = None
    tags: list[str] | None = None
    license: str | None = None
    size: DatasetSize | None = None
    metadata: Any = None


class SchemaRecord(msgspec.Struct, tag=SCHEMA_COLLECTION, tag_field="$type", rename="camel",
                   omit_defaults=True):
    name: str
    version: str
    schema: dict[str, Any]
    created_at: str
    schema_type: str = "jsonSchema"
    description: str | None = None
    metadata: dict[str, Any] | None = None
    atdata_schema_version: int | None = 1


def to_json(record: msgspec.Struct) -> dict[str, Any]:
    """The record as the JSON object a PDS stores (``$type`` included)."""
    return msgspec.to_builtins(record)


def dataset_from_json(value: dict[str, Any]) -> DatasetRecord:
    try:
        return msgspec.convert(value, DatasetRecord)
    except msgspec.ValidationError as exc:
        raise ValidationError("record", f"not a {DATASET_COLLECTION} record: {exc}") from None


def schema_from_json(value: dict[str, Any]) -> SchemaRecord:
    try:
        return msgspec.convert(value, SchemaRecord)
    except msgspec.ValidationError as exc:
        raise ValidationError("record", f"not a {SCHEMA_COLLECTION} record: {exc}") from None


def decode_metadata(metadata: Any) -> dict[str, Any] | None:
    """Metadata as a dict, also from the older msgpack-bytes form ``{"$bytes": b64}``."""
    if isinstance(metadata, dict) and set(metadata) == {"$bytes"}:
        return msgspec.msgpack.decode(base64.b64decode(metadata["$bytes"] + "=="))
    return metadata


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
    if value is not None and len(value) > limit:
        raise ValidationError(field, f"is {len(value)} characters; the lexicon allows {limit}")


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
    body = to_json(record)
    found = find_float(body, "record")
    if found:
        raise ValidationError(found.removeprefix("record."),
                              "is a float; ATProto records allow no floats "
                              "(store it as a string or a scaled integer)")
    if record.metadata is not None:
        size = len(msgspec.json.encode(record.metadata))
        if size > LIMITS["metadata_bytes"]:
            raise ValidationError("metadata", f"is {size} bytes of JSON; keep it under 100 kB")
    return record


def validate_schema(record: SchemaRecord) -> SchemaRecord:
    if not record.name:
        raise ValidationError("name", "must not be empty")
    _check_len("name", record.name, LIMITS["schema.name"])
    _check_len("description", record.description, LIMITS["description"])
    if not SEMVER.match(record.version):
        raise ValidationError("version", f"must be semver, got {record.version!r}")
    found = find_float(to_json(record), "record")
    if found:
        raise ValidationError(found.removeprefix("record."), "is a float; records allow none")
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
        name=local["name"], version=local["version"], schema=schema, created_at=created_at,
        description=local.get("description")))

