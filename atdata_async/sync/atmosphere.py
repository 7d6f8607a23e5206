"""Blocking twins of ``atdata_async.atmosphere``."""

from .. import _atindex, _xrpc
from .._atindex import AtmosphereDatasetEntry
from .._atproto import AtUri, next_tid, parse_at_uri
from .._lexicon import (
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
from .._portal import Facade
from .._xrpc import Session


class AtmosphereClient(Facade, core=_xrpc.AtmosphereClient):
    pass


class AtmosphereIndex(Facade, core=_atindex.AtmosphereIndex):
    pass


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
