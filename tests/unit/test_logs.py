"""Log lines carry journald's `<N>` priority prefix only when stderr is the journal's stream."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
from ecs_harden import logs
logs.configure("json", "debug")
log = logs.get("t")
log.debug("a.debug"); log.info("an.info"); log.warning("a.warning"); log.error("an.error")
log.critical("a.critical")
"""


def run(tmp_path: Path, journal: str | None) -> list[str]:
    out = tmp_path / "stderr"
    with open(out, "wb") as f:
        st = os.fstat(f.fileno())
        env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
        if journal == "this":
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        elif journal is not None:
            env["JOURNAL_STREAM"] = journal
        env["PYTHONPATH"] = str(Path(__file__).parents[2])
        subprocess.run([sys.executable, "-c", SCRIPT], stderr=f, env=env, check=True, timeout=60)
    return out.read_text().splitlines()


def test_the_journals_stream_gets_syslog_priorities(tmp_path: Path) -> None:
    lines = run(tmp_path, "this")
    prefixes = [line[:3] for line in lines]
    assert prefixes == ["<7>", "<6>", "<4>", "<3>", "<2>"]
    assert [json.loads(line[3:])["event"] for line in lines] == [
        "a.debug", "an.info", "a.warning", "an.error", "a.critical"]


@pytest.mark.parametrize("journal", [None, "1:2", "garbage", ""])
def test_anything_else_gets_the_plain_lines(tmp_path: Path, journal: str | None) -> None:
    """No variable, or one inherited from a parent whose stream this is not."""
    lines = run(tmp_path, journal)
    assert len(lines) == 5 and all(line.startswith("{") for line in lines), lines
