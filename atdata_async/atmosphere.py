"""ATProto: the XRPC client, lexicon records and the read-side index (async core)."""

from ._backends.atmosphere_index import AtmosphereDatasetEntry, AtmosphereIndex
from ._backends.xrpc import AtmosphereClient, Session
from ._model.ids import AtUri, next_tid, parse_at_uri
from ._model.lexicon import (
    DATASET_COLLECTION,
    SCHEMA_COLLECTION,
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
)

__all__ = [
    "DATASET_COLLECTION",
    "SCHEMA_COLLECTION",
    "AtUri",
    "AtmosphereClient",
    "AtmosphereDatasetEntry",
    "AtmosphereIndex",
    "Checksum",
    "DatasetRecord",
    "DatasetSize",
    "HttpShard",
    "S3Shard",
    "SchemaRecord",
    "Session",
    "StorageBlobs",
    "StorageExternal",
    "StorageHttp",
    "StorageS3",
    "next_tid",
    "parse_at_uri",
]
