"""The light request path of S3DataStore (GET -> PUT of small objects, HEAD) against moto.

The signer is checked against botocore's own SigV4 signer on fixed inputs; the requests
against a moto server that checks signatures; failures through tests/faultproxy.py.
"""

from __future__ import annotations

import base64
import datetime
import functools
import hashlib
import json
import os

import anyio
import boto3
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from atdata_async import SourceChangedError, StorageError
from atdata_async._backends import s3_light
from atdata_async._model import sigv4
from atdata_async._model.pace import Pace
from atdata_async.local import ObjectNotFoundError, S3DataStore
from tests import services
from tests.conftest import make_bucket, make_credentials
from tests.faultproxy import SLOW_DOWN, Fault, FaultProxy

NOW = datetime.datetime(2026, 12, 1, 14, 3, 7, tzinfo=datetime.UTC)


# -- the signer against botocore's, on fixed inputs ----------------------------------------

SIGNED_CASES = [
    # method, url, headers, payload hash, session token
    ("GET", "http://127.0.0.1:7480/src-bucket/data/shard-000001.tar",
     {"If-Match": '"9c61a2b744b5d7aa0c2ee1329f6ea4db"'}, sigv4.EMPTY_SHA256, None),
    ("GET", "https://s3.eu-west-1.amazonaws.com/b/a%20key/with%2Bplus~tilde%3D.tar",
     {"Range": "bytes=0-1023", "If-Match": '"abc"'}, sigv4.EMPTY_SHA256, "FQoGZXIvYXdzE-token"),
    ("PUT", "http://localhost:9000/dst/out/%C3%A9t%C3%A9%20%2A.tar",
     {"Content-Length": "1048576", "x-amz-checksum-sha256": "7wtHo9sMmepXGHlGyHVtWE16HFq",
      "x-amz-sdk-checksum-algorithm": "SHA256", "Expect": "100-continue",
      "User-Agent": "not signed"},
     "625a4057955e8c74a5fc1ad5064bd518bb63b250f0077691febce42fac4c7989", None),
    ("HEAD", "https://bucket.s3.amazonaws.com/k", {}, sigv4.EMPTY_SHA256, "tok"),
]


