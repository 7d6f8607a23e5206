"""ATProto: the XRPC client, lexicon records and the read-side index (async core)."""

from ._atindex import AtmosphereDatasetEntry, AtmosphereIndex
from ._atproto import AtUri, next_tid, parse_at_uri
from ._lexicon import (
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
from ._xrpc import AtmosphereClient, Session

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
