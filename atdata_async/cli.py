"""``atdata-async``: promote local datasets to ATProto from the shell.

    atdata-async ls
    atdata-async schemas [--remote]
    atdata-async promote NAME [--copy-to s3://bucket/prefix --credentials FILE.env]
                              [--name N] [--description D] [--tag T]... [--license L]
                              [--dry-run]
    atdata-async show AT_URI

The PDS and account come from --pds-url/--handle or ATDATA_PDS_URL, ATDATA_HANDLE and
ATDATA_PASSWORD (the password is read from the environment only, never a flag);
Redis from --redis-url or ATDATA_REDIS_URL. Errors are one line plus a hint; --debug
shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import anyio

from ._atindex import AtmosphereIndex
from ._errors import (
    AtdataError,
    AuthError,
    ConfigurationError,
    LocalIndexError,
    NotFoundError,
    ObjectNotFoundError,
    RateLimitedError,
    ShardTransferError,
    SourceChangedError,
    StorageError,
    ValidationError,
)
from ._index import DEFAULT_REDIS_URL, LocalIndex
from ._progress import TransferProgress
from ._promote import preview_promotion, promote_to_atmosphere
from ._store import S3DataStore
from ._urls import parse_s3_url
from ._xrpc import AtmosphereClient

MIB = 1024 * 1024


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="atdata-async", description="Publish local WebDataset datasets to ATProto.",
        epilog="Environment: ATDATA_REDIS_URL, ATDATA_PDS_URL, ATDATA_HANDLE, ATDATA_PASSWORD, "
               "ATDATA_SOURCE_CREDENTIALS (a .env for the shards' current S3 store).")
    parser.add_argument("--redis-url", default=os.environ.get("ATDATA_REDIS_URL",
                                                              DEFAULT_REDIS_URL))
    parser.add_argument("--pds-url", default=os.environ.get("ATDATA_PDS_URL",
                                                            "https://bsky.social"))
    parser.add_argument("--handle", default=os.environ.get("ATDATA_HANDLE"))
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("ls", help="list local dataset entries")
    schemas = commands.add_parser("schemas", help="list schemas (local, or --remote on the PDS)")
    schemas.add_argument("--remote", action="store_true")
    show = commands.add_parser("show", help="show a published dataset")
    show.add_argument("at_uri")

    promote = commands.add_parser("promote", help="publish a local entry as ATProto records")
    promote.add_argument("entry", metavar="NAME", help="the local entry's name")
    promote.add_argument("--copy-to", metavar="s3://BUCKET[/PREFIX]",
                         help="copy the shards to this S3 location first")
    promote.add_argument("--credentials", metavar="FILE.env",
                         help="credentials (.env) of the --copy-to store")
    promote.add_argument("--source-credentials", metavar="FILE.env",
                         default=os.environ.get("ATDATA_SOURCE_CREDENTIALS"),
                         help="credentials (.env) of the store the shards are in now")
    promote.add_argument("--name", help="the published name (default: the entry's)")
    promote.add_argument("--description")
    promote.add_argument("--tag", action="append", dest="tags", metavar="TAG",
                         help="a discovery tag (repeatable)")
    promote.add_argument("--license")
    promote.add_argument("--concurrency", type=int, default=8)
    promote.add_argument("--dry-run", action="store_true",
                         help="print the plan and the record; write nothing")
    return parser


HINTS: list[tuple[type[BaseException], str]] = [
    (AuthError, "check ATDATA_HANDLE / ATDATA_PASSWORD (an app password) and --pds-url"),
    (RateLimitedError, "the PDS is rate limiting this account; try again after the reset"),
    (ValidationError, "shorten or fix the named field; ATProto records allow no floats"),
    (ShardTransferError, "nothing was published and no partial upload was left; rerun"),
    (LocalIndexError, "check --redis-url / ATDATA_REDIS_URL: is redis-server running there?"),
    (StorageError, "check the S3 endpoint, bucket and credentials"),
    (NotFoundError, "`atdata-async ls` lists local entries; `schemas` lists schemas"),
    (ConfigurationError, "see `atdata-async COMMAND --help`"),
]


SHARD_HINTS: list[tuple[type[BaseException], str]] = [
    (SourceChangedError, "re-insert the dataset: its shards are not what the index recorded"),
    (ObjectNotFoundError, "check the bucket and the S3 endpoint of the store named above"),
]


def hint_for(exc: BaseException) -> str | None:
    """The hint for an error; a failed batch is explained by its shards' causes when one
    of them says more (a shard changed since insert, a missing bucket)."""
    causes = list(exc.failures.values()) if isinstance(exc, ShardTransferError) else []
    for cause in causes:
        for kind, hint in SHARD_HINTS:
            if isinstance(cause, kind):
                return hint
    return next((hint for kind, hint in HINTS if isinstance(exc, kind)), None)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return anyio.run(run, args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (AtdataError, ValueError, KeyError, OSError) as exc:
        if args.debug:
            raise
        message = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"error: {message.splitlines()[0] if message else type(exc).__name__}",
              file=sys.stderr)
        for line in message.splitlines()[1:6]:
            print(f"  {line.strip()}", file=sys.stderr)
        hint = hint_for(exc)
        if hint:
            print(f"hint: {hint}", file=sys.stderr)
        return 1


async def run(args: argparse.Namespace) -> int:
    async with LocalIndex(args.redis_url) as index:
        if args.command == "ls":
            return output(args, [entry_row(e) for e in await index.list_entries()], print_entries)
        if args.command == "schemas" and not args.remote:
            rows = [{"ref": f"{s['name']}@{s['version']}", "fields": len(s.get("fields", [])),
                     "description": s.get("description")} for s in await index.list_schemas()]
            return output(args, rows, print_schemas)
        async with AtmosphereClient(args.pds_url) as client:
            if args.command == "show":
                await login(args, client, required=False)
                entry = await AtmosphereIndex(client).get_dataset(args.at_uri)
                return output(args, entry_dict(entry), print_dataset)
            await login(args, client, required=True)
            if args.command == "schemas":
                rows = [{"uri": r["uri"], "ref": f"{r['value'].get('name')}@"
                         f"{r['value'].get('version')}"}
                        async for r in client.list_records("science.alt.dataset.schema")]
                return output(args, rows, print_schemas)
            return await promote(args, index, client)


async def login(args: argparse.Namespace, client: AtmosphereClient, *, required: bool) -> None:
    password = os.environ.get("ATDATA_PASSWORD")
    if args.handle and password:
        await client.login(args.handle, password)
    elif required:
        raise AuthError("login", None, "NoCredentials",
                        "set ATDATA_HANDLE (or --handle) and ATDATA_PASSWORD to log in")


async def promote(args: argparse.Namespace, index: LocalIndex,
                  client: AtmosphereClient) -> int:
    entry = await index.get_entry_by_name(args.entry)
    if args.source_credentials:
        index.data_store = S3DataStore(args.source_credentials,
                                       bucket=_first_bucket(entry.data_urls),
                                       max_concurrency=args.concurrency)
    dest, prefix = None, "promoted"
    if args.copy_to:
        if not args.credentials:
            raise ConfigurationError("--copy-to needs --credentials FILE.env for that store")
        location = parse_s3_url(args.copy_to.rstrip("/") + "/_")
        dest = S3DataStore(args.credentials, bucket=location.bucket,
                           max_concurrency=args.concurrency)
        prefix = location.key.removesuffix("_").strip("/") or "promoted"
    kwargs: dict[str, Any] = dict(data_store=dest, name=args.name, description=args.description,
                                  tags=args.tags, license=args.license, copy_prefix=prefix)
    try:
        if args.dry_run:
            plan = await preview_promotion(entry, index, client, **kwargs)
            return output(args, plan, print_plan)
        show = ProgressLine() if sys.stderr.isatty() and not args.json else None
        uri = await promote_to_atmosphere(entry, index, client, max_concurrency=args.concurrency,
                                          progress=show, **kwargs)
        if show:
            show.finish()
        return output(args, {"uri": uri}, lambda r: print(f"published {r['uri']}"))
    finally:
        for store in (dest, index.data_store):
            if store is not None:
                await store.aclose()


def _first_bucket(urls: list[str]) -> str:
    for url in urls:
        if url.startswith("s3://"):
            return parse_s3_url(url).bucket
    raise ConfigurationError("--source-credentials is only for entries with s3:// URLs")


class ProgressLine:
    """One self-rewriting line on stderr: shards, bytes, throughput, ETA."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.last = 0.0

    def __call__(self, p: TransferProgress) -> None:
        now = time.monotonic()
        if now - self.last < 0.1 and p.shards_done < p.shards_total:
            return
        self.last = now
        rate = p.bytes_done / max(now - self.start, 1e-6)
        eta = max(p.bytes_total - p.bytes_done, 0) / rate if rate else 0
        sys.stderr.write(f"\r  shards {p.shards_done}/{p.shards_total}  "
                         f"{p.bytes_done / MIB:.1f}/{p.bytes_total / MIB:.1f} MiB  "
                         f"{rate / MIB:.1f} MiB/s  ETA {eta:.0f}s   ")
        sys.stderr.flush()

    def finish(self) -> None:
        sys.stderr.write("\n")


