"""Local services for the tests and the demo: redis-server, moto S3, the reference PDS.

Each is started on 127.0.0.1 on a free port and stopped by the PID we started.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PDS_DIR = REPO / "scripts" / "pds"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check: Callable[[], bool], timeout: float, what: str,
               proc: subprocess.Popen | None = None) -> None:
    """Poll ``check``; a process being started is stopped if this fails or is
    interrupted (Ctrl-C, SIGTERM), so no half-started service outlives its starter."""
    try:
        _wait_until(check, timeout, what, proc)
    except BaseException:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        raise


def _wait_until(check: Callable[[], bool], timeout: float, what: str,
                proc: subprocess.Popen | None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} while starting")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready after {timeout:.0f}s")


@dataclass
class Service:
    """A process we started; ``stop()`` signals that PID only."""

    name: str
    url: str
    proc: subprocess.Popen | None = None
    extra: dict = field(default_factory=dict)
    _stop: Callable[[], None] | None = None

    def stop(self) -> None:
        if self._stop is not None:
            self._stop()
            self._stop = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_redis(workdir: Path, *, detach: bool = False) -> Service:
    """A throwaway redis-server (no persistence) on a free port. ``detach``: in its own
    session, so it outlives its starter (``scripts/demo --keep``)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install -y redis-server)")
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=detach,
    )

    def ping() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    wait_until(ping, 15, "redis-server", proc)
    return Service("redis", f"redis://127.0.0.1:{port}/0", proc)


def start_moto(in_process: bool = True, *, auth_after: int | None = None,
               detach: bool = False, keep_alive: bool = False) -> Service:
    """A moto S3 server: in this process (tests) or as its own process (benchmarks).

    ``auth_after=N`` (own process only): after N unchecked requests (enough to create an
    IAM user, its key and a bucket) moto checks every signature like AWS does.
    ``keep_alive`` (own process only): moto's app served by waitress, which keeps
    connections open as real S3 servers do (tests/moto_keepalive.py), not by
    ``moto_server``, which closes each one.
    """
    if in_process:
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        return Service("moto", f"http://{host}:{port}", _stop=server.stop)
    port = free_port()
    moto = Path(sys.executable).with_name("moto_server")
    env = dict(os.environ)
    if auth_after is not None:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(auth_after)
    argv = [str(moto), "-H", "127.0.0.1", "-p", str(port)]
    if keep_alive:
        argv = [sys.executable, str(Path(__file__).with_name("moto_keepalive.py")), str(port)]
    proc = subprocess.Popen(argv, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=detach)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: urllib.request.urlopen(url + "/moto-api/", timeout=1).status == 200,
               30, "moto_server", proc)
    return Service("moto", url, proc)


