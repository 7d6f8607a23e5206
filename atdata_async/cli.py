"""``atdata-async``: index, publish and read WebDataset datasets from the shell.

    atdata-async insert PATHS|PATTERN --name N (--schema module:Class | --schema-ref REF)
                        [--to s3://bucket/prefix [--credentials FILE.env]] [--meta k=v]...
    atdata-async ls
    atdata-async schemas [--remote]
    atdata-async schemas publish module:Class --version V
    atdata-async promote NAME... | --all | --match GLOB
                         [--copy-to s3://bucket/prefix --credentials FILE.env]
                              [--name N] [--description D] [--tag T]... [--license L]
    atdata-async show AT_URI
    atdata-async dev up|down|status          (in a clone: local services to try it on)

Global flags (--json, --debug, --redis-url, --pds-url, --handle, --progress/--no-progress,
--dry-run) go anywhere on the line. The password is read from ATDATA_PASSWORD only.
Errors are one line plus a hint (JSON on stderr with --json); the exit code says which
kind of failure it was (see EXIT_CODES). Heavy modules (aioboto3, numpy, webdataset) are
imported by the commands that need them, never at module level: the CLI starts fast.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._errors import (
    AtdataError,
    AuthError,
    ConfigurationError,
    LocalIndexError,
    NotFoundError,
    ObjectNotFoundError,
    PromotionBusyError,
    RateLimitedError,
    ShardTransferError,
    SourceChangedError,
    StorageError,
    ValidationError,
    XrpcError,
)

if TYPE_CHECKING:
    from ._backends.redis_index import LocalIndex
    from ._backends.s3_store import S3DataStore
    from ._backends.xrpc import AtmosphereClient
    from ._model.progress import TransferProgress

MIB = 1024 * 1024
DEFAULT_REDIS_URL = "redis://localhost:6379/0"
DEFAULT_PDS_URL = "https://bsky.social"
S3_MIN_PART = 5 * MIB           # S3's limits on one multipart part
S3_MAX_PART = 5 * 1024 * MIB

# (exit code, stable JSON ``error`` code): documented in docs/cli.md
EXIT_CODES = {
    "ok": 0,
    "error": 1,          # anything not below: a record or entry that cannot be published
    "usage": 2,          # a bad flag or argument, a malformed credentials file or URL
    "not_found": 3,      # no such entry, schema, record, file, bucket or key
    "auth": 4,           # not logged in, wrong handle or password, refused token
    "storage": 5,        # S3 or Redis failed or cannot be reached
    "rate_limited": 6,   # the PDS rate limits this account
    "pds": 7,            # the PDS cannot be reached or refused the call
    "interrupted": 130,  # Ctrl-C (SIGINT); SIGTERM and SIGHUP exit 128 + signal number
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("atdata-async")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


# -- arguments ---------------------------------------------------------------------------


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, got {text}")
    return value


_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]i?b?|b)?\s*$", re.I)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": MIB, "g": 1024 * MIB}


def part_size(text: str) -> int:
    """A multipart part size like ``16MiB``: S3 takes 5 MiB to 5 GiB per part."""
    match = _SIZE.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"expected a size like 16MiB, got {text!r}")
    value = int(match.group(1)) * _UNITS[(match.group(2) or "")[:1].lower()]
    if not S3_MIN_PART <= value <= S3_MAX_PART:
        raise argparse.ArgumentTypeError(
            f"S3 takes parts of 5MiB to 5GiB, got {text} ({value} bytes)")
    return value


def meta_item(text: str) -> tuple[str, Any]:
    """``key=value``: the value as JSON when it is an int, bool, list or object (ATProto
    records allow no floats), else as the string it is."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    if isinstance(value, float) or value is None:
        value = raw
    return key.strip(), value


def nonempty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def global_flags(with_defaults: bool) -> argparse.ArgumentParser:
    """The flags every command takes, anywhere on the line. Only the top-level parser
    sets defaults; the copies on subcommands must not overwrite a value given earlier."""
    flags = argparse.ArgumentParser(add_help=False)
    env = os.environ.get

    def default(value: Any) -> Any:
        return value if with_defaults else argparse.SUPPRESS

    group = flags.add_argument_group("global options (accepted anywhere)")
    group.add_argument("--redis-url", metavar="URL",
                       default=default(env("ATDATA_REDIS_URL", DEFAULT_REDIS_URL)),
                       help="the local index (env ATDATA_REDIS_URL)")
    group.add_argument("--pds-url", metavar="URL",
                       default=default(env("ATDATA_PDS_URL", DEFAULT_PDS_URL)),
                       help="the PDS (env ATDATA_PDS_URL)")
    group.add_argument("--handle", default=default(env("ATDATA_HANDLE")),
                       help="the account (env ATDATA_HANDLE; password: ATDATA_PASSWORD)")
    group.add_argument("--json", action="store_true", default=default(False),
                       help="machine-readable output; errors as JSON on stderr")
    group.add_argument("--debug", action="store_true", default=default(False),
                       help="show tracebacks")
    group.add_argument("--progress", action=argparse.BooleanOptionalAction,
                       default=default(None),
                       help="draw a progress line on stderr (default: when it is a terminal)")
    group.add_argument("--dry-run", action="store_true", default=default(False),
                       help="check everything that can be checked, write nothing")
    return flags


class Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so usage errors share the error path."""

    def error(self, message: str) -> None:  # type: ignore[override]
        if message.endswith("required: command"):
            message = "a command is needed: " + ", ".join(self.commands)
        raise UsageError(message, self.prog)

    commands: tuple[str, ...] = ("insert", "ls", "schemas", "show", "promote", "cleanup",
                                 "login", "logout", "dev")


class UsageError(Exception):
    """A bad command line; ``prog`` is the (sub)command whose --help explains it."""

    def __init__(self, message: str, prog: str) -> None:
        super().__init__(message)
        self.prog = prog


class _LazyVersion(argparse.Action):
    """--version, looked up only when asked for: importlib.metadata costs ~0.05-0.1 s
    of start-up that every other command would pay (speed, #10)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        print(f"atdata-async {_version()}")
        parser.exit()


def store_flags(parser: argparse.ArgumentParser, store: str, parts: str | None = None) -> None:
    """--credentials of a command's S3 store; with ``parts``, its transfer flags too."""
    parser.add_argument("--credentials", metavar="FILE.env",
                        help=f"credentials (.env) of {store} (default: AWS_* in the "
                             "environment)")
    if parts is None:
        parser.set_defaults(concurrency=8)
        return
    parser.add_argument("--concurrency", type=positive_int, default=8, metavar="N")
    parser.add_argument("--part-size", type=part_size, default=16 * MIB, metavar="SIZE",
                        help=f"{parts}, 5MiB..5GiB (default 16MiB)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="atdata-async", parents=[global_flags(True)],
        description="Index, publish and read WebDataset datasets (Redis + S3 -> ATProto).",
        epilog="Environment: ATDATA_REDIS_URL, ATDATA_PDS_URL, ATDATA_HANDLE, ATDATA_PASSWORD, "
               "ATDATA_SOURCE_CREDENTIALS (a .env for the shards' current S3 store), and "
               "AWS_ENDPOINT / AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY as default S3 "
               "credentials. Exit codes: 0 ok, 1 error, 2 usage, 3 not found, 4 auth, "
               "5 storage, 6 rate limited, 7 PDS, 130 interrupted.")
    parser.add_argument("--version", action=_LazyVersion, help="show the version and exit")
    commands = parser.add_subparsers(dest="command", required=True,
                                     parser_class=Parser)
    common = [global_flags(False)]

    def command(name: str, help: str, parent: Any = commands) -> argparse.ArgumentParser:
        return parent.add_parser(name, help=help, description=help, parents=common)

    insert = command("insert", "index local shards, uploading them to S3 with --to")
    insert.add_argument("paths", nargs="+", metavar="PATHS",
                        help="tar shards: paths, globs or a brace pattern "
                             "(features-{000000..000003}.tar)")
    insert.add_argument("--name", required=True, type=nonempty, help="the entry's name")
    which = insert.add_mutually_exclusive_group(required=True)
    which.add_argument("--schema", metavar="module:Class",
                       help="the sample type (imported; its schema is published if new)")
    which.add_argument("--schema-ref", metavar="REF",
                       help="a schema already in the local index (`atdata-async schemas`)")
    insert.add_argument("--to", metavar="s3://BUCKET[/PREFIX]",
                        help="upload the shards there (default: index them where they are)")
    store_flags(insert, "the --to store", parts="multipart part size")
    insert.add_argument("--meta", action="append", type=meta_item, default=[],
                        metavar="KEY=VALUE", help="metadata (repeatable)")

    command("ls", "list local dataset entries")

    schemas = command("schemas", "list schemas (local, or --remote on the PDS); publish one")
    schemas.add_argument("--remote", action="store_true", help="the account's schema records")
    schema_commands = schemas.add_subparsers(dest="schemas_command", metavar="SUBCOMMAND",
                                             parser_class=Parser)
    command("list", "list schemas (the default)", schema_commands).add_argument(
        "--remote", action="store_true", help="the account's schema records")
    publish = command("publish", "store a sample type's schema in the local index",
                      schema_commands)
    publish.add_argument("sample_type", metavar="module:Class")
    publish.add_argument("--version", dest="schema_version", default="1.0.0",
                         help="semver (default 1.0.0)")
    publish.add_argument("--description")

    show = command("show", "show a published dataset (no login needed)")
    show.add_argument("at_uri", metavar="AT_URI")

    promote = command("promote", "publish local entries as ATProto records")
    promote.add_argument("entry", metavar="NAME", nargs="*",
                         help="the local entries' names (several: one batch)")
    promote.add_argument("--all", action="store_true", dest="all_entries",
                         help="promote every local entry (one batch; reruns add what is "
                              "missing)")
    promote.add_argument("--match", metavar="GLOB",
                         help="promote the entries whose names match the glob (one batch)")
    promote.add_argument("--copy-to", metavar="s3://BUCKET[/PREFIX]",
                         help="copy the shards to this S3 location first")
    store_flags(promote, "the --copy-to store", parts="multipart part size for copies")
    promote.add_argument("--server-copies", type=positive_int, default=256, metavar="N",
                         help="server-side copies (same endpoint and account) at once; they "
                              "hold no buffer, so more than --concurrency (default 256)")
    promote.add_argument("--streamed-copies", type=positive_int, default=16, metavar="N",
                         help="streamed copies (another store, sha256 recorded at insert: "
                              "the source's GET passed into the PUT) at once; they hold "
                              "only chunk buffers, so more than --concurrency (default 16)")
    promote.add_argument("--source-credentials", metavar="FILE.env",
                         default=os.environ.get("ATDATA_SOURCE_CREDENTIALS"),
                         help="credentials (.env) of the store the shards are in now "
                              "(default: AWS_* in the environment, else --credentials)")
    promote.add_argument("--name", type=nonempty, help="the published name (default: the "
                                                       "entry's)")
    promote.add_argument("--description")
    promote.add_argument("--tag", action="append", dest="tags", metavar="TAG",
                         help="a discovery tag (repeatable)")
    promote.add_argument("--license")
    promote.add_argument("--no-verify", dest="verify", action="store_false",
                         help="publish even what cannot be verified (no checksum, no "
                              "credentials to read the shards); a warning is printed")
    promote.add_argument("--max-record-bytes", type=positive_int, metavar="BYTES",
                         help="the PDS's request size limit a dataset record must fit "
                              "(default 1000000, the reference PDS's)")
    promote.add_argument("--max-rate-limit-wait", type=seconds, metavar="SECONDS",
                         help="wait out a spent PDS write budget that resets within this "
                              "long (default 3600), else fail")
    # scale-out (#13): the shard copies on a Dask cluster; this process keeps the PDS writes
    promote.add_argument("--scheduler", metavar="tcp://HOST:8786",
                         default=os.environ.get("ATDATA_SCHEDULER"),
                         help="copy the shards on this Dask cluster (needs atdata-async[dask])")
    promote.add_argument("--worker-credentials-prefix", metavar="PREFIX", default="",
                         help="workers read S3 credentials from their own environment's "
                              "PREFIXAWS_ACCESS_KEY_ID/PREFIXAWS_SECRET_ACCESS_KEY "
                              "(default: AWS_*); never sent to the cluster")

    cleanup = command("cleanup", "list (--yes: remove) what failed or killed promotions or "
                      "inserts left")
    cleanup.add_argument("location", metavar="s3://BUCKET[/PREFIX]",
                         help="where promotions copied to (the --copy-to of promote), or an "
                              "insert's --to")
    store_flags(cleanup, "that store")
    cleanup.add_argument("--forget", action="store_true",
                         help="also give up promotions that could be resumed (not running)")
    cleanup.add_argument("--yes", action="store_true", help="remove (default: a dry run)")

    # speed (#10): a saved session, so that a command logs in only when it must
    command("login", "log in once (ATDATA_HANDLE/--handle, ATDATA_PASSWORD) and keep the "
                     "session for later commands (owner-only, in the user's config dir)")
    command("logout", "forget the saved session of --pds-url")

    dev = command("dev", "local services to try the commands on (from a clone)")
    dev.add_argument("action", choices=["up", "down", "status"])
    dev.add_argument("--env-file", metavar="FILE",
                     help="where to write the environment (default .dev/env in the clone)")
    return parser


# -- errors ------------------------------------------------------------------------------


BUSY_HINT = ("another run holds it now (or took it over from this one, which touched none "
             "of its uploads): let that run finish, or rerun once it has stopped")
HINTS: list[tuple[type[BaseException], str]] = [
    (PromotionBusyError, BUSY_HINT),
    (RateLimitedError, "the PDS is rate limiting this account; try again after the reset"),
    (AuthError, "check ATDATA_HANDLE / ATDATA_PASSWORD (an app password) and --pds-url"),
    (ValidationError, "fix the named field and run the command again"),
    (LocalIndexError, "check --redis-url / ATDATA_REDIS_URL: is redis-server running there?"),
    (SourceChangedError, "re-insert the dataset: its shards are not what the index recorded"),
    (StorageError, "check the S3 endpoint, bucket and credentials"),
    (ConfigurationError, "see `atdata-async --help`"),
]

SHARD_HINTS: list[tuple[type[BaseException], str]] = [
    (SourceChangedError, "re-insert the dataset: its shards are not what the index recorded"),
    (ObjectNotFoundError, "check the bucket and the S3 endpoint of the store named above"),
    (PromotionBusyError, BUSY_HINT),
]


def hint_for(exc: BaseException, args: argparse.Namespace | None = None) -> str | None:
    """The hint for an error: the most specific that helps. A failed batch is explained by
    its shards' causes when one of them says more (a shard changed, a missing bucket)."""
    command = getattr(args, "command", None)
    if isinstance(exc, ShardTransferError):
        for cause in exc.failures.values():
            for kind, hint in SHARD_HINTS:
                if isinstance(cause, kind):
                    return hint
        return "check the S3 endpoint, bucket and credentials, then run the command again"
    if isinstance(exc, NotFoundError) and not isinstance(exc, ObjectNotFoundError):
        if "schema" in str(exc):
            return "`atdata-async schemas` lists local schemas; `schemas publish` adds one"
        if "record" in str(exc).lower() or isinstance(exc, XrpcError):
            return "check the at:// URI (`atdata-async schemas --remote` lists your records)"
        return "`atdata-async ls` lists local entries"
    if isinstance(exc, XrpcError) and not isinstance(exc, AuthError | RateLimitedError):
        if exc.status is None:
            return "check --pds-url / ATDATA_PDS_URL: is a PDS answering there?"
        if "answered with a web page" in (exc.message or ""):
            return "check --pds-url / ATDATA_PDS_URL: it should be the PDS's base URL"
        return None
    if isinstance(exc, ObjectNotFoundError) and exc.code == "NoSuchBucket":
        return "create the bucket, or check the s3:// URL and the store's AWS_ENDPOINT"
    if isinstance(exc, ConfigurationError) and command == "dev":
        return "clone the repository and run `scripts/demo --up` in it"
    if isinstance(exc, ConfigurationError) and command:
        return f"see `atdata-async {command} --help`"
    return next((hint for kind, hint in HINTS if isinstance(exc, kind)), None)


# The stable ``error`` code of an exception (and so its exit code): the first that fits.
ERROR_CODES: list[tuple[type[BaseException] | tuple[type[BaseException], ...], str]] = [
    ((UsageError, ConfigurationError), "usage"),
    (RateLimitedError, "rate_limited"),
    (AuthError, "auth"),
    ((ShardTransferError, LocalIndexError, SourceChangedError), "storage"),
    ((NotFoundError, FileNotFoundError), "not_found"),
    (StorageError, "storage"),
    (XrpcError, "pds"),
]


def error_code(exc: BaseException) -> str:
    return next((code for kinds, code in ERROR_CODES if isinstance(exc, kinds)), "error")


def message_of(exc: BaseException) -> str:
    message = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        message = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return message or type(exc).__name__


def report(args: argparse.Namespace | None, code: str, message: str,
           hint: str | None, **extra: Any) -> None:
    """One error on stderr: ``error: ...`` + detail lines + ``hint: ...``, or one JSON
    object ``{"error": code, "message": ..., "hint": ..., "exit_code": n}``."""
    lines = message.splitlines() or [message]
    if args is not None and getattr(args, "json", False):
        body = {"error": code, "message": lines[0], "details": [x.strip() for x in lines[1:]],
                "hint": hint, "exit_code": EXIT_CODES.get(code, 1), **extra}
        if not body["details"]:
            del body["details"]
        print(json.dumps(body), file=sys.stderr)
        return
    print(f"error: {lines[0]}", file=sys.stderr)
    print_some([line.strip() for line in lines[1:]], most=5, file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)


# -- signals -----------------------------------------------------------------------------


class Interrupt:
    """SIGTERM and SIGHUP take Ctrl-C's path: the running command is cancelled (open
    multipart uploads aborted, clients closed) and the exit code says which signal."""

    signum: int | None = None

    @classmethod
    def install(cls) -> None:
        for signum in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, cls.handle)

    @classmethod
    def handle(cls, signum: int, frame: Any) -> None:
        cls.signum = signum
        on_sigint = signal.getsignal(signal.SIGINT)
        if callable(on_sigint):  # asyncio's runner cancels the main task; else raises
            on_sigint(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt

    @classmethod
    def exit_code(cls) -> int:
        return 128 + (cls.signum or signal.SIGINT)


class Outcome:
    """What the command achieved before it ended, so an interruption is told truthfully."""

    def __init__(self) -> None:
        self.written: list[str] = []   # records written (at:// URIs), in order
        self.failed: list[BaseException] = []  # a batch's failed entries (exit code)

    def interrupted_message(self) -> str:
        name = signal.Signals(Interrupt.signum or signal.SIGINT).name
        if not self.written:
            return f"interrupted ({name}); nothing was published"
        return (f"interrupted ({name}) after writing {', '.join(self.written)}; "
                "that record exists (run the command again to replace it)")


# -- main --------------------------------------------------------------------------------


def skip_httpx_cli() -> None:
    """httpx imports its own command line tool with the package (click and pygments when
    they are installed: 0.03-0.06 s, encode/httpx#3547); this process never runs it, so
    ``httpx.main`` is left as httpx's stub (start-up, #10)."""
    if "httpx" not in sys.modules:
        sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    """``atdata-async`` (and ``python -m atdata_async.cli``): argv None means sys.argv, the
    command line of a process that ends with this call."""
    global _gc_paused
    if argv is None and gc.isenabled():
        # start-up creates ~90k objects that live to the exit: collecting them over and
        # over is ~10% of a fresh promote's CPU (collect_from_here turns it back on)
        _gc_paused = True
        gc.disable()
    try:
        return command_line(argv)
    finally:
        if argv is None:
            exit_lightly()


_gc_paused = False


def collect_from_here() -> None:
    """The command's modules are loaded and its work begins: what exists now lives to
    the exit (frozen, later collections skip it) and the garbage of the work is collected
    again, so a long transfer's memory stays bounded."""
    global _gc_paused
    if _gc_paused:
        _gc_paused = False
        gc.freeze()
        gc.enable()


def exit_lightly() -> None:
    """Python's shutdown collects garbage across everything botocore, aiohttp and redis
    loaded: 0.1-0.2 s of CPU, a quarter of a fresh `promote`, spent on memory the OS frees
    anyway. Frozen, those objects are skipped; the command has closed its files, clients
    and sockets already, and the standard streams are still flushed (start-up, #10)."""
    gc.freeze()


def command_line(argv: list[str] | None) -> int:
    Interrupt.install()
    args: argparse.Namespace | None = None
    outcome = Outcome()
    try:
        parser = build_parser()
        try:
            args, extra = parser.parse_known_args(argv)
            if extra:
                prog = " ".join(["atdata-async", args.command,
                                 getattr(args, "schemas_command", None) or ""]).strip()
                raise UsageError(f"unrecognized arguments: {' '.join(extra)}", prog)
            if args.command == "promote":
                check_promote_args(args)
        except UsageError as exc:
            wants_json = "--json" in (sys.argv[1:] if argv is None else argv)
            report(argparse.Namespace(json=wants_json), "usage", f"{exc.prog}: {exc}",
                   f"see `{exc.prog} --help`")
            return EXIT_CODES["usage"]
        if args.command == "dev":
            return dev(args)
        import anyio

        skip_httpx_cli()  # after parsing: --help and --version import no httpx at all
        status = emit(args, *anyio.run(run, args, outcome))
        return EXIT_CODES[error_code(outcome.failed[0])] if outcome.failed else status
    except KeyboardInterrupt:
        report(args, "interrupted", outcome.interrupted_message(), None)
        return Interrupt.exit_code()
    except BrokenPipeError:
        return quiet_broken_pipe()
    except (AtdataError, ValueError, KeyError, OSError) as exc:
        if args is not None and args.debug:
            raise
        code = error_code(exc)
        report(args, code, message_of(exc), hint_for(exc, args))
        return EXIT_CODES[code]


def quiet_broken_pipe() -> int:
    """``atdata-async ls | head``: the reader left; stop quietly (no traceback, and no
    second error when Python flushes stdout at exit)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 0


def emit(args: argparse.Namespace, data: Any, human: Callable[[Any], None]) -> int:
    """Print a command's result: only once the command has finished (so nothing claims
    success for an interrupted run)."""
    if args.json:
        print(json.dumps(data, indent=2, default=str))
    else:
        human(data)
    sys.stdout.flush()
    return 0


Result = tuple[Any, Callable[[Any], None]]


async def run(args: argparse.Namespace, outcome: Outcome) -> Result:
    if args.command in ("login", "logout"):
        return await session_command(args)
    from ._backends.redis_index import LocalIndex

    async with LocalIndex(args.redis_url) as index:
        if args.command == "ls":
            rows = [entry_row(e) for e in await index.list_entries()]
            return rows, lambda r: print_entries(r, args)
        if args.command == "insert":
            return await insert(args, index)
        sub = getattr(args, "schemas_command", None)
        if args.command == "schemas" and sub == "publish":
            return await publish_schema(args, index)
        if args.command == "schemas" and not args.remote:
            rows = [{"ref": f"{s['name']}@{s['version']}", "fields": len(s.get("fields", [])),
                     "description": s.get("description")} for s in await index.list_schemas()]
            return rows, print_schemas
        from ._backends.xrpc import AtmosphereClient

        async with AtmosphereClient(args.pds_url) as client:
            if args.command == "show":
                from ._backends.atmosphere_index import AtmosphereIndex

                await login(args, client, required=False)
                entry = await AtmosphereIndex(client).get_dataset(args.at_uri)
                return entry_dict(entry), print_dataset
            await login(args, client, required=True)
            if args.command == "schemas":
                rows = [{"uri": r["uri"], "ref": f"{r['value'].get('name')}@"
                         f"{r['value'].get('version')}"}
                        async for r in client.list_records("science.alt.dataset.schema")]
                return rows, print_schemas
            if args.command == "cleanup":
                return await cleanup(args, index, client)
            return await promote(args, index, client, outcome)


async def session_command(args: argparse.Namespace) -> Result:
    """``login``: trade the password for a session and save it; ``logout``: forget it."""
    from ._backends import session_store as sessions

    if args.command == "logout":
        gone = sessions.forget(args.pds_url)
        return {"logged_out": gone, "pds": args.pds_url}, lambda r: print(
            f"forgot the session for {r['pds']}" if r["logged_out"]
            else f"no saved session for {r['pds']}")
    password = os.environ.get("ATDATA_PASSWORD")
    if not args.handle or not password:
        await login(args, None, required=True, saved=False)  # raises the usual error
    from ._backends.xrpc import AtmosphereClient

    async with AtmosphereClient(args.pds_url) as client:
        session = await client.login(args.handle, password)
    sessions.save(args.pds_url, session)
    return ({"did": session["did"], "handle": session["handle"], "pds": args.pds_url},
            lambda r: print(f"logged in as {r['handle']} ({r['did']}) on {r['pds']}; the "
                            f"session is saved in {sessions.config_dir()}"))


async def login(args: argparse.Namespace, client: AtmosphereClient | None, *, required: bool,
                saved: bool = True) -> None:
    """Resume the session ``atdata-async login`` saved, with no request to the PDS (its
    access token is refreshed when it is about to lapse, and saved again), else log in
    with ATDATA_PASSWORD for this command only. A saved session whose refresh token
    has lapsed is replaced by a password login when there is a password."""
    from ._backends import session_store as sessions

    password = os.environ.get("ATDATA_PASSWORD")
    lapsed = None
    if saved and client is not None:
        session = sessions.load(args.pds_url, args.handle or None)
        if session is not None and not sessions.lapsed(session):
            await client.login(session=session)
            client.on_session_change = lambda s: sessions.save(args.pds_url, s)
            return
        lapsed = session
    handle = args.handle or (lapsed or {}).get("handle")
    if handle and password and client is not None:
        session = await client.login(handle, password)
        if lapsed is not None:  # the user chose a saved session: keep the new one
            sessions.save(args.pds_url, session)
            client.on_session_change = lambda s: sessions.save(args.pds_url, s)
    elif required and lapsed is not None:
        raise AuthError("login", None, "ExpiredToken",
                        f"the saved session for {args.pds_url} has lapsed: run "
                        "`atdata-async login` again (or set ATDATA_PASSWORD)")
    elif required:
        missing = " and ".join(name for name, value in (("ATDATA_HANDLE (or --handle)",
                                                         args.handle),
                                                        ("ATDATA_PASSWORD", password))
                               if not value)
        raise AuthError("login", None, "NoCredentials",
                        f"set {missing} to log in to {args.pds_url}")


# -- S3 stores from the command line -----------------------------------------------------


def s3_location(url: str, flag: str) -> tuple[str, str]:
    """``s3://bucket[/prefix]`` -> (bucket, prefix)."""
    if not url.startswith("s3://"):
        raise ConfigurationError(f"{flag} must be s3://BUCKET[/PREFIX], got {url!r}")
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    if not bucket:
        raise ConfigurationError(f"{flag} names no bucket: {url!r}")
    return bucket, prefix.strip("/")


