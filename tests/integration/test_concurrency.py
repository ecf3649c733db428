"""apply racing another iptables writer: nothing the other writer did is lost."""

from __future__ import annotations

import os
import shlex
import signal
import sys
import time

import pytest

from tests.lab.host import IMDS_V4, PROJECT, EcsHost

CHURN = """
iptables -w -N LAB-CHURN
i=0
while [ $i -lt 500 ]; do
  iptables -w -A LAB-CHURN -s 10.77.$((i / 250)).$((i % 250))/32 -j RETURN
  if [ $((i % 2)) -eq 1 ]; then
    j=$((i - 1))
    iptables -w -D LAB-CHURN -s 10.77.$((j / 250)).$((j % 250))/32 -j RETURN
  fi
  i=$((i + 1))
  sleep 0.01
done
echo done > {marker}
"""


def test_apply_50_times_while_another_process_writes_500_rules(clean: EcsHost) -> None:
    marker = clean.dir / "churn.done"
    marker.unlink(missing_ok=True)
    clean.report("apply")
    churn = clean.sandbox.spawn(["sh", "-ec", CHURN.format(marker=marker)], clean.dir / "churn.log")
    applies = 0
    try:
        while applies < 50:
            # Give every apply something to commit.
            ours = [r for r in clean.sandbox.rules("DOCKER-USER") if IMDS_V4 in r]
            for rule in ours:
                clean.sandbox.iptables("-D", *shlex.split(rule)[1:], check=False)
            cp = clean.harden("apply")
            assert cp.returncode == 0, cp.stderr
            applies += 1
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert churn.poll() is None or marker.exists(), (clean.dir / "churn.log").read_text()
            assert time.monotonic() < deadline, "the churn did not finish"
            time.sleep(0.2)
        expected = [
            f"-A LAB-CHURN -s 10.77.{i // 250}.{i % 250}/32 -j RETURN" for i in range(500) if i % 2 == 1
        ]
        assert clean.sandbox.rules("LAB-CHURN") == expected
        for chain in ("DOCKER-USER", "FORWARD"):
            copies = [r for r in clean.sandbox.rules(chain) if IMDS_V4 in r and "-j DROP" in r]
            assert len(copies) == 1, (chain, copies)
        assert clean.report("check")[0] == 0
    finally:
        if churn.poll() is None:
            churn.kill()
        clean.sandbox.sh("iptables -w -F LAB-CHURN 2>/dev/null; iptables -w -X LAB-CHURN 2>/dev/null || true")


CONFIG = (
    b"ECS_CLUSTER=prod\n# managed by CM\nECS_ENGINE_AUTH_DATA={\"r\":{\"auth\":\"c2VjcmV0\"}}\n"
    b'ECS_AWSVPC_BLOCK_IMDS="true"\n'
)
CONVERGED = (
    b"ECS_CLUSTER=prod\n# managed by CM\nECS_ENGINE_AUTH_DATA={\"r\":{\"auth\":\"c2VjcmV0\"}}\n"
    b"ECS_AWSVPC_BLOCK_IMDS=true\nECS_ENABLE_TASK_IAM_ROLE_NETWORK_HOST=false\n"
)
MANAGED = (("filter", "DOCKER-USER"), ("filter", "FORWARD"), ("raw", "PREROUTING"))


def _strip_block(host: EcsHost) -> None:
    """Take every copy of the block out, v4 and v6, and reset ecs.config to its drifted text."""
    for fam, binary in ((4, "iptables"), (6, "ip6tables")):
        for table, chain in MANAGED:
            rules = host.sandbox.rules_in(table, chain, fam)
            for number in reversed([i + 1 for i, r in enumerate(rules) if "ecs-harden" in r]):
                host.sandbox.run([binary, "-w", "-t", table, "-D", chain, str(number)])
    (host.sandbox.etc / "ecs" / "ecs.config").write_bytes(CONFIG)


def _copies(host: EcsHost) -> dict[str, int]:
    """Each rule of ours (by its text, in its chain) -> how many times it is there; every
    place must hold one (raw PREROUTING two: the docker+ guard and the one of every
    interface)."""
    out: dict[str, int] = {}
    for fam in (4, 6):
        for table, chain in MANAGED:
            ours = [r for r in host.sandbox.rules_in(table, chain, fam) if "ecs-harden" in r]
            out[f"v{fam} {table} {chain} rules"] = len(set(ours)) - (1 if table == "raw" else 0)
            for r in ours:
                out[f"v{fam} {r}"] = out.get(f"v{fam} {r}", 0) + 1
    return out


def _applies_at_once(host: EcsHost, n: int) -> list[str]:
    """n `ecs-harden apply` started together; their exit codes."""
    argv = " ".join(shlex.quote(a) for a in (
        sys.executable, "-m", "ecs_harden", "--log-format", "json", "--policy", str(host.dir / "policy.yaml"), "apply"))
    script = (
        f"for i in $(seq {n}); do ({argv} >/dev/null 2>>{host.dir}/applies.err; echo $? >> {host.dir}/codes) & done; wait"
    )
    (host.dir / "codes").unlink(missing_ok=True)
    host.sandbox.run(["sh", "-c", script], env={"PYTHONPATH": str(PROJECT)}, timeout=300)
    return (host.dir / "codes").read_text().split()


# One variant: applies are serialised by ecs-harden's own lock; legacy's one copy beside the daemon is test_applies_racing_the_daemon_leave_exactly_one_copy[legacy].
@pytest.mark.one_variant("nft")
def test_concurrent_applies_leave_exactly_one_copy(clean: EcsHost) -> None:
    (clean.sandbox.etc / "ecs").mkdir(exist_ok=True)
    for _ in range(10):
        _strip_block(clean)
        codes = _applies_at_once(clean, 4)
        assert codes == ["0"] * 4, (codes, (clean.dir / "applies.err").read_text()[-3000:])
        assert set(_copies(clean).values()) == {1}, _copies(clean)
        assert (clean.sandbox.etc / "ecs" / "ecs.config").read_bytes() == CONVERGED
    assert clean.report("check")[0] == 0


def test_applies_racing_the_daemon_leave_exactly_one_copy(clean: EcsHost) -> None:
    from tests.integration.test_daemon import start_daemon

    (clean.sandbox.etc / "ecs").mkdir(exist_ok=True)
    policy = clean.policy("interval: 0.2\n", name="daemon-policy.yaml")
    clean.policy()
    run = start_daemon(clean, policy)
    try:
        run.wait_for("READY=1")
        for _ in range(10):
            _strip_block(clean)  # the daemon sees this at once (events) or within 0.2 s (polls)
            codes = _applies_at_once(clean, 2)
            assert set(codes) <= {"0", "3"}, (codes, (clean.dir / "applies.err").read_text()[-3000:])
            run.collect(0.6)  # let the daemon finish whatever it started (and drain its notifications)
            assert set(_copies(clean).values()) == {1}, _copies(clean)
            assert (clean.sandbox.etc / "ecs" / "ecs.config").read_bytes() == CONVERGED
        assert run.proc.poll() is None, run.log.read_text()[-3000:]
    finally:
        if run.proc.poll() is None:
            os.kill(run.pid, signal.SIGTERM)
            try:
                run.proc.wait(timeout=30)
            except Exception:
                print(run.log.read_text()[-5000:])
                raise
        run.notify.close()
