"""Credentials out of log lines and error messages (pure).

botocore logs every request at DEBUG: its Authorization header names the access key id
(``Credential=AKIA.../...``), and an endpoint URL is logged with whatever it holds. Our
own loggers carry ``RedactingFilter`` always; for botocore's (and anything else), add it
to the handler that writes the lines::

    handler = logging.StreamHandler()
    handler.addFilter(atdata_async.RedactingFilter())
    logging.basicConfig(level=logging.DEBUG, handlers=[handler])

Secrets the library is handed (access keys, app passwords, session tokens) are also
remembered here, so they are masked wherever they appear, whatever their shape.
"""

from __future__ import annotations

import logging
import re
import threading

MASK = "***"

_known: dict[str, str] = {}  # secret -> what to show instead
_known_lock = threading.Lock()
_known_pattern: re.Pattern[str] | None = None

_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # user:password@ inside any URL (endpoint, redis, proxy)
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/@'\"<>]*@"), r"\1" + MASK + "@"),
    # SigV4: Credential=KEYID/date/region/..., and the presigned-URL form
    (re.compile(r"((?:X-Amz-)?Credential=)([^/,\s&'\"]+)"), r"\1" + MASK),
    (re.compile(r"((?:X-Amz-)?Signature=)([0-9a-fA-F]+)"), r"\1" + MASK),
    (re.compile(r"(X-Amz-Security-Token['\"]?\s*[:=]\s*['\"]?)([^'\"\s,&]+)"), r"\1" + MASK),
    # AWS access key ids by their shape, wherever they appear
    (re.compile(r"\b((?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA))[A-Z0-9]{12}([A-Z0-9]{4})\b"),
     r"\1" + "..." + r"\2"),
    # bearer tokens and JWTs (ATProto session tokens)
    (re.compile(r"(?i)(bearer\s+)[^\s'\",]+"), r"\1" + MASK),
    (re.compile(r"\beyJ[\w-]+\.[\w-]+\.[\w-]*"), MASK),
    # "password": "..." in a JSON or Python-dict body
    (re.compile(r"(?i)(['\"](?:password|app_password|secret_access_key|aws_secret_access_key|"
                r"accessJwt|refreshJwt)['\"]\s*:\s*)(['\"])(?:\\.|(?!\2).)*\2"),
     r"\1\2" + MASK + r"\2"),
]


def mask_key_id(key_id: str) -> str:
    """An access key id shown only by its kind and last characters: ``AKIA...WXYZ``."""
    if not isinstance(key_id, str) or len(key_id) < 12:
        return MASK
    return f"{key_id[:4]}...{key_id[-2:]}"


def remember_secret(secret: str | None, shown_as: str = MASK) -> None:
    """Mask ``secret`` from now on in every redacted text (short strings are ignored:
    masking "a" everywhere would only garble the log)."""
    global _known_pattern
    if not isinstance(secret, str) or len(secret) < 6:
        return
    with _known_lock:
        if secret in _known:
            return
        _known[secret] = shown_as
        for form in (secret.encode("unicode_escape").decode(), _json_escaped(secret)):
            if form != secret and len(form) >= 6:
                _known.setdefault(form, shown_as)
        _known_pattern = None  # compiled again by the next redact(): a session's tokens
        # are remembered at every start, and most runs never redact anything (#10)


def _known_secrets() -> re.Pattern[str] | None:
    """One alternation of every remembered secret, longest first (compiled on demand)."""
    global _known_pattern
    with _known_lock:
        if _known_pattern is None and _known:
            ordered = sorted(_known, key=len, reverse=True)
            _known_pattern = re.compile("|".join(re.escape(s) for s in ordered))
        return _known_pattern


def _json_escaped(text: str) -> str:
    import json

    return json.dumps(text)[1:-1]


def redact(text: str) -> str:
    """``text`` with credentials masked: remembered secrets, then known shapes."""
    if not isinstance(text, str) or not text:
        return text
    pattern = _known_secrets()
    if pattern is not None:
        text = pattern.sub(lambda m: _known.get(m.group(0), MASK), text)
    for regex, replacement in _PATTERNS:
        text = regex.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """A logging filter that masks credentials in each record's message and traceback.

    Add it to a handler (filters on a logger see only that logger's own records, not
    botocore's children): ``handler.addFilter(RedactingFilter())``. It never drops a
    record.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to the handler's own error path
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


_installed = False


def protect_library_loggers() -> None:
    """Redact every record of our own loggers (``atdata_async.*``) where it is created,
    whatever handlers the application has: a chained LogRecord factory, installed once."""
    global _installed
    if _installed:
        return
    _installed = True
    previous = logging.getLogRecordFactory()
    filt = RedactingFilter()

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = previous(*args, **kwargs)  # type: ignore[arg-type]
        if record.name.startswith("atdata_async"):
            filt.filter(record)
        return record

    logging.setLogRecordFactory(factory)
