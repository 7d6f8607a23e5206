"""Blocking twins of ``atdata_async.local``."""

from .. import _index, _store
from .._index import LocalDatasetEntry
from .._portal import Facade
from .._store import ObjectNotFoundError, S3Credentials, ShardUpload


class S3DataStore(Facade, core=_store.S3DataStore):
    pass


class LocalIndex(Facade, core=_index.LocalIndex):
    pass


__all__ = [
    "LocalDatasetEntry",
    "LocalIndex",
    "ObjectNotFoundError",
    "S3Credentials",
    "S3DataStore",
    "ShardUpload",
]
