"""AtmosphereIndex: read dataset and schema records back from any repo, on its own PDS."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from .._model.ids import parse_at_uri
from .._model.lexicon import (
    DATASET_COLLECTION,
    SCHEMA_COLLECTION,
    DatasetRecord,
    StorageBlobs,
    StorageExternal,
    StorageHttp,
    StorageS3,
    dataset_from_json,
    decode_metadata,
    schema_from_json,
)
from .xrpc import AtmosphereClient


@dataclass(frozen=True)
class AtmosphereDatasetEntry:
    """A published dataset, as read back from its record."""

    uri: str
    name: str
    schema_ref: str
    data_urls: list[str]
    description: str | None = None
    tags: list[str] = field(default_factory=list)
    license: str | None = None
    metadata: dict[str, Any] | None = None
    checksums: dict[str, str] = field(default_factory=dict)
    size: dict[str, int] | None = None
    storage: Any = None
    cid: str | None = None
    created_at: str | None = None
    pds_url: str | None = None  # the PDS the record was read from (its blobs are there)


def _shard_urls(storage: Any) -> tuple[list[str], dict[str, str]]:
    """(data URLs, {url: sha256 hex}) of a storage union member."""
    pairs: list[tuple[str, Any]] = []
    if isinstance(storage, StorageHttp):
        pairs = [(s.url, s.checksum) for s in storage.shards]
    elif isinstance(storage, StorageS3):
        pairs = [(f"s3://{storage.bucket}/{s.key}", s.checksum) for s in storage.shards]
    elif isinstance(storage, StorageExternal):
        pairs = [(u, None) for u in storage.urls]
    elif isinstance(storage, StorageBlobs):
        pairs = [(f"blob:{b.blob.get('ref', {}).get('$link', '')}", b.checksum)
                 for b in storage.blobs]
    urls = [u for u, _ in pairs]
    checksums = {u: c.digest for u, c in pairs
                 if c is not None and c.algorithm == "sha256" and c.digest}
    return urls, checksums


def entry_from_record(uri: str, record: DatasetRecord, cid: str | None) -> AtmosphereDatasetEntry:
    urls, checksums = _shard_urls(record.storage)
    size = {k: v for k, v in (("samples", record.size.samples), ("bytes", record.size.bytes),
                              ("shards", record.size.shards)) if v is not None} \
        if record.size else None
    return AtmosphereDatasetEntry(
        uri=uri, name=record.name, schema_ref=record.schema_ref, data_urls=urls,
        description=record.description, tags=list(record.tags or []), license=record.license,
        metadata=decode_metadata(record.metadata), checksums=checksums, size=size,
        storage=record.storage, cid=cid, created_at=record.created_at)


class AtmosphereIndex:
    """Datasets and schemas published on ATProto, read through a client.

    Each read goes to the PDS of the record's author (``client.resolve_pds``): the
    client's own for its own repo, any other unauthenticated, so no login is needed.
    """

    def __init__(self, client: AtmosphereClient) -> None:
        self.client = client

    def __repr__(self) -> str:
        return f"AtmosphereIndex({self.client!r})"

    async def _service(self, repo: str | None) -> str:
        """Where ``repo`` lives (None: the client's own repo)."""
        return await self.client.resolve_pds(repo if repo is not None else self.client.did)

    async def get_dataset(self, at_uri: str) -> AtmosphereDatasetEntry:
        """The dataset record at ``at_uri`` (ValueError if it is not one; KeyError if gone)."""
        uri = parse_at_uri(at_uri, DATASET_COLLECTION)
        service = await self._service(uri.repo)
        got = await self.client.get_record(uri.collection, uri.rkey, repo=uri.repo,
                                           service=service)
        entry = entry_from_record(got.get("uri", at_uri), dataset_from_json(got["value"]),
                                  got.get("cid"))
        return replace(entry, pds_url=service)

    async def get_schema(self, at_uri: str) -> dict[str, Any]:
        """The schema record's JSON value (validated against our Struct)."""
        uri = parse_at_uri(at_uri, SCHEMA_COLLECTION)
        got = await self.client.get_record(uri.collection, uri.rkey, repo=uri.repo,
                                           service=await self._service(uri.repo))
        schema_from_json(got["value"])
        return got["value"]

    async def list_datasets(self, repo: str | None = None) -> list[AtmosphereDatasetEntry]:
        """Every dataset record of a repo (the client's own by default)."""
        service = await self._service(repo)
        out = []
        async for rec in self.client.list_records(DATASET_COLLECTION, repo=repo,
                                                  service=service):
            entry = entry_from_record(rec["uri"], dataset_from_json(rec["value"]),
                                      rec.get("cid"))
            out.append(replace(entry, pds_url=service))
        return out

    async def list_schemas(self, repo: str | None = None) -> list[dict[str, Any]]:
        """Every schema record of a repo as ``{uri, cid, value}``."""
        service = await self._service(repo)
        return [rec async for rec in self.client.list_records(SCHEMA_COLLECTION, repo=repo,
                                                              service=service)]
