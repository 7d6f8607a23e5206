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

TEST_PART = 256 * 1024

import logging  # noqa: E402

logging.getLogger("werkzeug").setLevel(logging.WARNING)


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


@pytest.fixture(scope="session")
def pds(tmp_path_factory, plc):
    """The reference PDS, started once for the session, on the session's PLC."""
    service = services.start_pds(tmp_path_factory.mktemp("pds"), plc_url=plc.url)
    yield service
    service.stop()


@pytest.fixture(scope="session")
def second_pds(tmp_path_factory, plc):
    """Another PDS sharing the session's PLC: the network in miniature."""
    service = services.start_pds(tmp_path_factory.mktemp("pds2"), plc_url=plc.url)
    yield service
    service.stop()


_accounts = iter(range(10_000))


@pytest.fixture
def pds_account(pds) -> dict:
    """A fresh ``.test`` account on the session PDS."""
    return services.create_account(pds.url, f"u{next(_accounts)}-{uuid.uuid4().hex[:6]}")
