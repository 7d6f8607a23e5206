"""Local schema records and schema refs, as atdata stores them in Redis (pure)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from .._errors import ConfigurationError

SCHEMA_REF_PREFIX = "atdata://local/schema/"
_LEGACY_PREFIXES = ("atdata://local/sampleSchema/", "local://schemas/")
SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$"
)


def check_semver(version: str) -> str:
    if not isinstance(version, str) or not SEMVER.match(version):
        raise ConfigurationError(f"version must be semver like '1.0.0', got {version!r}")
    return version


def schema_ref(name: str, version: str) -> str:
    return f"{SCHEMA_REF_PREFIX}{name}@{check_semver(version)}"


def parse_schema_ref(ref: str) -> tuple[str, str]:
    """Any of the three ref forms atdata has written -> (bare class name, version)."""
    for prefix in (SCHEMA_REF_PREFIX, *_LEGACY_PREFIXES):
        if isinstance(ref, str) and ref.startswith(prefix):
            name, sep, version = ref[len(prefix) :].rpartition("@")
            name = name.rsplit(".", 1)[-1]
            if sep and name and version:
                return name, version
    raise ConfigurationError(
        f"malformed schema ref {ref!r}; expected {SCHEMA_REF_PREFIX}ClassName@1.0.0"
    )


def schema_key(name: str, version: str) -> str:
    """The Redis key of a local schema record."""
    return f"LocalSchema:{name}@{version}"


def now_iso() -> str:
    """An RFC 3339 UTC timestamp with millisecond precision, as ATProto likes them."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def schema_record(sample_type: type, version: str, description: str | None) -> dict[str, Any]:
    """The JSON record atdata stores under ``LocalSchema:{Class}@{version}``."""
    # Here, not at the top: .sample imports numpy, which reading refs and records (the
    # promote path) must not pay for (start-up, #10).
    from .sample import _unwrap_optional, field_type_record, field_types

    fields = []
    for name, tp in field_types(sample_type).items():
        inner, optional = _unwrap_optional(tp)
        fields.append({"name": name, "fieldType": field_type_record(inner), "optional": optional})
    record: dict[str, Any] = {"name": sample_type.__name__, "version": check_semver(version)}
    if description is not None:
        record["description"] = description
    record["createdAt"] = now_iso()
    record["fields"] = fields
    return record
