"""The lexicon documents, our Structs and our validator against them, judged by the
reference validator (@atproto/lexicon) on the same records."""

from __future__ import annotations

import copy
import hashlib
import types
import typing

import msgspec
import pytest

from atdata_async._model.lexicon import (
    DATASET_COLLECTION,
    SCHEMA_COLLECTION,
    BlobShard,
    Checksum,
    DatasetRecord,
    DatasetSize,
    HttpShard,
    S3Shard,
    SchemaRecord,
    StorageBlobs,
    StorageExternal,
    StorageHttp,
    StorageS3,
    dataset_from_json,
    decode_metadata,
    encode_metadata,
    json_schema_of,
    schema_from_json,
    schema_record_from_local,
    to_json,
)
from atdata_async._model.lexval import (
    LEXICON_DIR,
    LexiconViolation,
    decode_b64,
    encode_b64,
    get_def,
    lexicons,
    validate_record,
)
from tests.lexicon_check import validate_records

URI = "at://did:plc:abcdefghijklmnopqrstuvwx/science.alt.dataset.schema/FeatureSample_1.0.0"
LOCAL = {"name": "FeatureSample", "version": "1.0.0", "fields": [
    {"name": "features", "fieldType": {"$type": "local#ndarray", "dtype": "float32"},
     "optional": False},
    {"name": "label", "fieldType": {"$type": "local#primitive", "primitive": "int"},
     "optional": False},
    {"name": "note", "fieldType": {"$type": "local#primitive", "primitive": "str"},
     "optional": True}]}


def test_the_lexicon_files_are_atdatas_unmodified():
    sums = dict(reversed(line.split()) for line in
                (LEXICON_DIR / "SHA256SUMS").read_text().splitlines())
    files = sorted((LEXICON_DIR / "science" / "alt" / "dataset").glob("*.json"))
    assert sorted(sums) == [f.name for f in files] and len(files) == 15
    for f in files:
        assert hashlib.sha256(f.read_bytes()).hexdigest() == sums[f.name], f.name
    assert "Mozilla Public License Version 2.0" in (LEXICON_DIR / "LICENSE").read_text()
    assert "MPL" in (LEXICON_DIR / "README.md").read_text()
    assert {SCHEMA_COLLECTION, DATASET_COLLECTION} <= set(lexicons())


# -- our Structs cannot drift from the lexicon -------------------------------------------

STRUCTS: list[tuple[type[msgspec.Struct], str]] = [
    (DatasetRecord, DATASET_COLLECTION),
    (SchemaRecord, SCHEMA_COLLECTION),
    (DatasetSize, f"{DATASET_COLLECTION}#datasetSize"),
    (Checksum, f"{DATASET_COLLECTION}#shardChecksum"),
    (StorageHttp, "science.alt.dataset.storageHttp"),
    (HttpShard, "science.alt.dataset.storageHttp#shardEntry"),
    (StorageS3, "science.alt.dataset.storageS3"),
    (S3Shard, "science.alt.dataset.storageS3#shardEntry"),
    (StorageBlobs, "science.alt.dataset.storageBlobs"),
    (BlobShard, "science.alt.dataset.storageBlobs#blobEntry"),
    (StorageExternal, "science.alt.dataset.storageExternal"),
]
_PY_TYPE = {"string": str, "integer": int, "boolean": bool, "array": list}


def _object_def(ref: str) -> tuple[str, dict]:
    full, d = get_def(ref)
    return full, d["record"] if d["type"] == "record" else d


