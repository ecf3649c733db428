"""On nf_tables, a chain's listing is reused only while the chain's state, read in full
over netlink at every read, is the one it was listed at: whatever changes, the reader's
chains are what `iptables -S` prints now; unchanged chains start no process (real
netfilter, a private netns)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.integration.conftest import lab_missing
from tests.lab.host import PROJECT
from tests.require import require

SCRIPT = r"""
import json, random, socket, subprocess
from ecs_harden import proc
from ecs_harden.firewall import nftstate, xtables_cli
from ecs_harden.firewall.rule import parse_chain_listing
from ecs_harden.firewall.xtables_cli import XtablesCli

started = []
run, run_many = proc.run, proc.run_many
def counted(argv, **kw):
    started.append(argv)
    return run(argv, **kw)
def counted_many(argvs, **kw):
    started.extend(argvs)
    return run_many(argvs, **kw)
xtables_cli.proc.run, xtables_cli.proc.run_many = counted, counted_many

def ipt(*a, family=4):
    subprocess.run(["iptables-nft" if family == 4 else "ip6tables-nft", "-w", *a], check=True)

def fresh(family, table, chain):
    done = subprocess.run(["iptables-nft" if family == 4 else "ip6tables-nft", "-t", table, "-S", chain],
                          capture_output=True, text=True)
    return parse_chain_listing(chain, done.stdout) if done.returncode == 0 else None

subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
for family in (4, 6):
    ipt("-N", "DOCKER-USER", family=family)
    ipt("-A", "FORWARD", "-j", "DOCKER-USER", family=family)
    ipt("-A", "OUTPUT", "-o", "lo", "-j", "ACCEPT", family=family)
    ipt("-t", "raw", "-A", "PREROUTING", "-i", "docker+", "-j", "ACCEPT", family=family)
WHERE = [("filter", "DOCKER-USER"), ("filter", "FORWARD"), ("filter", "OUTPUT"), ("raw", "PREROUTING")]
DROP = ["-d", "169.254.169.254/32", "-i", "docker+", "-m", "comment", "--comment", "ecs-harden: x", "-j", "DROP"]

def traffic():
    for _ in range(5):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.sendto(b"x", ("127.0.0.1", 9))

def change(kind, n):
    family = random.choice((4, 6))
    if kind == "insert":
        ipt("-I", "DOCKER-USER", "1", "-s", "10.%d.0.0/16" % n if family == 4 else "fd%02x::/16" % n, "-j", "RETURN", family=family)
    elif kind == "replace":  # the same text, a new handle: still a change
        subprocess.run(["iptables-nft" if family == 4 else "ip6tables-nft", "-w", "-D", "FORWARD", "-j",
                        "DOCKER-USER"], capture_output=True)
        ipt("-A", "FORWARD", "-j", "DOCKER-USER", family=family)
    elif kind == "drop":
        ipt("-t", "raw", "-I", "PREROUTING", "1", *DROP[2:] if family == 6 else DROP, family=family)
    elif kind == "delete":
        for table, chain in WHERE:
            rules = fresh(family, table, chain).rules
            if rules:
                ipt("-t", table, "-D", chain, "1", family=family)
                return
    elif kind == "policy":
        ipt("-P", "FORWARD", random.choice(("ACCEPT", "DROP")), family=family)
    elif kind == "comment":  # only a comment differs
        if not fresh(family, "filter", "OUTPUT").rules:
            ipt("-A", "OUTPUT", "-o", "lo", "-j", "ACCEPT", family=family)
        ipt("-R", "OUTPUT", "1", "-o", "lo", "-m", "comment", "--comment", "odd \"'%d" % n, "-j", "ACCEPT", family=family)
    elif kind == "chain":  # the table's shape, not these chains
        ipt("-N", "LAB%d" % n, family=family)
    elif kind == "traffic":
        traffic()

random.seed(7)
kinds = ["insert", "replace", "drop", "delete", "policy", "comment", "chain", "traffic", "none"]
out = {"mismatch": [], "idle_started": 0, "changed_started": 0, "rounds": 0}
readers = {4: XtablesCli(4), 6: XtablesCli(6)}
for n in range(60):
    kind = kinds[n % len(kinds)] if n < len(kinds) * 2 else random.choice(kinds)
    change(kind, n)
    if n % 7 == 0:
        readers = {4: XtablesCli(4), 6: XtablesCli(6)}  # a new backend, as each reconcile makes
    before = len(started)
    for family in (4, 6):
        for table in ("filter", "raw"):
            read = readers[family].snapshot(table)
            for t, chain in WHERE:
                if t == table:
                    got, want = read(chain), fresh(family, table, chain)
                    if got != want:
                        out["mismatch"].append([n, kind, family, chain])
    key = "idle_started" if kind in ("traffic", "none") else "changed_started"
    if n >= 2:  # after the first listing of everything
        out[key] += len(started) - before
    out["rounds"] += 1

# A rule that looks something up elsewhere (a set): its chain has no state, always listed.
subprocess.run(["nft", "add set ip filter lab { type ipv4_addr; }"], check=True)
subprocess.run(["nft", "add rule ip filter DOCKER-USER ip saddr @lab drop"], check=True)
_, states = nftstate.states(4, "filter", ["DOCKER-USER", "FORWARD"])
out["with_set"] = sorted(states)
print(json.dumps(out))
"""


def test_a_reused_listing_is_always_what_iptables_prints_now() -> None:
    require(lab_missing())
    done = subprocess.run(["unshare", "--net", "--", sys.executable, "-c", SCRIPT], capture_output=True,
                          text=True, timeout=300, env={"PYTHONPATH": str(PROJECT), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["rounds"] == 60 and out["mismatch"] == [], out
    # 60 rounds: nothing changed in about a fifth, and those started no process at all
    assert out["idle_started"] == 0, out
    assert out["changed_started"] > 20, out  # a change is listed by iptables again
    assert out["with_set"] == ["FORWARD"], out
