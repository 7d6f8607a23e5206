"""The blocking facade: the same names and signatures as the async core.

    import atdata_async.sync as atdata
    from atdata_async.sync.local import LocalIndex, S3DataStore

Every call runs on one process-wide event loop (see ``atdata_async._portal``).
"""

from collections.abc import Collection, Iterator
from typing import Any

import atdata_async as _core
from atdata_async import *  # noqa: F403  (errors, samples and progress are shared)

from .._backends import dataset as _dataset
from .._backends.streams import blocking_file
from ._portal import Facade, core_of, get_portal

__all__ = _core.__all__


class Dataset(Facade, core=_dataset.Dataset):
    """``Dataset[T](url)``: iterate samples of type T from tar shards (blocking)."""

    def __class_getitem__(cls, sample_type: Any) -> Any:
        core = _dataset.Dataset[sample_type]
        return type(core.__name__, (cls,), {"_core_type": core, "__module__": cls.__module__})

    @classmethod
    def from_entry(cls, entry: Any, *, store: Any = None, allow_http: bool = False,
                   allow_redirects_to: Collection[str] = ()) -> Any:
        """A published dataset's shards, read as untrusted input (see the async twin)."""
        facade = cls.__new__(cls)
        object.__setattr__(facade, "_core", cls._core_type.from_entry(
            entry, store=core_of(store), allow_http=allow_http,
            allow_redirects_to=allow_redirects_to))
        return facade

    def items(self) -> Iterator[tuple[str, Any]]:
        """(``__key__``, sample) pairs in shard order, each shard streamed (decoded in the
        caller's thread, its bytes read on the portal's loop)."""
        portal = get_portal()
        for url in self._core.shard_urls:
            with portal.wrap_async_context_manager(self._core.open_shard(url)) as read:
                pairs = _dataset.decode_shard(blocking_file(read, portal.call),
                                              self._core.sample_type, url)
                try:
                    yield from pairs
                finally:
                    pairs.close()

    def __iter__(self) -> Iterator[Any]:
        for _, sample in self.items():
            yield sample