@pytest.mark.parametrize(("struct", "ref"), STRUCTS, ids=[s.__name__ for s, _ in STRUCTS])
def test_structs_match_the_lexicon(struct, ref):
    """Same field names; a required field is always written (no default that
    omit_defaults would drop: the schemaType bug); an optional one is omitted when unset;
    each field's Python type fits the lexicon type."""
    _, d = _object_def(ref)
    info = msgspec.inspect.type_info(struct)
    fields = {f.encode_name: f for f in info.fields}
    assert set(fields) == set(d["properties"]), f"{struct.__name__} drifted from {ref}"
    required = set(d.get("required", ()))
    hints = typing.get_type_hints(struct)
    config = struct.__struct_config__
    if "#" not in ref:
        assert config.tag == ref and config.tag_field == "$type", "records and union members"
    for name, f in fields.items():
        lex = d["properties"][name]
        if name in required:
            assert f.required or not config.omit_defaults, f"{name} is required but omittable"
        else:
            assert not f.required and config.omit_defaults and f.default is None, \
                f"optional {name} must be omitted when unset"
        hint = hints[f.name]
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        args = [a for a in typing.get_args(hint) if a is not type(None)] if union else [hint]
        base = {typing.get_origin(a) or a for a in args}
        if lex["type"] in _PY_TYPE:
            assert _PY_TYPE[lex["type"]] in base, (name, hint)
        elif lex["type"] == "bytes":
            assert bytes in base, (name, hint)
        elif lex["type"] == "ref":
            _, tdef = get_def(lex["ref"], ref)
            if tdef["type"] == "object":
                assert dict in base or any(isinstance(a, type) and issubclass(a, msgspec.Struct)
                                           for a in base), (name, hint)
            else:
                assert _PY_TYPE[tdef["type"]] in base, (name, hint)
        elif lex["type"] == "union":
            tags = {a.__struct_config__.tag for a in args
                    if isinstance(a, type) and issubclass(a, msgspec.Struct)}
            refs = {r for r in lex["refs"]}
            assert tags >= refs or dict in base, (name, hint, tags, refs)
        elif lex["type"] in ("unknown", "blob"):
            assert dict in base or typing.Any in base, (name, hint)


# -- our validator agrees with @atproto/lexicon ------------------------------------------

def _dataset(**kw) -> dict:
    record = to_json(DatasetRecord(
        name="ds", schema_ref=URI, created_at="2026-01-01T00:00:00.000Z",
        storage=StorageS3(bucket="b", endpoint="http://127.0.0.1:9000", region="us-east-1",
                          shards=[S3Shard("k/0.tar", Checksum("sha256", "ab" * 32))]),
        description="d", tags=["a", "b"], license="MIT",
        size=DatasetSize(samples=3, bytes=10, shards=1),
        metadata=encode_metadata({"split": "train", "ratio": 0.5})))
    for path, value in kw.items():
        target = record
        *parents, last = path.split(".")
        for p in parents:
            target = target[int(p)] if isinstance(target, list) else target[p]
        if value is _DELETE:
            del target[last]
        else:
            target[last] = value
    return record


_DELETE = object()
BLOB_CID = "bafkreibme22gw2h7y2h7tg2fhqotaqjucnbc24deqo72b6mkl2egezxhvy"
SCHEMA = to_json(schema_record_from_local(LOCAL, "2026-01-01T00:00:00.000Z"))


def _schema(**kw) -> dict:
    record = copy.deepcopy(SCHEMA)
    for key, value in kw.items():
        if value is _DELETE:
            record.pop(key)
        else:
            record[key] = value
    return record