def start_http(directory: Path) -> Service:
    """A static file server (the standard library's) for shards published over http."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(directory))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, name="http-shards", daemon=True).start()

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return Service("http", f"http://127.0.0.1:{server.server_port}", _stop=stop,
                   extra={"root": directory})


def install_pds() -> Path:
    """Install (once, cached) Node 22 + the reference PDS; returns the install folder."""
    out = subprocess.run(["bash", str(PDS_DIR / "install.sh")], check=True,
                         stdout=subprocess.PIPE, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def start_plc(workdir: Path) -> Service:
    """An in-memory did:plc directory alone, for several PDSs to share (``start_pds(...,
    plc_url=service.url)``). Its URL names ``localhost``: the PDS refuses IP literals."""
    home = install_pds()
    node = (home / ".installed").read_text().strip()
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**os.environ, "PLC_PORT": str(port), "PLC_STATE_FILE": str(workdir / "plc.json")}
    with open(workdir / "plc.log", "wb") as log:
        proc = subprocess.Popen([node, str(home / "plc-server.mjs")], cwd=home, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    url = f"http://localhost:{port}"
    wait_until(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/_health",
                                              timeout=2).status == 200,
               60, f"PLC (log: {workdir / 'plc.log'})", proc)
    return Service("plc", url, proc)


def start_pds(workdir: Path, *, rate_limits: bool = False,
              plc_url: str | None = None, detach: bool = False) -> Service:
    """The reference PDS on a free port, with an in-memory PLC of its own or the shared
    one at ``plc_url``; ``extra`` has the JWT secret and the PLC's URL. ``detach``: in its
    own session, so it outlives its starter (``scripts/demo --keep``)."""
    home = install_pds()
    node = (home / ".installed").read_text().strip()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "blobs").mkdir(exist_ok=True)
    port = free_port()
    jwt_secret = secrets.token_hex(16)
    env = {
        **os.environ,
        "PDS_HOSTNAME": "localhost",
        "PDS_PORT": str(port),
        "PDS_DATA_DIRECTORY": str(workdir),
        "PDS_BLOBSTORE_DISK_LOCATION": str(workdir / "blobs"),
        "PDS_JWT_SECRET": jwt_secret,
        "PDS_DPOP_SECRET": secrets.token_hex(32),
        "PDS_PLC_ROTATION_KEY_K256_PRIVATE_KEY_HEX": secrets.token_hex(32),
        "PDS_ADMIN_PASSWORD": secrets.token_hex(8),
        "PDS_DEV_MODE": "true",
        "PDS_INVITE_REQUIRED": "false",
        "PDS_CRAWLERS": "",
        "PDS_RATE_LIMITS_ENABLED": "true" if rate_limits else "false",
        "PDS_STATE_FILE": str(workdir / "state.json"),
        "LOG_ENABLED": "true",
        "LOG_LEVEL": "warn",
    }
    for name in ("PDS_BSKY_APP_VIEW_URL", "PDS_BSKY_APP_VIEW_DID", "PDS_MOD_SERVICE_URL",
                 "PDS_MOD_SERVICE_DID", "PDS_REPORT_SERVICE_URL", "PDS_REPORT_SERVICE_DID",
                 "PDS_EMAIL_SMTP_URL", "PDS_REDIS_SCRATCH_ADDRESS", "PDS_ENTRYWAY_URL",
                 "PDS_DID_PLC_URL"):
        env.pop(name, None)
    if plc_url is not None:
        env["PDS_DID_PLC_URL"] = plc_url
    with open(workdir / "pds.log", "wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen([node, str(home / "pds-server.mjs")], cwd=home, env=env,
                                stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=detach)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: urllib.request.urlopen(url + "/xrpc/_health", timeout=2).status == 200
               and (workdir / "state.json").exists(), 90, f"PDS (log: {workdir / 'pds.log'})", proc)
    state = json.loads((workdir / "state.json").read_text())
    return Service("pds", url, proc, extra={"jwt_secret": jwt_secret, "plc_url": state["plcUrl"],
                                            "public_url": f"http://localhost:{port}"})


def xrpc_post(url: str, nsid: str, body: dict) -> dict:
    request = urllib.request.Request(
        f"{url}/xrpc/{nsid}", data=json.dumps(body).encode(),
        headers={"content-type": "application/json"}, method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def create_account(pds_url: str, name: str) -> dict:
    """A fresh ``<name>.test`` account: {handle, password, did, ...}."""
    password = f"pw-{secrets.token_hex(8)}"
    handle = f"{name}.test"
    out = xrpc_post(pds_url, "com.atproto.server.createAccount",
                    {"handle": handle, "email": f"{name}@example.test", "password": password})
    return {"handle": handle, "password": password, "did": out["did"],
            "accessJwt": out["accessJwt"], "refreshJwt": out["refreshJwt"]}


def create_app_password(pds_url: str, access_jwt: str, name: str) -> str:
    request = urllib.request.Request(
        f"{pds_url}/xrpc/com.atproto.server.createAppPassword",
        data=json.dumps({"name": name}).encode(),
        headers={"content-type": "application/json", "authorization": f"Bearer {access_jwt}"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["password"]