def credentials_from(path: str | None, flag: str) -> str | dict[str, str]:
    """A .env path, or the AWS_* variables of the environment when no file is given."""
    if path:
        return path
    if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        return dict(os.environ)
    raise ConfigurationError(f"{flag} FILE.env is needed (or AWS_ACCESS_KEY_ID and "
                             "AWS_SECRET_ACCESS_KEY in the environment)")


def make_store(credentials: str | dict[str, str], bucket: str,
               args: argparse.Namespace) -> S3DataStore:
    from ._backends.s3_store import S3DataStore

    part = getattr(args, "part_size", 16 * MIB)
    return S3DataStore(credentials, bucket=bucket, max_concurrency=args.concurrency,
                       part_size=part, multipart_threshold=max(2 * part, 32 * MIB),
                       max_server_copies=getattr(args, "server_copies", 256),
                       max_streamed_copies=getattr(args, "streamed_copies", 16))


async def check_bucket(store: S3DataStore) -> str:
    """HeadBucket: the endpoint answers, the credentials are accepted, the bucket exists."""
    s3 = await store.client()
    where = store.endpoint or "AWS S3"
    try:
        with store.errors("HeadBucket", f"s3://{store.bucket}"):
            await s3.head_bucket(Bucket=store.bucket)
    except ObjectNotFoundError:
        raise ObjectNotFoundError(f"bucket {store.bucket!r} does not exist at {where}",
                                  code="NoSuchBucket") from None
    return f"bucket {store.bucket} exists at {where} and accepts the credentials"