# -- output ------------------------------------------------------------------------------


def output(args: argparse.Namespace, data: Any, human: Callable[[Any], None]) -> int:
    if args.json:
        print(json.dumps(data, indent=2, default=str))
    else:
        human(data)
    return 0


def entry_row(entry: Any) -> dict[str, Any]:
    return {"name": entry.name, "cid": entry.cid, "schema": entry.schema_ref,
            "shards": len(entry.data_urls), "bytes": sum(entry.shard_sizes.values()) or None}


def entry_dict(entry: Any) -> dict[str, Any]:
    return {"uri": entry.uri, "name": entry.name, "schema": entry.schema_ref,
            "description": entry.description, "tags": entry.tags, "license": entry.license,
            "size": entry.size, "metadata": entry.metadata, "data_urls": entry.data_urls,
            "checksums": entry.checksums}


def print_entries(rows: list[dict[str, Any]]) -> None:
    if not rows:
        print("no local entries")
    for r in sorted(rows, key=lambda r: r["name"]):
        size = f"{r['bytes'] / MIB:.1f} MiB" if r["bytes"] else "size unknown"
        print(f"{r['name']:<32} {r['shards']:>5} shards  {size:>14}  {r['schema']}")


def print_schemas(rows: list[dict[str, Any]]) -> None:
    if not rows:
        print("no schemas")
    for r in rows:
        print(f"{r['ref']:<40} {r.get('uri') or str(r.get('fields')) + ' fields'}")


