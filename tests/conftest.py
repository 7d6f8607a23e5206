"""Session services: a real redis-server, a moto S3 server and (for ``pds`` tests) the
reference ATProto PDS, all on 127.0.0.1, all stopped by PID at the end."""

from __future__ import annotations

import os
import uuid

# moto reads these at import: small parts so multipart paths run on small test data.
os.environ.setdefault("S3_UPLOAD_PART_MIN_SIZE", str(256 * 1024))
os.environ.setdefault("MOTO_S3_DEFAULT_KEY_BUFFER_SIZE", str(16 * 1024 * 1024))

import boto3
import pytest

from tests import services
from tests.lexicon_check import LexiconAudit

TEST_PART = 256 * 1024

import logging  # noqa: E402

logging.getLogger("werkzeug").setLevel(logging.WARNING)


@pytest.fixture(autouse=True)
def _private_config_dir(tmp_path_factory, monkeypatch):
    """A saved CLI session (``atdata-async login``) in the developer's own config dir
    must never reach a test: every test gets an empty one."""
    monkeypatch.setenv("ATDATA_CONFIG_DIR", str(tmp_path_factory.mktemp("config")))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    service = services.start_redis(tmp_path_factory.mktemp("redis"))
    yield service
    service.stop()


@pytest.fixture
def redis_url(redis_server) -> str:
    """A database of our own redis-server, flushed before each test (we own it)."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    client.close()
    return redis_server.url


@pytest.fixture(scope="session")
def http_server(tmp_path_factory):
    """A real HTTP server on 127.0.0.1 serving the files under ``extra["root"]``."""
    service = services.start_http(tmp_path_factory.mktemp("http-root"))
    yield service
    service.stop()


@pytest.fixture(scope="session")
def moto_server():
    service = services.start_moto(in_process=True)
    yield service
    service.stop()


@pytest.fixture(scope="session")
def second_moto_server():
    service = services.start_moto(in_process=True)
    yield service
    service.stop()


def make_credentials(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT": endpoint,
        "AWS_ACCESS_KEY_ID": "testing-key-id",
        "AWS_SECRET_ACCESS_KEY": "testing-secret-key-do-not-leak",
    }


def make_bucket(endpoint: str) -> str:
    name = f"b-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                 aws_access_key_id="x", aws_secret_access_key="y").create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_credentials(moto_server) -> dict[str, str]:
    return make_credentials(moto_server.url)


@pytest.fixture
def bucket(moto_server) -> str:
    return make_bucket(moto_server.url)


@pytest.fixture
def raw_s3(moto_server):
    """A plain boto3 client to inspect what landed in S3."""
    return boto3.client("s3", endpoint_url=moto_server.url, region_name="us-east-1",
                        aws_access_key_id="x", aws_secret_access_key="y")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "writes_invalid_records(reason): the test writes science.alt.dataset "
        "records that fail the lexicon on purpose; the session's lexicon audit exempts them")


@pytest.fixture(scope="session")
def plc(tmp_path_factory):
    """One did:plc directory for every PDS of the session. ``ATDATA_PLC_URL`` points the
    library (and the CLI's subprocesses) at it: nothing asks plc.directory."""
    service = services.start_plc(tmp_path_factory.mktemp("plc"))
    before = os.environ.get("ATDATA_PLC_URL")
    os.environ["ATDATA_PLC_URL"] = service.url
    yield service
    if before is None:
        os.environ.pop("ATDATA_PLC_URL", None)
    else:
        os.environ["ATDATA_PLC_URL"] = before
    service.stop()


def _audited(service, request):
    """Yield a PDS service; at the end, judge every science.alt.dataset record it received
    with @atproto/lexicon and fail the run on any invalid one (tests/lexicon_check.py)."""
    service.extra["lexicon_audit"] = audit = LexiconAudit(service.url)
    try:
        yield service
        valid, invalid, exempt = audit.run()
        plugins = request.config.pluginmanager
        reporter = plugins.get_plugin("terminalreporter")
        capture = plugins.get_plugin("capturemanager")
        if reporter is not None and capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.write_line(
                    f"\nlexicon audit ({request.fixturename}): {len(valid)} "
                    f"science.alt.dataset record(s) pass @atproto/lexicon; {len(exempt)} "
                    f"invalid on purpose (writes_invalid_records); {len(invalid)} invalid")
        if invalid:
            pytest.fail(LexiconAudit.report(invalid), pytrace=False)
    finally:
        service.stop()


@pytest.fixture(scope="session")
def pds(tmp_path_factory, plc, request):
    """The reference PDS, started once for the session, on the session's PLC; its records
    are audited against the lexicon at the end."""
    yield from _audited(services.start_pds(tmp_path_factory.mktemp("pds"), plc_url=plc.url),
                        request)


@pytest.fixture(scope="session")
def second_pds(tmp_path_factory, plc, request):
    """Another PDS sharing the session's PLC: the network in miniature (audited too)."""
    yield from _audited(services.start_pds(tmp_path_factory.mktemp("pds2"), plc_url=plc.url),
                        request)


_accounts = iter(range(10_000))


@pytest.fixture
def pds_account(pds, request) -> dict:
    """A fresh ``.test`` account on the session PDS (known to the lexicon audit)."""
    account = services.create_account(pds.url, f"u{next(_accounts)}-{uuid.uuid4().hex[:6]}")
    marker = request.node.get_closest_marker("writes_invalid_records")
    reason = None if marker is None else (marker.kwargs.get("reason") or
                                          (marker.args[0] if marker.args else "unspecified"))
    pds.extra["lexicon_audit"].account_created(account["did"], request.node.nodeid, reason)
    return account