# -- insert and schemas publish ----------------------------------------------------------


def import_sample_type(spec: str) -> type:
    """``module:Class`` (the current directory is importable, as for ``python -m``)."""
    import importlib

    from ._model.sample import PackableSample

    module_name, sep, class_name = spec.partition(":")
    if not sep or not module_name or not class_name:
        raise ConfigurationError(f"--schema must be module:Class, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import {module_name!r}: {exc}") from None
    sample_type = getattr(module, class_name, None)
    if sample_type is None:
        raise ConfigurationError(f"module {module_name!r} has no {class_name!r}")
    if not (isinstance(sample_type, type) and issubclass(sample_type, PackableSample)):
        raise ConfigurationError(f"{spec} is not a sample type (decorate it with "
                                 "@atdata_async.packable)")
    return sample_type


def shard_paths(patterns: list[str]) -> list[str]:
    """Paths, brace patterns and globs (when the shell left them) -> existing tar files."""
    import glob

    from ._model.urls import expand_braces

    paths: list[str] = []
    for pattern in patterns:
        for expanded in expand_braces(pattern):
            found = sorted(glob.glob(expanded)) if glob.has_magic(expanded) else [expanded]
            if not found:
                raise FileNotFoundError(2, "no file matches", expanded)
            paths.extend(found)
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(2, "no such file", path)
    return [os.path.abspath(p) for p in paths]