CASES: list[tuple[str, str, dict]] = [
    ("dataset ok", DATASET_COLLECTION, _dataset()),
    ("http ok", DATASET_COLLECTION, _dataset(storage={
        "$type": "science.alt.dataset.storageHttp",
        "shards": [{"url": "https://e.org/a.tar",
                    "checksum": {"algorithm": "none", "digest": ""}}]})),
    ("blobs ok", DATASET_COLLECTION, _dataset(storage={
        "$type": "science.alt.dataset.storageBlobs", "blobs": [{"blob": {
            "$type": "blob", "ref": {"$link": BLOB_CID},
            "mimeType": "application/x-tar", "size": 10}}]})),
    ("no metadata", DATASET_COLLECTION, _dataset(metadata=_DELETE)),
    ("metadata object", DATASET_COLLECTION, _dataset(metadata={"split": "train"})),
    ("metadata too big", DATASET_COLLECTION,
     _dataset(metadata={"$bytes": encode_b64(b"\x00" * 100_001)})),
    ("no name", DATASET_COLLECTION, _dataset(name=_DELETE)),
    ("long name", DATASET_COLLECTION, _dataset(name="n" * 201)),
    ("name of 200 bytes in 67 chars", DATASET_COLLECTION, _dataset(name="é" * 100)),
    ("name of 201 bytes", DATASET_COLLECTION, _dataset(name="é" * 100 + "x")),
    ("bad createdAt", DATASET_COLLECTION, _dataset(createdAt="yesterday")),
    ("schemaRef not at-uri", DATASET_COLLECTION, _dataset(schemaRef="https://x")),
    ("31 tags", DATASET_COLLECTION, _dataset(tags=[f"t{i}" for i in range(31)])),
    ("tag too long", DATASET_COLLECTION, _dataset(tags=["t" * 151])),
    ("tag not string", DATASET_COLLECTION, _dataset(tags=[3])),
    ("negative samples", DATASET_COLLECTION, _dataset(**{"size.samples": -1})),
    ("zero shards", DATASET_COLLECTION, _dataset(**{"size.shards": 0})),
    ("storage without $type", DATASET_COLLECTION, _dataset(storage={"shards": []})),
    ("storage of unknown $type (open union)", DATASET_COLLECTION,
     _dataset(storage={"$type": "org.example.storage", "x": 1})),
    ("no shards", DATASET_COLLECTION, _dataset(**{"storage.shards": []})),
    ("shard without checksum", DATASET_COLLECTION,
     _dataset(**{"storage.shards": [{"key": "k"}]})),
    ("key too long", DATASET_COLLECTION,
     _dataset(**{"storage.shards.0.key": "k" * 1025})),
    ("digest too long", DATASET_COLLECTION,
     _dataset(**{"storage.shards.0.checksum.digest": "a" * 129})),
    ("endpoint not a uri", DATASET_COLLECTION, _dataset(**{"storage.endpoint": "no uri"})),
    ("region too long", DATASET_COLLECTION, _dataset(**{"storage.region": "r" * 51})),
    ("schema ok", SCHEMA_COLLECTION, SCHEMA),
    ("schema without schemaType", SCHEMA_COLLECTION, _schema(schemaType=_DELETE)),
    ("schemaType unknown value (knownValues are open)", SCHEMA_COLLECTION,
     _schema(schemaType="avro")),
    ("schemaType too long", SCHEMA_COLLECTION, _schema(schemaType="x" * 51)),
    ("schema without $type", SCHEMA_COLLECTION, _schema(schema={"type": "object"})),
    ("schema wrong $schema const", SCHEMA_COLLECTION,
     _schema(schema={**SCHEMA["schema"], "$schema": "draft-04"})),
    ("schema properties not an object", SCHEMA_COLLECTION,
     _schema(schema={**SCHEMA["schema"], "properties": "x"})),
    ("atdataSchemaVersion 0", SCHEMA_COLLECTION, _schema(atdataSchemaVersion=0)),
    ("schema metadata tags", SCHEMA_COLLECTION,
     _schema(metadata={"license": "MIT", "tags": ["a"]})),
    ("schema metadata 31 tags", SCHEMA_COLLECTION,
     _schema(metadata={"tags": ["a"] * 31})),
    ("schema name too long", SCHEMA_COLLECTION, _schema(name="n" * 101)),
]


def test_our_validator_agrees_with_the_reference_validator():
    reference = validate_records([{"uri": name, "collection": coll, "value": value}
                                  for name, coll, value in CASES])
    disagreements = []
    for (name, coll, value), ref in zip(CASES, reference, strict=True):
        try:
            validate_record(coll, value)
            ours, why = True, ""
        except LexiconViolation as exc:
            ours, why = False, str(exc)
        if ours != ref["valid"]:
            disagreements.append((name, ours, why, ref.get("error")))
    assert not disagreements, disagreements
    verdicts = {ref["uri"]: ref["valid"] for ref in reference}
    assert verdicts["dataset ok"] and verdicts["schema ok"]
    assert not verdicts["schema without schemaType"] and not verdicts["metadata object"]
    assert sum(not v for v in verdicts.values()) >= 20  # the bad ones really are bad


