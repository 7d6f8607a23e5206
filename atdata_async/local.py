"""Local storage: the Redis index and the S3 data store (async core)."""

from ._index import LocalDatasetEntry, LocalIndex
from ._store import ObjectNotFoundError, S3Credentials, S3DataStore, ShardUpload

__all__ = [
    "LocalDatasetEntry",
    "LocalIndex",
    "ObjectNotFoundError",
    "S3Credentials",
    "S3DataStore",
    "ShardUpload",
]