async def insert(args: argparse.Namespace, index: LocalIndex) -> Result:
    from ._backends.dataset import Dataset
    from ._model.sample import PackableSample

    paths = shard_paths(args.paths)
    if args.schema:
        sample_type = import_sample_type(args.schema)
        ref = None
    else:
        ref = args.schema_ref
        await index.get_schema(ref)  # not found -> exit 3 before anything is uploaded
        sample_type = PackableSample
    dataset = Dataset[sample_type](paths)  # type: ignore[valid-type]
    metadata = dict(args.meta) or None
    store = None
    prefix = None
    checks = [f"{len(paths)} shard file(s) found ({sum(map(os.path.getsize, paths)) / MIB:.1f}"
              " MiB)"]
    if args.to:
        bucket, prefix = s3_location(args.to, "--to")
        store = make_store(credentials_from(args.credentials, "--credentials"), bucket, args)
    try:
        if args.dry_run:
            await index.list_schemas()  # Redis answers
            checks.append(f"the local index at {redact(args.redis_url)} answers")
            if store is not None:
                checks.append(await check_bucket(store))
            plan = {"name": args.name, "shards": paths, "to": args.to, "metadata": metadata,
                    "schema": ref or f"{sample_type.__name__} (latest local version, or 1.0.0)",
                    "checks": checks}
            return plan, print_insert_plan
        index.data_store = store
        collect_from_here()
        entry = await index.insert_dataset(dataset, name=args.name, prefix=prefix or None,
                                           metadata=metadata, schema_ref=ref,
                                           progress=progress_for(args))
        finish_progress(args)
    finally:
        if store is not None:
            await store.aclose()
    row = entry_row(entry)
    row["data_urls"] = entry.data_urls
    return row, print_inserted


