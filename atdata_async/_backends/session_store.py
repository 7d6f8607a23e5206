"""The CLI's saved ATProto sessions: log in once, reuse (and refresh) the tokens after.

One JSON file, ``$ATDATA_CONFIG_DIR`` or ``$XDG_CONFIG_HOME/atdata-async`` or
``~/.config/atdata-async``, ``sessions.json``: ``{"<pds url>": {session dict}}``. The
directory is 0700 and the file 0600, written whole to a temporary file and renamed, so
a crash never leaves half a token file. The tokens are never logged or printed; a
password is never stored (only the session the PDS handed out for it).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

FILE_NAME = "sessions.json"


def config_dir() -> Path:
    explicit = os.environ.get("ATDATA_CONFIG_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "atdata-async"


def _path() -> Path:
    return config_dir() / FILE_NAME


def _read_all() -> dict[str, Any]:
    try:
        data = json.loads(_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _key(pds_url: str) -> str:
    return pds_url.rstrip("/")


def load(pds_url: str, handle: str | None = None) -> dict[str, Any] | None:
    """The saved session for this PDS (and handle or DID, when one is asked for)."""
    session = _read_all().get(_key(pds_url))
    if not isinstance(session, dict) or not {"did", "handle", "accessJwt",
                                             "refreshJwt"} <= set(session):
        return None
    if handle is not None and handle not in (session["handle"], session["did"]):
        return None
    return session


def lapsed(session: dict[str, Any], margin: float = 60.0) -> bool:
    """True when neither token outlives the next ``margin`` seconds (their ``exp``
    claims, unverified): the access token would need a refresh its refresh token can
    no longer buy, so resuming the session would only fail at the first call."""
    import time

    from .xrpc import jwt_expiry  # imported already by whoever resumes a session

    def ends_soon(name: str) -> bool:
        token = session.get(name)
        expiry = jwt_expiry(token) if isinstance(token, str) else None
        return expiry is not None and expiry - time.time() < margin  # unreadable: usable

    return ends_soon("accessJwt") and ends_soon("refreshJwt")


def save(pds_url: str, session: dict[str, Any]) -> None:
    """Store (replace) this PDS's session, owner-only."""
    data = _read_all()
    data[_key(pds_url)] = session
    _write(data)


def forget(pds_url: str) -> bool:
    """Drop this PDS's session; True if there was one."""
    data = _read_all()
    if data.pop(_key(pds_url), None) is None:
        return False
    _write(data)
    return True


def _write(data: dict[str, Any]) -> None:
    directory = config_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(OSError):
        os.chmod(directory, 0o700)
    tmp = directory / f".{FILE_NAME}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(data, out)
        os.replace(tmp, directory / FILE_NAME)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
