"""The public surface, pinned: a change here is a change users see."""

from __future__ import annotations

import importlib

import pytest

PUBLIC = {
    "atdata_async": [
        "AtdataError", "AuthError", "ChecksumMismatchError", "ConfigurationError",
        "ConflictError", "CorruptShardError", "Dataset", "EntryError", "EntryNotFoundError",
        "ExecutorError", "FieldTypeError", "IdentityError", "IdentityNotFoundError",
        "LocalIndexError", "MalformedEntryError",
        "NotFoundError", "PackableSample", "PromotionBusyError",
        "RateLimitedError", "RecordNotFoundError", "RecordTooLargeError",
        "RedactingFilter", "SchemaNotFoundError",
        "ShardTransferError", "SourceChangedError", "StorageError", "TransferProgress",
        "UntrustedSourceError", "ValidationError",
        "XrpcError", "packable"],
    "atdata_async.local": [
        "LocalDatasetEntry", "LocalIndex", "ObjectNotFoundError", "S3Credentials",
        "S3DataStore", "ShardUpload"],
    "atdata_async.atmosphere": [
        "AtUri", "AtmosphereClient", "AtmosphereDatasetEntry", "AtmosphereIndex", "Checksum",
        "DATASET_COLLECTION", "DatasetRecord", "DatasetSize", "HttpShard", "S3Shard",
        "SCHEMA_COLLECTION", "SchemaRecord", "Session", "StorageBlobs", "StorageExternal",
        "StorageHttp", "StorageS3", "next_tid", "parse_at_uri"],
    "atdata_async.promote": [
        "CleanupReport", "CredentialSource", "DaskExecutor", "PromotionOutcome",
        "PromotionPlan", "ShardPlan",
        "cleanup_promotions", "plan_promotion", "preview_promotion", "promote_many",
        "promote_to_atmosphere"],
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_public_names_of_the_core_and_its_facade(module):
    core = importlib.import_module(module)
    facade = importlib.import_module(module.replace("atdata_async", "atdata_async.sync", 1))
    assert sorted(core.__all__) == sorted(PUBLIC[module])
    assert sorted(facade.__all__) == sorted(PUBLIC[module])
    for name in PUBLIC[module]:
        assert getattr(core, name) is not None and getattr(facade, name) is not None


def test_errors_keep_the_seeds_promises():
    import atdata_async as a

    assert issubclass(a.SchemaNotFoundError, KeyError)
    assert issubclass(a.EntryError, ValueError) and issubclass(a.ValidationError, ValueError)
    assert issubclass(a.RecordNotFoundError, KeyError) and issubclass(a.RecordNotFoundError,
                                                                      a.XrpcError)
    for name in PUBLIC["atdata_async"]:
        obj = getattr(a, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, a.AtdataError), name
            assert obj.__name__ not in ("ConnectionError", "TimeoutError")
