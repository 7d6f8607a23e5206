"""AWS credentials from the standard sources, for reading shards whose store the caller
did not hand us: the environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN``) and the shared profile files (``AWS_PROFILE``, ``~/.aws/credentials``,
``~/.aws/config``: keys, SSO, assume-role, credential_process). Never the instance or
container metadata services: nothing is sent to guess whether they exist.

This is the one place botocore's credential chain is consulted; its errors become ours.
"""

from __future__ import annotations

import os

from botocore.exceptions import BotoCoreError

from .._errors import ConfigurationError

_NO_GUESSING = ("container-role", "iam-role")  # metadata services: network probes


def ambient_credentials(endpoint: str | None, region: str | None) -> dict[str, str] | None:
    """A credentials mapping for ``S3DataStore`` (the endpoint and region given, else those
    of the environment or profile), or None when no standard source has keys. Blocking
    (profile sources may call STS or SSO): run it in a worker thread."""
    import botocore.session

    try:
        session = botocore.session.Session()
        resolver = session.get_component("credential_provider")
        for name in _NO_GUESSING:
            resolver.remove(name)
        found = resolver.load_credentials()
        if found is None:
            return None
        creds = found.get_frozen_credentials()
        profile_region = session.get_config_variable("region")
    except BotoCoreError as exc:
        raise ConfigurationError(f"the AWS credentials of the environment or profile cannot "
                                 f"be loaded: {exc}") from None
    if not creds.access_key or not creds.secret_key:
        return None
    out = {"AWS_ACCESS_KEY_ID": creds.access_key, "AWS_SECRET_ACCESS_KEY": creds.secret_key}
    if creds.token:
        out["AWS_SESSION_TOKEN"] = creds.token
    endpoint = endpoint or next((os.environ[k] for k in (
        "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT") if os.environ.get(k)), None)
    if endpoint:
        out["AWS_ENDPOINT"] = endpoint
    if region or profile_region:
        out["AWS_REGION"] = region or profile_region
    return out