async def publish_schema(args: argparse.Namespace, index: LocalIndex) -> Result:
    from ._model.schema import schema_record

    sample_type = import_sample_type(args.sample_type)
    if args.dry_run:
        record = schema_record(sample_type, args.schema_version, args.description)
        return {"record": record, "dry_run": True}, print_schema_plan
    ref = await index.publish_schema(sample_type, version=args.schema_version,
                                     description=args.description)
    return {"ref": ref}, lambda r: print(f"stored schema {r['ref']}")


# -- promote -----------------------------------------------------------------------------


async def promote(args: argparse.Namespace, index: LocalIndex, client: AtmosphereClient,
                  outcome: Outcome) -> Result:
    from ._pipeline.promote import preview_promotion, promote_to_atmosphere

    collect_from_here()
    entries = await entries_to_promote(args, index)
    entry = entries[0]
    s3_buckets = [u.removeprefix("s3://").split("/", 1)[0] for e in entries
                  for u in e.data_urls if u.startswith("s3://")]
    dest, prefix = None, "promoted"
    stores: list[S3DataStore] = []
    cluster: tuple[Any, Any] | None = None
    try:
        if args.copy_to:
            bucket, prefix = s3_location(args.copy_to, "--copy-to")
            dest = make_store(credentials_from(args.credentials, "--credentials"), bucket, args)
            stores.append(dest)
            prefix = prefix or "promoted"
        if s3_buckets:
            # The shards' current store: its own credentials, else the environment's AWS_*
            # (at the endpoint insert recorded, if it did), else the destination's (one
            # account holding both buckets is the usual case).
            source_creds = (args.source_credentials
                            or environment_credentials(entry)
                            or (args.credentials if args.copy_to else None))
            if source_creds:
                index.data_store = make_store(source_creds, s3_buckets[0], args)
                stores.append(index.data_store)
        kwargs: dict[str, Any] = dict(data_store=dest, name=args.name,
                                      description=args.description, tags=args.tags,
                                      license=args.license, copy_prefix=prefix)
        for option in ("max_record_bytes", "max_rate_limit_wait"):
            if getattr(args, option) is not None:
                kwargs[option] = getattr(args, option)
        if args.scheduler and not args.dry_run:
            cluster = await connect_scheduler(args)
            kwargs["executor"] = cluster[1]
        if is_batch(args):
            return await promote_batch(args, entries, index, client, outcome, kwargs)
        if args.dry_run:
            kwargs.pop("max_rate_limit_wait", None)  # a preview writes nothing
            plan = await preview_promotion(entry, index, client, **kwargs)
            plan["checks"] = await dry_run_checks(args, entry, index, client, dest)
            return plan, print_plan
        show = progress_for(args)
        if not args.verify:
            print("warning: --no-verify: shards that cannot be read are published unproven "
                  "(checksums nobody checked are left out)", file=sys.stderr)
        try:
            uri = await promote_to_atmosphere(entry, index, client,
                                              max_concurrency=args.concurrency, verify=args.verify,
                                              max_server_copies=args.server_copies,
                                              max_streamed_copies=args.streamed_copies,
                                              progress=show, **kwargs)
        except ShardTransferError as exc:
            raise left_behind(exc, dest) from None
        outcome.written.append(uri)
        finish_progress(args)
        return {"uri": uri}, lambda r: print(f"published {r['uri']}")
    finally:
        for store in stores:
            await store.aclose()
        if cluster is not None:
            await cluster[0].close()


async def connect_scheduler(args: argparse.Namespace) -> tuple[Any, Any]:
    """A Dask client on --scheduler and the executor that sends the copies there."""
    from ._errors import ExecutorError
    from ._pipeline.executor import CredentialSource, DaskExecutor

    try:
        from distributed import Client
    except ImportError:
        raise UsageError("--scheduler needs Dask: pip install 'atdata-async[dask]'",
                         "atdata-async promote") from None
    try:
        dask = await Client(args.scheduler, asynchronous=True, timeout=10)
    except (OSError, TimeoutError) as exc:
        raise ExecutorError(f"cannot reach the Dask scheduler at {args.scheduler}: "
                            f"{type(exc).__name__}: {exc}") from exc
    return dask, DaskExecutor(dask, credentials=CredentialSource(
        env_prefix=args.worker_credentials_prefix))


async def cleanup(args: argparse.Namespace, index: LocalIndex,
                  client: AtmosphereClient) -> Result:
    from ._pipeline.cleanup import cleanup_promotions

    collect_from_here()
    bucket, prefix = s3_location(args.location, "LOCATION")
    store = make_store(credentials_from(args.credentials, "--credentials"), bucket, args)
    try:
        report = await cleanup_promotions(index, store, client, prefix=prefix or "promoted",
                                          remove=args.yes, forget=args.forget)
    finally:
        await store.aclose()
    return report.as_dict(), print_cleanup


