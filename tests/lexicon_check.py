"""Judge records with the reference validator, ``@atproto/lexicon`` (installed with the PDS),
against the lexicon documents we ship (atdata 0.7.0b1's, unmodified).

``validate_records`` judges record JSON handed to it. ``LexiconAudit`` judges every
``science.alt.dataset.*`` record written to a PDS during the session, replayed from the
PDS's own event stream (so overwritten and deleted versions count too): the ``pds``
fixture runs it at session end and fails the run on any invalid record. A test that
writes invalid records on purpose says so with ``@pytest.mark.writes_invalid_records``;
records of the accounts it creates through ``pds_account`` are then reported as exempt.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tests import services

LEXICON_DIR = services.REPO / "atdata_async" / "lexicons"
SCRIPT = "validate-records.mjs"
MARKER = "dev.atdataasync.lexiconAudit"


def _node() -> tuple[str, Path]:
    home = services.install_pds()
    return (home / ".installed").read_text().strip(), home


def _run(args: list[str], stdin: str | None = None, timeout: float = 120) -> list[dict]:
    node, home = _node()
    out = subprocess.run([node, str(home / SCRIPT), str(LEXICON_DIR), *args], cwd=home,
                         input=stdin, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{SCRIPT} failed ({out.returncode}): {out.stderr.strip()}")
    return json.loads(out.stdout)


def validate_records(records: list[dict]) -> list[dict]:
    """``[{"collection", "value", "uri"?}]`` -> ``[{"uri", "collection", "valid", "error"?}]``."""
    payload = [{"uri": r.get("uri", f"#{i}"), "collection": r["collection"], "cid": None,
                "value": r["value"]} for i, r in enumerate(records)]
    return _run([], json.dumps(payload))


def assert_valid(collection: str, value: dict) -> None:
    """One record must pass @atproto/lexicon (its error message otherwise)."""
    (result,) = validate_records([{"collection": collection, "value": value}])
    assert result["valid"], result.get("error")


@dataclass
class LexiconAudit:
    """Every science.alt.dataset record a PDS received during the session, judged."""

    pds_url: str
    owners: dict[str, str] = field(default_factory=dict)  # did -> test node id
    exempt: dict[str, str] = field(default_factory=dict)  # did -> reason

    def account_created(self, did: str, nodeid: str, exempt_reason: str | None) -> None:
        self.owners[did] = nodeid
        if exempt_reason is not None:
            self.exempt[did] = exempt_reason

    def run(self) -> tuple[list[dict], list[dict], list[dict]]:
        """(valid, invalid, exempt-invalid) results, up to a marker written now."""
        account = services.create_account(self.pds_url, f"lx-{uuid.uuid4().hex[:8]}")
        request = urllib.request.Request(
            f"{self.pds_url}/xrpc/com.atproto.repo.createRecord", method="POST",
            headers={"content-type": "application/json",
                     "authorization": f"Bearer {account['accessJwt']}"},
            data=json.dumps({"repo": account["did"], "collection": MARKER, "record": {
                "$type": MARKER, "note": "end of session"}}).encode())
        with urllib.request.urlopen(request, timeout=30) as response:
            marker = json.loads(response.read())
        path = marker["uri"].removeprefix("at://")
        ws_url = "ws" + self.pds_url.removeprefix("http")
        results = _run(["--firehose", ws_url, "--until-path", path], timeout=300)
        valid = [r for r in results if r["valid"]]
        invalid, exempt = [], []
        for r in results:
            if r["valid"]:
                continue
            did = r["uri"].removeprefix("at://").split("/", 1)[0]
            r["test"] = self.owners.get(did, "(an account not made by the pds_account fixture)")
            (exempt if did in self.exempt else invalid).append(r)
        return valid, invalid, exempt

    @staticmethod
    def report(invalid: list[dict]) -> str:
        lines = [f"{len(invalid)} record(s) written to the test PDS fail @atproto/lexicon "
                 "(mark a test that writes invalid records on purpose with "
                 "@pytest.mark.writes_invalid_records(reason)):"]
        for r in invalid[:30]:
            lines.append(f"  {r['uri']} ({r['test']}): {r['error']}")
        return "\n".join(lines)