def test_violations_name_the_field():
    with pytest.raises(LexiconViolation) as info:
        validate_record(DATASET_COLLECTION, _dataset(**{"storage.shards.0.key": "k" * 1025}))
    assert info.value.path == "storage.shards[0].key"
    with pytest.raises(LexiconViolation) as info:
        validate_record(SCHEMA_COLLECTION, _schema(schemaType=_DELETE))
    assert info.value.path == "schemaType"


# -- the record forms we read ------------------------------------------------------------

def test_schema_records_always_carry_schema_type():
    assert SCHEMA["schemaType"] == "jsonSchema" and SCHEMA["atdataSchemaVersion"] == 1
    # and reading one that lacks it (older atdata_async wrote such records) still works
    assert schema_from_json(_schema(schemaType=_DELETE)).schema_type == "jsonSchema"


def test_both_schema_record_shapes_read():
    flat = json_schema_of(schema_from_json(SCHEMA))
    canonical_record = _schema(schema={
        "$type": f"{SCHEMA_COLLECTION}#jsonSchemaFormat", "draft": "draft-07",
        "content": {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
                    "properties": SCHEMA["schema"]["properties"],
                    "required": ["features", "label"]},
        "arrayFormatVersions": {"ndarrayBytes": "1.0.0"}}, atdataSchemaVersion=_DELETE)
    canonical_record["$atdataSchemaVersion"] = 1
    record = schema_from_json(canonical_record)
    assert record.atdata_schema_version == 1
    canonical = json_schema_of(record)
    for doc in (flat, canonical):
        assert set(doc["properties"]) == {"features", "label", "note"}
        assert doc["required"] == ["features", "label"]
        assert doc["arrayFormatVersions"] == {"ndarrayBytes": "1.0.0"}
    with pytest.raises(ValueError, match="properties"):
        json_schema_of(_schema(schema={"$type": "x", "draft": "draft-07", "content": {}}))


def test_metadata_reads_in_every_form_atdata_writes():
    meta = {"split": "train", "source_uri": "https://e.org", "ratio": 0.5, "n": [1, 2]}
    packed = encode_metadata(meta)
    assert decode_metadata(packed) == meta
    assert decode_metadata({"$bytes": encode_b64(packed)}) == meta
    padded = {"$bytes": __import__("base64").b64encode(packed).decode()}
    assert decode_metadata(padded) == meta  # some writers pad
    atdata_object = {"split": "train", "sourceUri": "https://e.org",
                     "custom": {"ratio": 0.5, "n": [1, 2]}}
    assert decode_metadata(atdata_object) == meta
    assert decode_metadata(None) is None
    with pytest.raises(ValueError, match="metadata"):
        decode_metadata(b"\xc1")
    # the record decodes from JSON with its bytes, and writes them back as $bytes
    record = dataset_from_json(_dataset())
    assert decode_metadata(record.metadata) == {"split": "train", "ratio": 0.5}
    assert to_json(record)["metadata"] == _dataset()["metadata"]
    assert decode_b64(encode_b64(b"\x01\x02")) == b"\x01\x02"


@pytest.mark.parametrize("meta", [
    {"a": 1}, {"ab": 1}, {"abc": "x"}, {"k" * 40: 1.5}, {"k" * 300: "v"},
    {f"k{i}": i for i in range(20)}, {"q" * 40 + str(i): [i] for i in range(17)},
], ids=lambda m: f"{len(m)}keys-{len(next(iter(m)))}chars")
def test_metadata_bytes_decode_with_plain_b64decode_after_the_pds_drops_padding(meta):
    """A PDS returns ``$bytes`` unpadded; atdata 0.7 reads it with base64.b64decode, which
    fails unless the msgpack length divides by 3: our encoding always does."""
    import base64

    packed = encode_metadata(meta)
    assert len(packed) % 3 == 0
    unpadded = base64.b64encode(packed).decode().rstrip("=")
    assert msgspec.msgpack.decode(base64.b64decode(unpadded)) == meta
    assert decode_metadata({"$bytes": unpadded}) == meta
