"""The blocking ``Dataset``: its own module, so that ``atdata_async.sync`` imports numpy
and webdataset only when a script reads samples (start-up, #10)."""

from collections.abc import Collection, Iterator
from typing import Any

from .._backends import dataset as _dataset
from .._backends.streams import blocking_file
from ._portal import Facade, core_of, get_portal


class Dataset(Facade, core=_dataset.Dataset):
    """``Dataset[T](url)``: iterate samples of type T from tar shards (blocking)."""

    __module__ = "atdata_async.sync"  # where users find it (and pickle looks it up)

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