@pytest.mark.parametrize("method,url,headers,payload,token", SIGNED_CASES)
def test_the_signer_signs_like_botocore(monkeypatch, method, url, headers, payload, token):
    from urllib.parse import urlsplit

    monkeypatch.setattr("botocore.auth.get_current_datetime", lambda: NOW.replace(tzinfo=None))
    region = "eu-west-1" if "eu-west-1" in url else "us-east-1"
    parts = urlsplit(url)
    host = sigv4.host_header(parts.scheme, parts.hostname or "", parts.port)

    class KnownPayload(S3SigV4Auth):  # botocore's signer, given the payload hash (as ours is)
        def payload(self, request):
            return payload

    theirs = AWSRequest(method=method, url=url, headers=dict(headers))
    auth = KnownPayload(Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG", token), "s3", region)
    auth.add_auth(theirs)
    ours = sigv4.Signer("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG", region, "s3", token)
    signed = ours.sign(method, parts.path, {"Host": host, **headers}, payload, NOW)
    assert signed["Authorization"] == theirs.headers["Authorization"]
    for name in ("X-Amz-Date", "X-Amz-Content-SHA256"):
        assert signed[name] == theirs.headers[name]
    assert signed.get("X-Amz-Security-Token") == theirs.headers.get("X-Amz-Security-Token")
    request, _ = sigv4.canonical_request(method, parts.path, "", signed, payload)
    del theirs.headers["Authorization"]  # what botocore signed: the request before it
    assert request == auth.canonical_request(theirs)
    # a second request the same day reuses the day's key: still the same signature
    again = ours.sign(method, parts.path, {"Host": host, **headers}, payload, NOW)
    assert again["Authorization"] == signed["Authorization"]
    assert "wJalrXUtnFEMI" not in repr(ours) and (token is None or token not in repr(ours))


def test_query_strings_are_canonical_like_botocore():
    params = [("versionId", "3/L4kqtJl+cR=x"), ("partNumber", "2"), ("a b", "")]
    request = AWSRequest(method="GET", url="http://h/b/k", params=params)
    assert sigv4.canonical_query(params) == S3SigV4Auth(
        Credentials("a", "b"), "s3", "r")._canonical_query_string_params(request.params)


@pytest.mark.anyio
@pytest.mark.parametrize("style,endpoint,expect", [
    ("path", "http://127.0.0.1:9", "http://127.0.0.1:9/bkt/a/b%20c.tar"),
    ("virtual", "http://localhost:9000", "http://bkt.localhost:9000/a/b%20c.tar"),
    ("path", None, "https://s3.eu-west-1.amazonaws.com/bkt/a/b%20c.tar"),
    ("virtual", None, "https://bkt.s3.eu-west-1.amazonaws.com/a/b%20c.tar"),
])
async def test_requests_go_where_botocore_sends_them(style, endpoint, expect):
    """Addressing style and region as configured: the URL and Host are botocore's. On
    AWS's own endpoints the store keeps botocore for everything (AWS redirects requests
    for a bucket in another region, which botocore follows and this path does not); the
    path is built by hand there to check its addressing all the same."""
    creds = {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "s3cr3t",
             "AWS_REGION": "eu-west-1", **({"AWS_ENDPOINT": endpoint} if endpoint else {})}
    async with S3DataStore(creds, bucket="bkt", addressing_style=style) as store:
        s3 = await store.client()
        sent = {}

        def capture(request, **_):
            sent.update(url=request.url, host=request.headers.get("host"))
            raise RuntimeError("captured")  # never sent

        s3.meta.events.register_first("before-send.s3", capture)
        with pytest.raises(Exception, match="captured"):
            await s3.head_object(Bucket="bkt", Key="a/b c.tar")
        assert (store.light() is None) == (endpoint is None)
        light = store.light() or s3_light.LightRequests(s3, "AKIDEXAMPLE", "s3cr3t", None)
        url, headers = await light._signed("HEAD", "bkt", "a/b c.tar", {}, sigv4.EMPTY_SHA256)
    assert str(url) == sent["url"] == expect
    assert headers["Host"] == url.raw_authority
    assert "/eu-west-1/s3/aws4_request" in headers["Authorization"]


# -- against moto ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def strict_moto():
    """A moto server that checks signatures: an IAM user allowed s3:*, and its bucket."""
    service = services.start_moto(in_process=False, auth_after=4)
    try:
        unsigned = {"endpoint_url": service.url, "region_name": "us-east-1",
                    "aws_access_key_id": "x", "aws_secret_access_key": "y"}
        iam = boto3.client("iam", **unsigned)
        iam.create_user(UserName="light")
        key = iam.create_access_key(UserName="light")["AccessKey"]
        iam.put_user_policy(UserName="light", PolicyName="s3", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        boto3.client("s3", **unsigned).create_bucket(Bucket="strict-light")
        yield service, {"AWS_ENDPOINT": service.url, "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
                        "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
    finally:
        service.stop()


def _raw(endpoint: str, creds: dict[str, str] | None = None):
    creds = creds or {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"}
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"])


def _no_botocore_for(store_client, *names):
    """Make the botocore calls the light path replaces fail, to prove they are not used."""
    for name in names:
        def refuse(*_, _name=name, **__):
            raise AssertionError(f"botocore's {_name} was called")
        setattr(store_client, name, refuse)


async def _seeded(source: S3DataStore, key: str, data: bytes) -> tuple[str, str, str]:
    digest = hashlib.sha256(data).hexdigest()
    etag = await source.put_bytes(key, data, digest)
    return source.url(key), digest, etag


@pytest.mark.anyio
@pytest.mark.parametrize("signed_payload", [None, True])
async def test_a_light_copy_lands_byte_for_byte_signed_as_moto_accepts(moto_server,
                                                                      strict_moto,
                                                                      signed_payload):
    """GET on one server, PUT on a signature-checking one (unsigned with Content-MD5 by
    default, or signed with the recorded sha256): the bytes read back by boto3 (an
    independent reader) are the source's, with the recorded sha256 as checksum."""
    strict, creds = strict_moto
    data = os.urandom(3 * 1024 * 1024 + 17)  # above EXPECT_ABOVE: the 100-continue PUT too
    small = os.urandom(1000)
    with FaultProxy(strict.url) as proxy:
        async with S3DataStore(make_credentials(moto_server.url),
                               bucket=make_bucket(moto_server.url)) as source, \
                S3DataStore({**creds, "AWS_ENDPOINT": proxy.url}, bucket="strict-light",
                            signed_payload=signed_payload) as dest:
            done = await _copy_two(source, dest, data, small)
    assert [h["x-amz-content-sha256"] for h in proxy.sent("PUT")] == (
        [sigv4.UNSIGNED_PAYLOAD] * 2 if signed_payload is None
        else [hashlib.sha256(b).hexdigest() for b in (data, small)])
    raw = _raw(strict.url, creds)
    for copied, body in zip(done, (data, small), strict=True):
        assert copied.verified and copied.sha256 == hashlib.sha256(body).hexdigest()
        got = raw.get_object(Bucket="strict-light", Key=copied.url.split("/", 3)[3],
                             ChecksumMode="ENABLED")
        assert got["Body"].read() == body
        assert got["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(body).digest()).decode()


async def _copy_two(source: S3DataStore, dest: S3DataStore, data: bytes, small: bytes):
    urls = [await _seeded(source, f"in/{n}.tar", d) for n, d in (("big", data),
                                                                  ("small", small))]
    _no_botocore_for(await source.client(), "get_object", "head_object")
    _no_botocore_for(await dest.client(), "put_object", "head_object")
    before = (source.request_count, dest.request_count)
    done = [await dest.copy_from(source, url, f"out/é {i}.tar", size, known_sha256=digest,
                                 source_etag=etag)
            for i, ((url, digest, etag), size) in enumerate(zip(urls, (len(data),
                                                                       len(small)),
                                                                strict=True))]
    assert (source.request_count - before[0], dest.request_count - before[1]) == (2, 2)
    head = await dest.head(done[0].url)  # a light HEAD, signed too
    assert (head["ContentLength"], head["ETag"].strip('"')) == (len(data), done[0].etag)
    with pytest.raises(ObjectNotFoundError):
        await dest.head(dest.url("out/missing"))
    return done


@pytest.mark.anyio
@pytest.mark.parametrize("wrong", ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"])
async def test_wrong_credentials_are_our_clear_auth_error_without_the_secret(
        moto_server, strict_moto, wrong):
    _, good = strict_moto
    creds = {**good, wrong: "AKIAWRONGWRONGWRONG" if wrong == "AWS_ACCESS_KEY_ID"
             else "a-wrong-secret-that-must-not-leak"}
    async with S3DataStore(make_credentials(moto_server.url),
                           bucket=make_bucket(moto_server.url)) as source, \
            S3DataStore(creds, bucket="strict-light", max_attempts=2) as dest:
        url, digest, etag = await _seeded(source, "in/x.tar", b"x" * 5000)
        await dest.client()
        assert dest.light() is not None
        with pytest.raises(StorageError) as copy:
            await dest.copy_from(source, url, "out/denied.tar", 5000, known_sha256=digest,
                                 source_etag=etag)
        with pytest.raises(StorageError) as head:
            await dest.size_of(dest.url("in/x.tar"))
        assert dest.request_count == 2  # an auth error is not retried
    for error in (copy.value, head.value):
        text = str(error) + repr(error) + repr(error.__cause__)
        assert "S3 refused the credentials" in str(error)
        assert creds["AWS_SECRET_ACCESS_KEY"] not in text
        assert good["AWS_SECRET_ACCESS_KEY"] not in text
    assert copy.value.code == ("InvalidAccessKeyId" if wrong == "AWS_ACCESS_KEY_ID"
                               else "SignatureDoesNotMatch")


@pytest.mark.anyio
async def test_a_session_token_is_sent_and_signed(moto_server):
    """x-amz-security-token: sent on every light request, and among the signed headers."""
    creds = {**make_credentials("http://127.0.0.1:9"), "AWS_SESSION_TOKEN": "token-not-to-log"}
    async with S3DataStore(creds, bucket="b") as store:
        await store.client()
        light = store.light()
        _, headers = await light._signed("GET", "b", "k", {}, sigv4.EMPTY_SHA256)
        assert headers["X-Amz-Security-Token"] == "token-not-to-log"
        assert "x-amz-security-token" in headers["Authorization"].split("SignedHeaders=")[1]
        assert "token-not-to-log" not in repr(store) + repr(light) + repr(store.credentials)


@pytest.mark.anyio
async def test_slowdown_is_retried_by_the_policy_and_paces_the_store(moto_server,
                                                                    second_moto_server):
    """503 SlowDown on the PUT (twice) and on the GET (once): botocore's policy retries
    both, the destination's pace halves, and the object still lands whole."""
    data = os.urandom(300_000)
    src_bucket, dst_bucket = make_bucket(moto_server.url), make_bucket(second_moto_server.url)
    with FaultProxy(second_moto_server.url) as dst_proxy, \
            FaultProxy(moto_server.url) as src_proxy:
        puts = dst_proxy.add(Fault("status", method="PUT", status=503, payload=SLOW_DOWN,
                                   times=2))
        gets = src_proxy.add(Fault("status", method="GET", status=503, payload=SLOW_DOWN,
                                   times=1))
        async with S3DataStore(make_credentials(src_proxy.url), bucket=src_bucket) as source, \
                S3DataStore(make_credentials(dst_proxy.url), bucket=dst_bucket,
                            max_concurrency=8) as dest:
            # no climbing back within the test, however long botocore's backoff waits
            dest.pace = Pace(8, window=3600, cooldown=3600)
            url, digest, etag = await _seeded(source, "in/x.tar", data)
            done = await dest.copy_from(source, url, "out/x.tar", len(data),
                                        known_sha256=digest, source_etag=etag)
            assert (puts.fired, gets.fired) == (2, 1)
            assert dest.pace.throttles == 2 and dest.pace.limit == 4  # one burst, one halving
            assert dest.buffers().total_tokens == 4
            assert source.pace.throttles == 1
            assert dst_proxy.count("PUT", "out/x.tar") == 3
            assert src_proxy.count("GET", "in/x.tar") == 1 + 3  # 503, then one per PUT
    assert _raw(second_moto_server.url).get_object(Bucket=dst_bucket,
                                                   Key="out/x.tar")["Body"].read() == data
    assert done.etag


@pytest.mark.anyio
async def test_slowdown_past_the_attempts_is_a_storage_error(moto_server, second_moto_server):
    data = b"y" * 10_000
    with FaultProxy(second_moto_server.url) as proxy:
        proxy.add(Fault("status", method="PUT", status=503, payload=SLOW_DOWN, times=None))
        async with S3DataStore(make_credentials(moto_server.url),
                               bucket=make_bucket(moto_server.url)) as source, \
                S3DataStore(make_credentials(proxy.url), bucket=make_bucket(
                    second_moto_server.url), max_attempts=3) as dest:
            url, digest, etag = await _seeded(source, "in/x.tar", data)
            with pytest.raises(StorageError, match=r"PutObject .* 503 SlowDown") as info:
                await dest.copy_from(source, url, "out/x.tar", len(data), known_sha256=digest,
                                     source_etag=etag)
            assert info.value.code == "SlowDown" and proxy.count("PUT") == 3


@pytest.mark.anyio
@pytest.mark.parametrize("signed_payload", [None, True])  # unsigned (the default), signed
async def test_a_changed_source_is_refused_before_any_put(moto_server, second_moto_server,
                                                          signed_payload):
    data = bytes(range(256)) * 80
    with FaultProxy(second_moto_server.url) as proxy:
        async with S3DataStore(make_credentials(moto_server.url),
                               bucket=make_bucket(moto_server.url)) as source, \
                S3DataStore(make_credentials(proxy.url),
                            bucket=make_bucket(second_moto_server.url),
                            signed_payload=signed_payload) as dest:
            url, digest, etag = await _seeded(source, "in/x.tar", data)
            await source.put_bytes("in/x.tar", data[::-1])  # another version now
            with pytest.raises(SourceChangedError, match="GetObject"):
                await dest.copy_from(source, url, "out/x.tar", len(data), known_sha256=digest,
                                     source_etag=etag)
            assert proxy.count("PUT") == 0
            with pytest.raises(ObjectNotFoundError):
                await dest.head(dest.url("out/x.tar"))


@pytest.mark.anyio
async def test_a_cut_source_body_is_detected_and_sent_again(moto_server, second_moto_server):
    """A GET body cut mid-way fails that PUT (S3 would refuse its hash anyway) and the
    pair is tried again; cut every time, the error names the GET, and nothing landed."""
    data = os.urandom(400_000)
    dst_bucket = make_bucket(second_moto_server.url)
    with FaultProxy(moto_server.url) as proxy:
        async with S3DataStore(make_credentials(proxy.url),
                               bucket=make_bucket(moto_server.url)) as source, \
                S3DataStore(make_credentials(second_moto_server.url), bucket=dst_bucket,
                            max_attempts=3) as dest:
            url, digest, etag = await _seeded(source, "in/x.tar", data)
            cut = proxy.add(Fault("cut", method="GET", path=r"in/x\.tar", after=150_000))
            done = await dest.copy_from(source, url, "out/x.tar", len(data),
                                        known_sha256=digest, source_etag=etag)
            assert cut.fired == 1 and proxy.count("GET", r"in/x\.tar") == 2
            assert _raw(second_moto_server.url).get_object(
                Bucket=dst_bucket, Key="out/x.tar")["Body"].read() == data
            proxy.add(Fault("cut", method="GET", path=r"in/x\.tar", after=150_000,
                            times=None))
            with pytest.raises(StorageError, match="GetObject") as info:
                await dest.copy_from(source, url, "out/y.tar", len(data),
                                     known_sha256=digest, source_etag=etag)
            assert "PutObject" not in str(info.value)
            with pytest.raises(ObjectNotFoundError):
                await dest.head(dest.url("out/y.tar"))
    assert done.sha256 == digest


@pytest.mark.anyio
async def test_a_redirect_is_an_error_never_followed(moto_server, second_moto_server):
    """A 307 to another host: our StorageError, and nothing (no signed header, no session
    token) is sent where it points."""
    moved = (b"<Error><Code>TemporaryRedirect</Code><Message>Please re-send this request "
             b"to the specified temporary endpoint.</Message></Error>")
    creds = {**make_credentials(moto_server.url), "AWS_SESSION_TOKEN": "token-not-to-send"}
    with FaultProxy(moto_server.url) as proxy, FaultProxy(moto_server.url) as elsewhere:
        async with S3DataStore({**creds, "AWS_ENDPOINT": proxy.url},
                               bucket=make_bucket(moto_server.url)) as source, \
                S3DataStore(make_credentials(second_moto_server.url),
                            bucket=make_bucket(second_moto_server.url)) as dest:
            url, digest, etag = await _seeded(source, "in/x.tar", b"r" * 4000)
            proxy.add(Fault("status", method="GET", status=307, payload=moved,
                            headers={"Location": f"{elsewhere.url}/stolen"}))
            with pytest.raises(StorageError, match="TemporaryRedirect") as info:
                await dest.copy_from(source, url, "out/x.tar", 4000, known_sha256=digest,
                                     source_etag=etag)
            assert elsewhere.count() == 0 and proxy.count("GET") == 1
    assert "token-not-to-send" not in str(info.value) + repr(info.value)


BAD_DIGEST = (b"<Error><Code>BadDigest</Code><Message>The Content-MD5 you specified did not "
              b"match what we received.</Message></Error>")


def _signing(headers: dict[str, str]) -> tuple[str, str | None]:
    """How a PUT went out, as the proxy saw it: its payload hash and its Content-MD5."""
    return headers["x-amz-content-sha256"], headers.get("content-md5")


def _b64md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


async def _seeded_multipart(endpoint: str, bucket: str, key: str, data: bytes) -> str:
    """An object of two parts (put by boto3): its ETag is "<md5 of md5s>-2", no md5."""
    raw = _raw(endpoint)
    upload = raw.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    half = 300 * 1024  # above the tests' S3_UPLOAD_PART_MIN_SIZE
    etags = [raw.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=n,
                             Body=chunk)["ETag"]
             for n, chunk in ((1, data[:half]), (2, data[half:]))]
    raw.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={
        "Parts": [{"ETag": e, "PartNumber": n} for n, e in enumerate(etags, 1)]})
    return raw.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')


@pytest.mark.anyio
@pytest.mark.parametrize("recorded,signed_payload,unsigned", [
    ("md5", None, True),          # the default: unsigned, the recorded md5 as Content-MD5
    ("md5", True, False),         # forced
    ("md5", False, True),
    ("none", None, False),        # no ETag recorded (an entry of the upstream library)
    ("multipart", None, False),   # "<...>-2": no md5 of the body
])
async def test_a_streamed_put_is_unsigned_only_with_the_md5_recorded_at_insert(
        moto_server, second_moto_server, recorded, signed_payload, unsigned):
    """What the destination received (through the proxy): UNSIGNED-PAYLOAD with the
    recorded ETag as Content-MD5, or signed with the recorded sha256 (no Content-MD5);
    the recorded sha256 as x-amz-checksum-sha256 either way; boto3 reads back the bytes."""
    data = os.urandom(400 * 1024)
    digest = hashlib.sha256(data).hexdigest()
    src_bucket, dst_bucket = make_bucket(moto_server.url), make_bucket(second_moto_server.url)
    with FaultProxy(second_moto_server.url) as proxy:
        async with S3DataStore(make_credentials(moto_server.url), bucket=src_bucket) as source, \
                S3DataStore(make_credentials(proxy.url), bucket=dst_bucket,
                            signed_payload=signed_payload) as dest:
            if recorded == "multipart":
                etag = await _seeded_multipart(moto_server.url, src_bucket, "in/x.tar", data)
                url = source.url("in/x.tar")
                assert etag.endswith("-2")
            else:
                url, _, etag = await _seeded(source, "in/x.tar", data)
            done = await dest.copy_from(source, url, "out/x.tar", len(data),
                                        known_sha256=digest,
                                        source_etag=None if recorded == "none" else etag)
    (put,) = proxy.sent("PUT", "out/x.tar")
    assert _signing(put) == ((sigv4.UNSIGNED_PAYLOAD, _b64md5(data)) if unsigned
                             else (digest, None))
    assert put["x-amz-checksum-sha256"] == base64.b64encode(bytes.fromhex(digest)).decode()
    assert done.verified and done.sha256 == digest and done.etag == hashlib.md5(data).hexdigest()
    assert _raw(second_moto_server.url).get_object(Bucket=dst_bucket,
                                                   Key="out/x.tar")["Body"].read() == data


@pytest.mark.anyio
@pytest.mark.parametrize("where", ["PUT body", "GET body"])
async def test_a_body_damaged_on_its_way_is_refused_and_not_left(moto_server,
                                                                 second_moto_server, where):
    """One byte changed between the servers (on the PUT's way, or the GET's): the
    unsigned PUT's answer has another ETag than the recorded md5 (moto checks neither the
    Content-MD5 nor the payload's hash; radosgw refuses it with BadDigest), the bytes read
    back are not the recorded sha256's, so the copy fails and the object is deleted."""
    data = b"A" + os.urandom(200_000)
    dst_bucket = make_bucket(second_moto_server.url)
    with FaultProxy(moto_server.url) as src_proxy, FaultProxy(second_moto_server.url) as proxy:
        if where == "PUT body":
            damage = proxy.add(Fault("tamper", method="PUT", path="out/", replace=(rb"^A", b"B"),
                                     times=None))
        else:
            damage = src_proxy.add(Fault("body", method="GET", path="in/",
                                         replace=(rb"^A", b"B"), times=None))
        async with S3DataStore(make_credentials(src_proxy.url),
                               bucket=make_bucket(moto_server.url)) as source, \
                S3DataStore(make_credentials(proxy.url), bucket=dst_bucket) as dest:
            url, digest, etag = await _seeded(source, "in/x.tar", data)
            with pytest.raises(StorageError, match="other bytes than the source") as info:
                await dest.copy_from(source, url, "out/x.tar", len(data), known_sha256=digest,
                                     source_etag=etag)
            assert damage.fired >= 1
            assert _signing(proxy.sent("PUT", "out/x.tar")[0])[0] == sigv4.UNSIGNED_PAYLOAD
            with pytest.raises(ObjectNotFoundError):
                await dest.head(dest.url("out/x.tar"))
    assert hashlib.md5(data).hexdigest() in str(info.value)


@pytest.mark.anyio
async def test_the_delete_of_a_damaged_copy_spares_a_good_one_put_there_since(
        moto_server, second_moto_server):
    """The damaged object is deleted If-Match the ETag its PUT's answer gave: when another
    run (a rerun beside a stale one: single PUTs are not fenced) has put the good bytes
    at the key between the read-back and the delete, the server keeps them."""
    data = b"A" + os.urandom(100_000)
    dst_bucket = make_bucket(second_moto_server.url)
    with FaultProxy(second_moto_server.url) as proxy:
        proxy.add(Fault("tamper", method="PUT", path="out/", replace=(rb"^A", b"B"),
                        times=None))
        held = proxy.add(Fault("delay", method="DELETE", path="out/", seconds=1.0))
        async with S3DataStore(make_credentials(moto_server.url),
                               bucket=make_bucket(moto_server.url)) as source, \
                S3DataStore(make_credentials(proxy.url), bucket=dst_bucket) as dest:
            url, digest, etag = await _seeded(source, "in/x.tar", data)

            async def other_run() -> None:
                while not held.fired:
                    await anyio.sleep(0.01)
                await anyio.to_thread.run_sync(functools.partial(
                    _raw(second_moto_server.url).put_object, Bucket=dst_bucket,
                    Key="out/x.tar", Body=data))

            async with anyio.create_task_group() as tg:
                tg.start_soon(other_run)
                with pytest.raises(StorageError, match="other bytes than the source"):
                    await dest.copy_from(source, url, "out/x.tar", len(data),
                                         known_sha256=digest, source_etag=etag)
    (delete,) = proxy.sent("DELETE", "out/x.tar")
    assert delete["if-match"] == '"' + hashlib.md5(b"B" + data[1:]).hexdigest() + '"'
    assert _raw(second_moto_server.url).get_object(Bucket=dst_bucket,
                                                   Key="out/x.tar")["Body"].read() == data


@pytest.mark.anyio
@pytest.mark.parametrize("signed_payload", [None, False])
async def test_a_refused_content_md5_is_sent_signed_by_default(moto_server, second_moto_server,
                                                               signed_payload):
    """BadDigest to the unsigned PUT (what a server says when the recorded ETag was not
    the body's md5, SSE-C/KMS, or the body was damaged): by default sent again signed with
    the recorded sha256, and the store's later PUTs signed from the start; with
    signed_payload=False, the copy fails."""
    data = os.urandom(100_000)
    dst_bucket = make_bucket(second_moto_server.url)
    with FaultProxy(second_moto_server.url) as proxy:
        refused = proxy.add(Fault("status", method="PUT", status=400, payload=BAD_DIGEST))
        async with S3DataStore(make_credentials(moto_server.url),
                               bucket=make_bucket(moto_server.url)) as source, \
                S3DataStore(make_credentials(proxy.url), bucket=dst_bucket,
                            signed_payload=signed_payload) as dest:
            url, digest, etag = await _seeded(source, "in/x.tar", data)
            if signed_payload is False:
                with pytest.raises(StorageError, match="BadDigest") as info:
                    await dest.copy_from(source, url, "out/x.tar", len(data),
                                         known_sha256=digest, source_etag=etag)
                assert info.value.code == "BadDigest" and proxy.count("PUT") == 1
                return
            for key in ("out/x.tar", "out/y.tar"):
                await dest.copy_from(source, url, key, len(data), known_sha256=digest,
                                     source_etag=etag)
    assert refused.fired == 1
    assert [_signing(h) for h in proxy.sent("PUT")] == [
        (sigv4.UNSIGNED_PAYLOAD, _b64md5(data)), (digest, None), (digest, None)]
    for key in ("out/x.tar", "out/y.tar"):
        assert _raw(second_moto_server.url).get_object(Bucket=dst_bucket,
                                                       Key=key)["Body"].read() == data


@pytest.mark.anyio
@pytest.mark.parametrize("signed_payload", [None, False])
async def test_an_answer_whose_etag_is_no_md5_is_proven_by_the_bytes_read_back(
        moto_server, second_moto_server, signed_payload):
    """An answer whose ETag is not the recorded md5 although the bytes are right (a
    destination whose ETags are no md5s: SSE-KMS): the object is read back and hashed,
    the copy stands; by default the store signs its later streamed PUTs."""
    data = os.urandom(50_000)
    digest = hashlib.sha256(data).hexdigest()
    dst_bucket = make_bucket(second_moto_server.url)
    with FaultProxy(second_moto_server.url) as proxy:
        async with S3DataStore(make_credentials(moto_server.url),
                               bucket=make_bucket(moto_server.url)) as source, \
                S3DataStore(make_credentials(proxy.url), bucket=dst_bucket,
                            signed_payload=signed_payload) as dest:
            url, _, etag = await _seeded(source, "in/x.tar", data)
            proxy.add(Fault("headers", method="PUT", headers={"ETag": '"0123456789abcdef'
                                                                     '0123456789abcdef"'}))
            done = await dest.copy_from(source, url, "out/y.tar", len(data),
                                        known_sha256=digest, source_etag=etag)
            assert done.etag == "0123456789abcdef" * 2 and done.sha256 == digest
            assert proxy.count("GET", "out/y.tar") == 1  # read back
            await dest.copy_from(source, url, "out/z.tar", len(data), known_sha256=digest,
                                 source_etag=etag)
    assert [_signing(h)[0] for h in proxy.sent("PUT")] == [
        sigv4.UNSIGNED_PAYLOAD, digest if signed_payload is None else sigv4.UNSIGNED_PAYLOAD]
    for key in ("out/y.tar", "out/z.tar"):
        assert _raw(second_moto_server.url).get_object(Bucket=dst_bucket,
                                                       Key=key)["Body"].read() == data


@pytest.mark.anyio
@pytest.mark.pds
async def test_a_promotion_whose_shard_is_damaged_on_its_way_writes_no_record(
        index, client, tmp_path, second_moto_server):
    """The pipeline over the unsigned default: the damaged shard fails the promotion
    (ShardTransferError naming it), no record, and no object under its key."""
    from atdata_async import Dataset, ShardTransferError
    from atdata_async.atmosphere import DATASET_COLLECTION
    from atdata_async.promote import promote_to_atmosphere
    from tests.samples import FeatureSample, write_shards

    (tmp_path / "shards").mkdir()
    paths = write_shards(tmp_path / "shards", 3, 200)
    entry = await index.insert_dataset(Dataset[FeatureSample]([str(p) for p in paths]),
                                       name="damaged")
    assert all(len(entry.etags[u]) == 32 for u in entry.data_urls)  # md5s: unsigned PUTs
    dst_bucket = make_bucket(second_moto_server.url)
    with FaultProxy(second_moto_server.url) as proxy:
        damage = proxy.add(Fault("tamper", method="PUT", path=r"-000001\.tar",
                                 replace=(rb"(?s)^.", b"\x00"), times=None))
        async with S3DataStore(make_credentials(proxy.url), bucket=dst_bucket) as dest:
            with pytest.raises(ShardTransferError) as info:
                await promote_to_atmosphere(entry, index, client, data_store=dest,
                                            name="damaged")
        puts = proxy.sent("PUT")
    assert damage.fired >= 1 and list(info.value.failures) == [entry.data_urls[1]]
    assert "other bytes than the source" in str(info.value)
    assert {h["x-amz-content-sha256"] for h in puts} == {sigv4.UNSIGNED_PAYLOAD}
    assert [r async for r in client.list_records(DATASET_COLLECTION)] == []
    left = _raw(second_moto_server.url).list_objects_v2(Bucket=dst_bucket).get("Contents", [])
    assert not [o["Key"] for o in left if o["Key"].endswith("-000001.tar")]


@pytest.mark.anyio
async def test_the_light_path_can_be_turned_off(moto_server, second_moto_server, monkeypatch):
    def refuse(*_, **__):
        raise AssertionError("the light path was used")

    monkeypatch.setattr(s3_light.LightRequests, "put", refuse)
    monkeypatch.setattr(s3_light.LightRequests, "get", refuse)
    data = b"w" * 30_000
    async with S3DataStore(make_credentials(moto_server.url), bucket=make_bucket(
            moto_server.url), light_requests=False) as source, \
            S3DataStore(make_credentials(second_moto_server.url),
                        bucket=make_bucket(second_moto_server.url),
                        light_requests=False) as dest:
        url, digest, etag = await _seeded(source, "in/x.tar", data)
        done = await dest.copy_from(source, url, "out/x.tar", len(data), known_sha256=digest,
                                    source_etag=etag)
        assert (await dest.head(done.url))["ContentLength"] == len(data)
        assert dest.light() is None and source.light() is None


@pytest.mark.parametrize("signed_payload", [None, True, False])
def test_a_workers_store_signs_as_the_callers_does(tmp_path, signed_payload):
    """A Dask worker rebuilds the store from its StoreSpec: the same signed_payload."""
    from atdata_async._pipeline.executor import CredentialSource, StoreSpec

    env = tmp_path / "s3.env"
    env.write_text("AWS_ACCESS_KEY_ID=x\nAWS_SECRET_ACCESS_KEY=y\n")
    store = S3DataStore(make_credentials("http://127.0.0.1:9"), bucket="b",
                        signed_payload=signed_payload)
    rebuilt = StoreSpec.of(store, CredentialSource(path=str(env))).open()
    assert rebuilt.signed_payload is signed_payload


@pytest.mark.parametrize("style,light", [("virtual", True), ("auto", False), ("path", False)])
def test_a_workers_store_addresses_its_requests_as_the_callers_does(tmp_path, style, light):
    """A Dask worker's rebuilt store keeps the caller's addressing_style (a server that
    answers only virtual-hosted requests) and light_requests, not the defaults."""
    from atdata_async._pipeline.executor import CredentialSource, StoreSpec

    env = tmp_path / "s3.env"
    env.write_text("AWS_ACCESS_KEY_ID=x\nAWS_SECRET_ACCESS_KEY=y\n")
    store = S3DataStore(make_credentials("http://127.0.0.1:9"), bucket="b",
                        addressing_style=style, light_requests=light)
    rebuilt = StoreSpec.of(store, CredentialSource(path=str(env))).open()
    assert (rebuilt.addressing_style, rebuilt.light_requests) == (style, light)


def test_unknown_addressing_style_is_refused():
    from atdata_async import ConfigurationError

    with pytest.raises(ConfigurationError, match="addressing_style"):
        S3DataStore(make_credentials("http://127.0.0.1:9"), bucket="b",
                    addressing_style="sideways")




@pytest.mark.anyio
async def test_a_light_server_side_copy_is_signed_as_moto_accepts(strict_moto):
    """CopyObject on the light path (one account, one endpoint): accepted by a
    signature-checking server with a key that needs escaping in x-amz-copy-source, the
    new object byte for byte the source's, its ETag the one S3 reports."""
    strict, creds = strict_moto
    data = os.urandom(70_000)
    async with S3DataStore(creds, bucket="strict-light") as store:
        url, _, etag = await _seeded(store, "in/a b+é~.tar", data)
        _no_botocore_for(await store.client(), "copy_object")
        before = store.request_count
        done = await store.copy_from(store, url, "out/é copy.tar", len(data),
                                     source_etag=etag)
        assert store.request_count - before == 1
        assert done.etag == etag and (await store.head(done.url))["ETag"].strip('"') == etag
    got = _raw(strict.url, creds).get_object(Bucket="strict-light", Key="out/é copy.tar")
    assert got["Body"].read() == data


@pytest.mark.anyio
async def test_a_light_copy_refused_or_failed_inside_a_200_is_handled_like_botocore(
        moto_server):
    """412 to CopySourceIfMatch: SourceChangedError, not retried. A 200 whose body is an
    <Error> (S3 failing a copy after the answer began): retried, then the copy lands."""
    bucket = make_bucket(moto_server.url)
    with FaultProxy(moto_server.url) as proxy:
        async with S3DataStore(make_credentials(proxy.url), bucket=bucket) as store:
            url, _, etag = await _seeded(store, "in/x.tar", b"z" * 4000)
            await store.client()
            assert store.light() is not None
            refused = proxy.add(Fault(
                "status", method="PUT", path=r"/out/changed", status=412, payload=(
                    b"<Error><Code>PreconditionFailed</Code><Message>At least one of the "
                    b"pre-conditions you specified did not hold</Message></Error>")))
            with pytest.raises(SourceChangedError, match="CopyObject"):
                await store.copy_from(store, url, "out/changed.tar", 4000, source_etag=etag)
            assert refused.fired == 1 and proxy.count("PUT", "/out/changed") == 1
            broken = proxy.add(Fault(
                "body", method="PUT", path=r"/out/late", replace=(
                    rb"(?s)<CopyObjectResult.*", b"<Error><Code>InternalError</Code>"
                    b"<Message>We encountered an internal error.</Message></Error>")))
            done = await store.copy_from(store, url, "out/late.tar", 4000, source_etag=etag)
            assert broken.fired == 1 and proxy.count("PUT", "/out/late") == 2
            assert done.etag == etag
