"""Local storage: the Redis index and the S3 data store (async core)."""

from ._backends.redis_index import LocalDatasetEntry, LocalIndex
from ._backends.s3_store import S3Credentials, S3DataStore, ShardUpload
from ._errors import ObjectNotFoundError

__all__ = [
    "LocalDatasetEntry",
    "LocalIndex",
    "ObjectNotFoundError",
    "S3Credentials",
    "S3DataStore",
    "ShardUpload",
]
