"""Blocking twins of ``atdata_async.local``; its data types as they are."""

from .. import local as _core
from ..local import *  # noqa: F403  (data types are shared)
from ._portal import Facade

__all__ = _core.__all__


class S3DataStore(Facade, core=_core.S3DataStore):
    pass


class LocalIndex(Facade, core=_core.LocalIndex):
    pass
