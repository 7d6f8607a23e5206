"""Local storage: the Redis index and the S3 data store (async core)."""

from ._errors import ObjectNotFoundError
from ._index import LocalDatasetEntry, LocalIndex
from ._store import S3Credentials, S3DataStore, ShardUpload

__all__ = [
    "LocalDatasetEntry",
    "LocalIndex",
    "ObjectNotFoundError",
    "S3Credentials",
    "S3DataStore",
    "ShardUpload",
]
