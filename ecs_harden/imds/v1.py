"""imds.v1: IMDS refuses a request without a token (IMDSv2 required); and whether IMDS
holds ECS task credentials.

Once per resync the host asks IMDS, without a token, for /latest/meta-data/ (a GET of the
index). An answer means IMDSv1 is on: any process that can reach IMDS, through a forwarded
path ecs-harden does not know of or an SSRF in a workload, reads the instance role's
credentials with one plain GET. The hop limit alone does not help: it bounds IMDSv2's PUT
for the token, and IMDSv1 needs none.

The same index says whether IMDS holds task-role credentials for the ECS agent: entries
`iam-ecs-N/` (amazon-ecs-agent 1.103 on, IMDSIAMRolesEnabled, each with `info` and
`security-credentials/<task>-<role type>`). Then one reachable IMDS exposes every task's
role, not only the instance's. With IMDSv1 off the index is read with a session token
(PUT /latest/api/token, 60 s), as the agent itself reads it. Only the index is read, never
a credential; the answer is untrusted (its size bounded, names shown printable).
"""

from __future__ import annotations

import http.client
from collections.abc import Callable
from dataclasses import dataclass

from ecs_harden.component import PATHS, Base, Inspection
from ecs_harden.report import OK, WARN, Finding

CHECK = "imds.v1"
TIMEOUT = 2.0
FIX = ("aws ec2 modify-instance-metadata-options --instance-id <id> --http-tokens required "
       "(or MetadataOptions HttpTokens: required in the launch template)")
INDEX = "/latest/meta-data/"
NAMESPACE = "iam-ecs-"
MAX_INDEX = 65536  # bytes of the index read at most
SHOWN = 5  # namespaces named in a finding


@dataclass(frozen=True)
class Answer:
    status: int | None  # what a GET of the index without a token got; None: no answer
    namespaces: tuple[str, ...] | None = None  # iam-ecs-* in the index; None: not read


def _request(address: str, port: int, method: str, path: str, headers: dict[str, str],
             timeout: float) -> tuple[int, bytes] | None:
    conn = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        conn.request(method, path, headers={"User-Agent": "ecs-harden", **headers})
        response = conn.getresponse()
        return response.status, response.read(MAX_INDEX)
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def namespaces(index: bytes) -> tuple[str, ...]:
    names = (e.strip().rstrip("/") for e in index.decode("ascii", "replace").split("\n"))
    return tuple(sorted({n for n in names if n.startswith(NAMESPACE) and n.isprintable()}))


def ask(address: str, timeout: float = TIMEOUT, port: int = 80) -> Answer:
    """The status IMDS gives a GET of the index without a token, and its iam-ecs-* entries
    (read with a token when it wants one)."""
    plain = _request(address, port, "GET", INDEX, {}, timeout)
    if plain is None:
        return Answer(None)
    status, index = plain
    if status == 401:
        got = _request(address, port, "PUT", "/latest/api/token",
                       {"X-aws-ec2-metadata-token-ttl-seconds": "60"}, timeout)
        if got is None or got[0] != 200:
            return Answer(status)
        token = got[1].decode("ascii", "replace").strip()
        listed = _request(address, port, "GET", INDEX, {"X-aws-ec2-metadata-token": token}, timeout)
        if listed is None or listed[0] != 200:
            return Answer(status)
        index = listed[1]
    elif not 200 <= status < 300:
        return Answer(status)
    return Answer(status, namespaces(index))


def credentials_note(found: tuple[str, ...] | None) -> str:
    if found is None:
        return ""
    if not found:
        return "; IMDS holds no ECS task credentials (no iam-ecs-* entry)"
    names = ", ".join(found[:SHOWN]) + (f" and {len(found) - SHOWN} more" if len(found) > SHOWN else "")
    return (f"; IMDS holds ECS task credentials ({names}: the agent's task roles through IMDS): any "
            "path to IMDS now exposes every task's role, not only the instance's")


class ImdsV1Component(Base):
    wakes_on = PATHS
    slow = True
    name = CHECK

    def __init__(self, address: str, asker: Callable[[str], Answer] = ask):
        self.address = address
        self.asker = asker

    def inspect(self) -> Inspection[None]:
        expected = "IMDS refuses a request without a token (HttpTokens: required)"
        answer = self.asker(self.address)
        status, note = answer.status, credentials_note(answer.namespaces)
        held = "" if answer.namespaces is None else f"; {len(answer.namespaces)} iam-ecs namespace(s)"
        if status is None:
            return Inspection((Finding(CHECK, OK, expected, "no answer",
                                       f"IMDS ({self.address}) did not answer the host: nothing to judge"),))
        if status == 401:
            return Inspection((Finding(CHECK, OK, expected, f"401 without a token{held}",
                                       "IMDSv1 is off: a request needs a session token" + note),))
        if 200 <= status < 300:
            return Inspection((Finding(
                CHECK, WARN, expected, f"{status} without a token{held}",
                "IMDSv1 is on: a single GET without a token reads the instance role's credentials from "
                "any path to IMDS ecs-harden does not close (an SSRF in a workload included); the hop "
                f"limit does not help, it only bounds IMDSv2's token PUT. Turn it off: {FIX}" + note),))
        return Inspection((Finding(CHECK, OK, expected, f"{status} without a token",
                                   f"IMDS answered {status} to a request without a token"),))

    def execute(self, inspection: Inspection[None]) -> None:
        return None
