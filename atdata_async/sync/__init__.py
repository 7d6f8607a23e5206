"""The blocking facade: the same names and signatures as the async core.

    import atdata_async.sync as atdata
    from atdata_async.sync.local import LocalIndex, S3DataStore

Every call runs on one process-wide event loop (see ``atdata_async._portal``). Like the
core, the names that need numpy (``Dataset``, ``packable``, ``PackableSample``) are
imported on first use: a script that only promotes does not pay for them.
"""

from typing import TYPE_CHECKING, Any

import atdata_async as _core

if TYPE_CHECKING:
    from atdata_async import *  # noqa: F403

    from ._dataset import Dataset as Dataset

__all__ = _core.__all__

# errors, samples and progress are the core's own objects (the heavy ones on first use)
globals().update({name: getattr(_core, name) for name in __all__
                  if name not in _core._LAZY and name != "Dataset"})


def __getattr__(name: str) -> Any:
    if name == "Dataset":
        from ._dataset import Dataset as value
    elif name in _core._LAZY:
        value = getattr(_core, name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