def print_cleanup(r: dict[str, Any]) -> None:
    verb = "removed" if r["removed"] else "would remove"
    for j in r["journals"]:
        print(f"{j.get('kind', 'promotion')} {j['name']} ({j['shards']} shards): {j['state']}")
    print(f"{verb} {len(r['uploads'])} open multipart upload(s)")
    print_some([f"{u['key']}  (upload {u['upload_id'][:12]}..., {u['initiated']})"
                for u in r["uploads"]])
    print(f"{verb} {len(r['objects'])} object(s) "
          f"({sum(o['size'] for o in r['objects']) / MIB:.1f} MiB) no record refers to")
    print_some([o["key"] for o in r["objects"]])
    print(f"kept {r['kept']} object(s) a record, an entry or a live promotion refers to")
    if not r["removed"] and (r["uploads"] or r["objects"]):
        print("dry run: rerun with --yes to remove them")


def is_batch(args: argparse.Namespace) -> bool:
    return bool(args.all_entries or args.match is not None or len(args.entry) > 1)


def check_promote_args(args: argparse.Namespace) -> None:
    prog = "atdata-async promote"
    if sum(map(bool, (args.entry, args.all_entries, args.match is not None))) != 1:
        raise UsageError("give entry NAMEs, --all or --match GLOB (one of them)", prog)
    if is_batch(args) and args.name:
        raise UsageError("--name renames one entry; a batch keeps each entry's name", prog)


async def entries_to_promote(args: argparse.Namespace, index: LocalIndex) -> list[Any]:
    """The named entries, every entry (--all) or those matching --match, by name."""
    import fnmatch

    if args.entry:
        return [await index.get_entry_by_name(n) for n in dict.fromkeys(args.entry)]
    found = sorted(await index.list_entries(), key=lambda e: e.name)
    if args.match is not None:
        found = [e for e in found if fnmatch.fnmatchcase(e.name, args.match)]
    if not found:
        from ._errors import EntryNotFoundError

        raise EntryNotFoundError("no local entry " + (f"matches {args.match!r}" if args.match
                                                      else "to promote"))
    return found


async def promote_batch(args: argparse.Namespace, entries: list[Any], index: LocalIndex,
                        client: AtmosphereClient, outcome: Outcome,
                        kwargs: dict[str, Any]) -> Result:
    """Many entries in one promote_many: one line per entry; a failed entry fails the
    exit code (that of its error), the others are published all the same."""
    from ._pipeline.batch import promote_many

    kwargs.pop("name", None)
    if args.dry_run:
        rows = [{"name": e.name, "shards": len(e.data_urls)} for e in entries]
        return {"dry_run": True, "entries": rows}, lambda r: print(
            "\n".join(f"would promote {x['name']} ({x['shards']} shards)" for x in r["entries"])
            + "\ndry run: nothing was written")
    results = await promote_many(entries, index, client, max_concurrency=args.concurrency,
                                 max_server_copies=args.server_copies,
                                 max_streamed_copies=args.streamed_copies,
                                 progress=progress_for(args), verify=args.verify, **kwargs)
    finish_progress(args)
    rows = []
    for r in results:
        if r.uri and not r.existing:
            outcome.written.append(r.uri)
        rows.append({"name": r.name, "uri": r.uri, "existing": r.existing,
                     "error": None if r.error is None else error_code(r.error),
                     "message": None if r.error is None else message_of(r.error)})
    outcome.failed = [r.error for r in results if r.error is not None]

    def human(data: dict[str, Any]) -> None:
        for row in data["entries"]:
            if row["error"]:
                print(f"failed    {row['name']}: {row['message'].splitlines()[0]}")
            else:
                verb = "exists   " if row["existing"] else "published"
                print(f"{verb} {row['name']}  {row['uri']}")
        done = sum(1 for row in data["entries"] if not row["error"])
        print(f"{done} of {len(data['entries'])} entries published")

    return {"entries": rows}, human


