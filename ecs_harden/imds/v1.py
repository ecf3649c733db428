"""imds.v1: IMDS refuses a request without a token (IMDSv2 required).

Once per resync the host asks IMDS, without a token, for /latest/meta-data/ (a GET of the
index, nothing else). An answer means IMDSv1 is on: any process that can reach IMDS,
through a forwarded path ecs-harden does not know of or an SSRF in a workload, reads
the instance role's credentials with one plain GET. The hop limit alone does not help:
it bounds IMDSv2's PUT for the token, and IMDSv1 needs none.
"""

from __future__ import annotations

import http.client
from collections.abc import Callable

from ecs_harden.component import PATHS, Base, Inspection
from ecs_harden.report import OK, WARN, Finding

CHECK = "imds.v1"
TIMEOUT = 2.0
FIX = ("aws ec2 modify-instance-metadata-options --instance-id <id> --http-tokens required "
       "(or MetadataOptions HttpTokens: required in the launch template)")


def ask(address: str, timeout: float = TIMEOUT) -> int | None:
    """The HTTP status IMDS gives a GET without a token; None when nothing answered."""
    conn = http.client.HTTPConnection(address, 80, timeout=timeout)
    try:
        conn.request("GET", "/latest/meta-data/", headers={"User-Agent": "ecs-harden"})
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


class ImdsV1Component(Base):
    wakes_on = PATHS
    slow = True
    name = CHECK

    def __init__(self, address: str, asker: Callable[[str], int | None] = ask):
        self.address = address
        self.asker = asker

    def inspect(self) -> Inspection[None]:
        expected = "IMDS refuses a request without a token (HttpTokens: required)"
        status = self.asker(self.address)
        if status is None:
            return Inspection((Finding(CHECK, OK, expected, "no answer",
                                       f"IMDS ({self.address}) did not answer the host: nothing to judge"),))
        if status == 401:
            return Inspection((Finding(CHECK, OK, expected, "401 without a token",
                                       "IMDSv1 is off: a request needs a session token"),))
        if 200 <= status < 300:
            return Inspection((Finding(
                CHECK, WARN, expected, f"{status} without a token",
                "IMDSv1 is on: a single GET without a token reads the instance role's credentials from "
                "any path to IMDS ecs-harden does not close (an SSRF in a workload included); the hop "
                f"limit does not help, it only bounds IMDSv2's token PUT. Turn it off: {FIX}"),))
        return Inspection((Finding(CHECK, OK, expected, f"{status} without a token",
                                   f"IMDS answered {status} to a request without a token"),))

    def execute(self, inspection: Inspection[None]) -> None:
        return None