def print_dataset(d: dict[str, Any]) -> None:
    print(f"{d['name']}  ({d['uri']})")
    for label, key in (("schema", "schema"), ("description", "description"),
                       ("license", "license")):
        if d[key]:
            print(f"  {label + ':':<13}{d[key]}")
    if d["tags"]:
        print(f"  {'tags:':<13}{', '.join(d['tags'])}")
    if d["size"]:
        print(f"  {'size:':<13}" + ", ".join(f"{v} {k}" for k, v in d["size"].items()))
    if d["metadata"]:
        print(f"  {'metadata:':<13}{json.dumps(d['metadata'])}")
    print("  shards:")
    for url in d["data_urls"]:
        digest = d["checksums"].get(url)
        print(f"    {url}" + (f"  sha256:{digest[:16]}..." if digest else ""))


def print_plan(plan: dict[str, Any]) -> None:
    schema = plan["schema"]
    print(f"schema: {schema['action']} {schema['uri']}")
    verb = "copy" if plan["copies"] else "keep"
    print(f"shards: {verb} {len(plan['shards'])} ({plan['bytes'] / MIB:.1f} MiB known)")
    for s in plan["shards"][:20]:
        print(f"  {s['source']}" + (f" -> {s['destination']}" if s["destination"] else ""))
    if len(plan["shards"]) > 20:
        print(f"  ... {len(plan['shards']) - 20} more")
    print("record (checksums are filled in when the shards are read):")
    print(json.dumps(plan["record"], indent=2))
    print("dry run: nothing was written")


if __name__ == "__main__":
    sys.exit(main())