def environment_credentials(entry: Any) -> dict[str, str] | None:
    """AWS_* of the environment for the entry's shards, at the endpoint and region its
    insert recorded (a store elsewhere would publish the wrong endpoint)."""
    if not (os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY")):
        return None
    creds = dict(os.environ)
    where = entry.store_location
    if where is not None:
        creds.pop("AWS_ENDPOINT_URL", None)
        creds.pop("AWS_ENDPOINT", None)
        if where.endpoint:
            creds["AWS_ENDPOINT"] = where.endpoint
        if where.region:
            creds["AWS_REGION"] = where.region
    return creds


def left_behind(exc: ShardTransferError, dest: S3DataStore | None) -> ShardTransferError:
    """The batch error with a last line that says truthfully what stayed behind."""
    lines = str(exc).splitlines()
    total = int(lines[0].split(" of ")[1].split()[0]) if " of " in lines[0] else 0
    copied = total - len(exc.failures)
    if dest is None:
        tail = "no dataset record was written; nothing was copied"
    else:
        tail = (f"no dataset record was written; unfinished multipart uploads were aborted; "
                f"shards already copied to s3://{dest.bucket}/ stay there (up to {copied}): "
                "running the command again copies only the rest (`atdata-async cleanup` "
                "removes them instead)")
    out = ShardTransferError(exc.failures, total)
    out.args = (str(exc) + "\n" + tail,)
    return out


async def dry_run_checks(args: argparse.Namespace, entry: Any, index: LocalIndex,
                         client: AtmosphereClient, dest: S3DataStore | None) -> list[str]:
    """What a dry run proves without writing: the PDS answers and took the login, the
    destination bucket exists and takes the credentials, every source shard is there."""
    import anyio

    checks = [f"PDS {args.pds_url} answers; logged in as {client.handle} ({client.did})"]
    if dest is not None:
        checks.append("destination " + await check_bucket(dest))
    source = index.data_store
    s3_urls = [u for u in entry.data_urls if u.startswith("s3://")]
    if s3_urls and source is not None:
        limiter = anyio.CapacityLimiter(args.concurrency)

        async def head(url: str) -> None:
            async with limiter:
                await source.head(url)

        async with anyio.create_task_group() as tg:
            for url in s3_urls:
                tg.start_soon(head, url)
        checks.append(f"all {len(s3_urls)} source shard(s) readable at "
                      f"{source.endpoint or 'AWS S3'}")
    elif s3_urls:
        checks.append("source shards not checked (no credentials for their store: "
                      "--source-credentials)")
    local = [u for u in entry.data_urls if not u.startswith(("s3://", "http://", "https://"))]
    missing = [u for u in local if not os.path.isfile(u.removeprefix("file://"))]
    if missing:
        raise FileNotFoundError(2, "shard file missing", missing[0])
    if local:
        checks.append(f"all {len(local)} local shard file(s) present")
    checks.append("the record passes the lexicon's limits")
    return checks


# -- progress ----------------------------------------------------------------------------


_progress_line: ProgressLine | None = None


def progress_for(args: argparse.Namespace) -> ProgressLine | None:
    """A progress line when asked for (--progress), or by default when stderr is a
    terminal and the output is not JSON."""
    global _progress_line
    wanted = args.progress
    if wanted is None:
        wanted = sys.stderr.isatty() and not args.json
    _progress_line = ProgressLine() if wanted else None
    return _progress_line


def finish_progress(args: argparse.Namespace) -> None:
    if _progress_line is not None and _progress_line.drawn:
        _progress_line.finish()


class ProgressLine:
    """One self-rewriting line on stderr: shards, bytes, throughput, ETA."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.last = 0.0
        self.drawn = False

    def __call__(self, p: TransferProgress) -> None:
        now = time.monotonic()
        if now - self.last < 0.1 and p.shards_done < p.shards_total:
            return
        self.last = now
        rate = p.bytes_done / max(now - self.start, 1e-6)
        eta = max(p.bytes_total - p.bytes_done, 0) / rate if rate else 0
        try:
            sys.stderr.write(f"\r  shards {p.shards_done}/{p.shards_total}  "
                             f"{p.bytes_done / MIB:.1f}/{p.bytes_total / MIB:.1f} MiB  "
                             f"{rate / MIB:.1f} MiB/s  ETA {eta:.0f}s   ")
            sys.stderr.flush()
            self.drawn = True
        except OSError:  # stderr went away: the work goes on without a display
            pass

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            sys.stderr.write("\n")


# -- dev services (a clone's scripts/demo.py) --------------------------------------------


def dev(args: argparse.Namespace) -> int:
    """``dev up|down|status``: the demo's services kept running, for trying commands."""
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "scripts" / "demo.py"
    if not script.is_file():
        raise ConfigurationError("`dev` needs a clone of the repository (its scripts/demo.py "
                                 "starts the services); this install has none")
    command = [sys.executable, str(script), f"--{args.action}"]
    if args.env_file:
        command += ["--env-file", args.env_file]
    if args.json:
        command.append("--json")
    return subprocess.run(command, check=False).returncode


# -- output ------------------------------------------------------------------------------


def print_some(lines: list[str], most: int = 20, file: Any = None) -> None:
    """Indented lines, at most ``most`` of them and then how many more there are: a
    1,000-shard entry keeps the output readable."""
    for line in lines[:most]:
        print(f"  {line}", file=file)
    if len(lines) > most:
        print(f"  ... {len(lines) - most} more", file=file)


def entry_row(entry: Any) -> dict[str, Any]:
    return {"name": entry.name, "cid": entry.cid, "schema": entry.schema_ref,
            "shards": len(entry.data_urls), "bytes": sum(entry.shard_sizes.values()) or None}


def entry_dict(entry: Any) -> dict[str, Any]:
    return {"uri": entry.uri, "name": entry.name, "schema": entry.schema_ref,
            "description": entry.description, "tags": entry.tags, "license": entry.license,
            "size": entry.size, "metadata": entry.metadata, "data_urls": entry.data_urls,
            "checksums": entry.checksums}


def print_entries(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    if not rows:
        print(f"no local entries in {redact(args.redis_url)}; add one with "
              "`atdata-async insert PATHS --name NAME --schema module:Class`")
    for r in sorted(rows, key=lambda r: r["name"]):
        size = f"{r['bytes'] / MIB:.1f} MiB" if r["bytes"] else "size unknown"
        print(f"{r['name']:<32} {r['shards']:>5} shards  {size:>14}  {r['schema']}")


def redact(url: str) -> str:
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"


def print_inserted(r: dict[str, Any]) -> None:
    size = f"{r['bytes'] / MIB:.1f} MiB" if r["bytes"] else "size unknown"
    print(f"inserted {r['name']}: {r['shards']} shards, {size}, schema {r['schema']}")
    print_some(r["data_urls"])


def print_insert_plan(plan: dict[str, Any]) -> None:
    print(f"insert {plan['name']}: {len(plan['shards'])} shard(s) -> "
          f"{plan['to'] or 'indexed where they are'}")
    print(f"schema: {plan['schema']}")
    for check in plan["checks"]:
        print(f"checked: {check}")
    print("dry run: nothing was written")


def print_schema_plan(plan: dict[str, Any]) -> None:
    print(json.dumps(plan["record"], indent=2))
    print("dry run: nothing was written")


def print_schemas(rows: list[dict[str, Any]]) -> None:
    if not rows:
        print("no schemas")
    for r in rows:
        print(f"{r['ref']:<40} {r.get('uri') or str(r.get('fields')) + ' fields'}")


def print_dataset(d: dict[str, Any]) -> None:
    from ._model.trust import printable

    def print(text: str) -> None:  # a record is someone else's text: no terminal controls
        sys.stdout.write(printable(text) + "\n")

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
    print_some([s["source"] + (f" -> {s['destination']}" if s["destination"] else "")
                for s in plan["shards"]])
    for check in plan.get("checks", []):
        print(f"checked: {check}")
    print("record to be written:")
    print(json.dumps(plan["record"], indent=2))
    print("dry run: nothing was written")


if __name__ == "__main__":
    sys.exit(main())
