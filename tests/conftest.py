"""Session services: a real redis-server, a moto S3 server and (for ``pds`` tests) the
reference ATProto PDS, all on 127.0.0.1, all stopped by PID at the end."""

from __future__ import annotations

import os
import signal
import uuid

# moto reads these at import: small parts so multipart paths run on small test data.
os.environ.setdefault("S3_UPLOAD_PART_MIN_SIZE", str(256 * 1024))
os.environ.setdefault("MOTO_S3_DEFAULT_KEY_BUFFER_SIZE", str(16 * 1024 * 1024))

import boto3
import pytest

from atdata_async.atmosphere import AtmosphereClient
from atdata_async.local import LocalIndex, S3DataStore
from tests import services
from tests.faultproxy import FaultProxy
from tests.lexicon_check import LexiconAudit
from tests.samples import FeatureSample

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


def store_for(credentials, bucket, **kw) -> S3DataStore:
    """A store with small parts, so the multipart paths run on small test data."""
    kw = {"part_size": TEST_PART, "multipart_threshold": 2 * TEST_PART,
          "min_part_size": TEST_PART, "copy_multipart_threshold": 4 * TEST_PART,
          "copy_part_size": TEST_PART, **kw}
    return S3DataStore(credentials, bucket=bucket, **kw)


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


def _sigterm_is_ctrl_c(signum, frame):
    raise KeyboardInterrupt


def pytest_sessionstart(session):
    """A session ended by SIGTERM (a job's timeout, a kill) is torn down like Ctrl-C:
    its fixtures stop the redis-server, moto and PDS processes it started, instead of
    leaving them running with no parent."""
    signal.signal(signal.SIGTERM, _sigterm_is_ctrl_c)


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


@pytest.fixture(scope="session")
def limited_pds(tmp_path_factory):
    """A PDS with its real rate limiter on (own PLC), started once for the session:
    the tests that use it each have accounts of their own, so limits keyed by account
    (logins per handle, write points per repo) never cross between them."""
    service = services.start_pds(tmp_path_factory.mktemp("pds-limited"), rate_limits=True)
    yield service
    service.stop()


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


@pytest.fixture
async def client(pds, pds_account):
    """A client logged in to a fresh account of the session PDS."""
    async with AtmosphereClient(pds.url) as client:
        await client.login(pds_account["handle"], pds_account["password"])
        yield client


@pytest.fixture
def pds_proxy(pds):
    """A fault proxy in front of the session PDS (it counts what passes)."""
    with FaultProxy(pds.url) as proxy:
        yield proxy


@pytest.fixture
async def proxied(pds_proxy, client):
    """The same account as ``client``, every request through ``pds_proxy``."""
    async with AtmosphereClient(pds_proxy.url, backoff_base=0.05) as other:
        await other.login(session={**client.export_session(), "pdsUrl": pds_proxy.url})
        yield other


@pytest.fixture
async def index(redis_url, s3_credentials, bucket):
    """A LocalIndex on the test's redis database and bucket, FeatureSample@1.0.0 published."""
    store = store_for(s3_credentials, bucket)
    async with store, LocalIndex(redis_url, data_store=store) as index:
        await index.publish_schema(FeatureSample, version="1.0.0")
        yield index


@pytest.fixture(scope="module")
def cluster():
    """A LocalCluster of 2 worker processes (4 slots each) for the Dask tests: one per
    test module (module-scoped), started on first use."""
    from tests.test_dask import new_cluster

    with new_cluster() as cluster:
        yield cluster


@pytest.fixture
async def dc(cluster):
    """An asynchronous client of the module's cluster."""
    from distributed import Client

    async with Client(cluster.scheduler_address, asynchronous=True) as dc:
        yield dc
