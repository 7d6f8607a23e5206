"""atdata_async: publish WebDataset datasets from Redis + S3 to ATProto, async-first.

The async core lives here and in ``atdata_async.local``, ``.atmosphere`` and
``.promote``; ``atdata_async.sync`` mirrors it with blocking calls of the same signatures.
"""

from typing import TYPE_CHECKING, Any

from ._errors import (
    AtdataError,
    AuthError,
    ChecksumMismatchError,
    ConfigurationError,
    ConflictError,
    CorruptShardError,
    EntryError,
    EntryNotFoundError,
    ExecutorError,
    FieldTypeError,
    IdentityError,
    IdentityNotFoundError,
    LocalIndexError,
    MalformedEntryError,
    NotFoundError,
    PromotionBusyError,
    RateLimitedError,
    RecordNotFoundError,
    RecordTooLargeError,
    SchemaNotFoundError,
    ShardTransferError,
    SourceChangedError,
    StorageError,
    UntrustedSourceError,
    ValidationError,
    XrpcError,
)
from ._model.redact import RedactingFilter, protect_library_loggers

if TYPE_CHECKING:
    from ._backends.dataset import Dataset
    from ._model.progress import TransferProgress
    from ._model.sample import PackableSample, packable

# Imported on first use: numpy, httpx and friends cost ~1 s of start-up that the CLI's
# --help (and any script touching only the errors) should not pay.
_LAZY = {"Dataset": "._backends.dataset", "PackableSample": "._model.sample",
         "packable": "._model.sample", "TransferProgress": "._model.progress"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

__all__ = [
    "AtdataError",
    "AuthError",
    "ChecksumMismatchError",
    "ConfigurationError",
    "ConflictError",
    "CorruptShardError",
    "Dataset",
    "EntryError",
    "EntryNotFoundError",
    "ExecutorError",
    "FieldTypeError",
    "IdentityError",
    "IdentityNotFoundError",
    "LocalIndexError",
    "MalformedEntryError",
    "NotFoundError",
    "PackableSample",
    "PromotionBusyError",
    "RateLimitedError",
    "RecordNotFoundError",
    "RecordTooLargeError",
    "RedactingFilter",
    "SchemaNotFoundError",
    "ShardTransferError",
    "SourceChangedError",
    "StorageError",
    "TransferProgress",
    "UntrustedSourceError",
    "ValidationError",
    "XrpcError",
    "packable",
]

protect_library_loggers()
