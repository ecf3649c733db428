"""Deleting by kernel handle on nf_tables: the batch carries the generation it read, and the
kernel refuses all of it when anyone committed in between (real netfilter, a private netns)."""

from __future__ import annotations

import subprocess
import sys

from tests.integration.conftest import lab_missing
from tests.lab.host import PROJECT
from tests.require import require

SCRIPT = r"""
import subprocess
from ecs_harden.firewall import nfthandles
from ecs_harden.firewall.netlink import generation

def ipt(*a):
    subprocess.run(["iptables-nft", "-w", *a], check=True)

def listing():
    return [l for l in subprocess.run(["iptables-nft", "-S", "FORWARD"], capture_output=True,
            text=True, check=True).stdout.splitlines() if l.startswith("-A")]

ipt("-A", "FORWARD", "-s", "10.0.0.1/32", "-j", "ACCEPT")
ipt("-A", "FORWARD", "-s", "10.0.0.2/32", "-j", "ACCEPT")
before = generation()
handles = nfthandles.handles(4, "filter", "FORWARD")
assert len(handles) == 2, handles
ipt("-I", "FORWARD", "1", "-s", "10.0.0.9/32", "-j", "DROP")  # somebody else commits
try:
    nfthandles.delete(4, "filter", "FORWARD", [handles[0]], before)
except nfthandles.Changed:
    print("refused")
assert len(listing()) == 3, listing()  # nothing deleted
now = generation()
nfthandles.delete(4, "filter", "FORWARD", [handles[0]], now)  # the same handle, the current generation
print(listing())
"""


def test_a_stale_generation_deletes_nothing_a_current_one_deletes_by_handle() -> None:
    require(lab_missing())
    done = subprocess.run(["unshare", "--net", "--", sys.executable, "-c", SCRIPT], capture_output=True,
                          text=True, timeout=60, env={"PYTHONPATH": str(PROJECT), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "refused"
    # the handle still names 10.0.0.1's rule, though an insert moved it to position 2
    assert lines[1] == str(["-A FORWARD -s 10.0.0.9/32 -j DROP", "-A FORWARD -s 10.0.0.2/32 -j ACCEPT"])
