"""atdata_async: publish WebDataset datasets from Redis + S3 to ATProto, async-first.

The async core lives here and in ``atdata_async.local``, ``.atmosphere`` and
``.promote``; ``atdata_async.sync`` mirrors it with blocking calls of the same signatures.
"""

from ._dataset import Dataset
from ._errors import (
    AtdataError,
    AuthError,
    ChecksumMismatchError,
    ConfigurationError,
    ConflictError,
    EntryError,
    EntryNotFoundError,
    IdentityError,
    IdentityNotFoundError,
    LocalIndexError,
    NotFoundError,
    PromotionBusyError,
    RateLimitedError,
    RecordNotFoundError,
    SchemaNotFoundError,
    ShardTransferError,
    SourceChangedError,
    StorageError,
    UntrustedSourceError,
    ValidationError,
    XrpcError,
)
from ._progress import TransferProgress
from ._sample import PackableSample, packable

__all__ = [
    "AtdataError",
    "AuthError",
    "ChecksumMismatchError",
    "ConfigurationError",
    "ConflictError",
    "Dataset",
    "EntryError",
    "EntryNotFoundError",
    "IdentityError",
    "IdentityNotFoundError",
    "LocalIndexError",
    "NotFoundError",
    "PackableSample",
    "PromotionBusyError",
    "RateLimitedError",
    "RecordNotFoundError",
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
