"""The one exception tree of atdata_async.

    AtdataError
    ├── ConfigurationError (ValueError)      bad credentials file, malformed URL or ref
    ├── ValidationError (ValueError)         an argument or record field is refused (names it)
    │   ├── FieldTypeError (TypeError)       ... because it has the wrong type
    │   └── RecordTooLargeError              the dataset record is over the PDS's size limit
    ├── EntryError (ValueError)              an entry that cannot be promoted (no data URLs, ...)
    │   └── MalformedEntryError              a local index entry that cannot be decoded (its key)
    ├── UntrustedSourceError (ValueError)    a record names a shard a reader refuses to touch
    ├── NotFoundError (KeyError)
    │   ├── SchemaNotFoundError              no such schema in the local index
    │   └── EntryNotFoundError               no such dataset entry
    ├── StorageError                         an S3 or Redis call failed; ``code`` when S3 gave one
    │   ├── ObjectNotFoundError (KeyError)   no such bucket, key or http(s) shard
    │   ├── SourceChangedError               a shard's bytes are not those recorded at insert
    │   ├── ChecksumMismatchError            a shard read has another sha256 than its record's
    │   ├── CorruptShardError (ValueError)   a shard is not a tar of samples (names the shard)
    │   ├── LocalIndexError                  the local index's Redis cannot be used
    │   └── ShardTransferError               one or more shards failed; lists each outcome
    ├── IdentityError                        a handle or DID cannot be resolved to its PDS
    │   └── IdentityNotFoundError (KeyError) no such handle or DID
    ├── PromotionBusyError                   a promotion/insert runs elsewhere; or this run lost it
    ├── ExecutorError                        the Dask cluster could not run a shard's copy
    └── XrpcError                            an XRPC call failed: status, error, message, method
        ├── AuthError                        not logged in, bad password, invalid token
        ├── RateLimitedError                 429, carries reset_at (epoch seconds)
        ├── ConflictError                    stale swap, record already exists
        └── RecordNotFoundError (KeyError)   RecordNotFound and friends

Foreign errors (botocore, redis, httpx) are translated at one seam per backend and
chained with ``raise ... from exc``. Messages never contain credentials.
"""

from __future__ import annotations

from collections.abc import Mapping


class AtdataError(Exception):
    """Root of every error raised by atdata_async."""


class ConfigurationError(AtdataError, ValueError):
    """A malformed argument: credentials, URL, schema ref."""


