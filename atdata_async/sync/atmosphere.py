"""Blocking twins of ``atdata_async.atmosphere``; its records and helpers as they are."""

from .. import atmosphere as _core
from ..atmosphere import *  # noqa: F403  (data types and pure helpers are shared)
from ._portal import Facade

__all__ = _core.__all__


class AtmosphereClient(Facade, core=_core.AtmosphereClient):
    pass


class AtmosphereIndex(Facade, core=_core.AtmosphereIndex):
    pass
