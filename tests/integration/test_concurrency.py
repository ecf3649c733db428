"""apply racing another iptables writer: nothing the other writer did is lost."""

from __future__ import annotations

import shlex
import time

from tests.lab.host import IMDS_V4, EcsHost

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