class ValidationError(AtdataError, ValueError):
    """A value breaks a lexicon limit; ``field`` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class FieldTypeError(ValidationError, TypeError):
    """An argument or field of the wrong type (``tags="x"``, ``license=["MIT"]``)."""


class RecordTooLargeError(ValidationError):
    """The dataset record's putRecord request would be over the PDS's limit: found when
    planning, before any copy or write. ``shards``, ``size`` and ``limit`` say by how much."""

    def __init__(self, shards: int, size: int, limit: int) -> None:
        fits = max(1, shards * limit // size - 1)
        super().__init__(
            "storage.shards",
            f"the dataset record lists {shards:,} shards and would be a {size:,}-byte "
            f"request, over the PDS's limit of {limit:,} bytes; publish fewer, larger shards "
            f"(about {fits:,} of these fit in one record) or split the dataset into several "
            "entries")
        self.shards, self.size, self.limit = shards, size, limit


class EntryError(AtdataError, ValueError):
    """An entry that cannot be used as asked (e.g. it has no data URLs)."""


class MalformedEntryError(EntryError):
    """A Redis key of the local index holds something that is not an entry (hand-written,
    truncated, another program's); ``key`` names it. Other entries stay readable."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


class NotFoundError(AtdataError, KeyError):
    """Something looked up by key does not exist."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else ""


class SchemaNotFoundError(NotFoundError):
    """No schema with that ref is stored."""


class EntryNotFoundError(NotFoundError):
    """No dataset entry with that name or CID is stored."""


class UntrustedSourceError(AtdataError, ValueError):
    """A published record names a shard location this reader refuses: a local path or
    ``file://`` URL, plain ``http://`` not asked for, a redirect to another host, or a
    bucket/endpoint other than the store passed for it."""


class StorageError(AtdataError):
    """An S3 operation failed; ``code`` is the S3 error code when there is one."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class ObjectNotFoundError(StorageError, NotFoundError):
    """The bucket, key or http(s) shard does not exist."""

    def __str__(self) -> str:
        return StorageError.__str__(self)


class SourceChangedError(StorageError):
    """A shard no longer holds the bytes the local index recorded (its ETag or sha256
    differs): publishing it would publish a wrong checksum. Re-insert the dataset."""


class ChecksumMismatchError(StorageError):
    """A shard's bytes, hashed while they streamed, are not the sha256 its record
    claims; ``url``, ``expected`` and ``actual`` say which and how."""

    def __init__(self, url: str, expected: str, actual: str) -> None:
        super().__init__(f"{url}: sha256 is {actual}, the record says {expected} "
                         f"(the shard changed after publication, or was tampered with)")
        self.url = url
        self.expected = expected
        self.actual = actual


class CorruptShardError(StorageError, ValueError):
    """A shard's bytes are not a WebDataset tar of decodable samples; the message names
    the shard and the member."""


class LocalIndexError(StorageError):
    """A Redis call of the local index failed (unreachable, refused, wrong database)."""


class ShardTransferError(StorageError):
    """Some shards failed to transfer; ``failures`` maps each failed URL to its error."""

    def __init__(self, failures: Mapping[str, BaseException], total: int) -> None:
        self.failures = dict(failures)
        lines = [f"  {url}: {type(e).__name__}: {e}" for url, e in self.failures.items()]
        super().__init__(
            f"{len(self.failures)} of {total} shard(s) failed:\n" + "\n".join(lines)
        )


class IdentityError(AtdataError):
    """A handle or DID could not be resolved to its PDS: the directory or server did
    not answer, or answered with something that is not a usable identity."""


class IdentityNotFoundError(IdentityError, NotFoundError):
    """No such handle or DID (the directory says so, or nothing claims the handle)."""

    def __str__(self) -> str:
        return IdentityError.__str__(self)


class PromotionBusyError(AtdataError):
    """Another live process holds this promotion's (or insert's) journal lease: a second
    run would fight it over the same multipart uploads. Also raised to a run that lost
    its lease (stalled past it, a newer run took over): it is fenced off the uploads."""


class ExecutorError(AtdataError):
    """The cluster running shard copies failed them (the scheduler is gone, or a task
    killed every worker it ran on); the journal keeps what finished, a rerun resumes."""


class XrpcError(AtdataError):
    """An XRPC call failed; carries the HTTP status, XRPC error name and message."""

    def __init__(
        self, method: str, status: int | None, error: str | None, message: str | None
    ) -> None:
        self.method = method
        self.status = status
        self.error = error
        self.message = message
        # only what is known: no "None" for a call that never got an HTTP status
        what = " ".join(str(x) for x in (status, error) if x)
        text = f"{method} failed" + (f": {what}" if what else "")
        super().__init__(text + (f": {message}" if message else ""))


class AuthError(XrpcError):
    """Not logged in, wrong password, or a token the server refuses."""


class RateLimitedError(XrpcError):
    """429 from the server; ``reset_at`` is the epoch second the limit resets."""

    def __init__(self, *args: object, reset_at: float | None = None) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.reset_at = reset_at


class ConflictError(XrpcError):
    """A swap went stale or a record already exists."""


class RecordNotFoundError(XrpcError, NotFoundError):
    """No such record (or repo) on the PDS."""

    def __str__(self) -> str:
        return XrpcError.__str__(self)
