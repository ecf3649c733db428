"""`ecs-harden check/apply` on ecs.config, end to end through the console entry point."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from tests.cli.conftest import Harden

SECRET = 'ECS_ENGINE_AUTH_DATA={"https://index.docker.io/v1/":{"auth":"c2VjcmV0LXRva2VuLTQy"}}'
BLOCK = "ecs_config.ECS_AWSVPC_BLOCK_IMDS"
HOSTNET = "ecs_config.ECS_ENABLE_TASK_IAM_ROLE_NETWORK_HOST"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_compliant_file_exits_0_and_is_not_touched(harden: Harden) -> None:
    harden.config.write_bytes(
        b"ECS_CLUSTER=prod\nECS_AWSVPC_BLOCK_IMDS=true\nECS_ENABLE_TASK_IAM_ROLE_NETWORK_HOST=false\n"
    )
    before = os.stat(harden.config)
    r = harden("check", "--format", "json")
    assert r.code in (0, 3)  # the firewall part is judged elsewhere
    f = r.findings()
    assert f[BLOCK]["status"] == "ok" and f[HOSTNET]["status"] == "ok"
    r = harden("apply", "--format", "json")
    assert r.findings()[BLOCK]["changed"] is False
    assert os.stat(harden.config).st_mtime_ns == before.st_mtime_ns
    assert not (harden.state / "changes.jsonl").exists() or "ecs.config" not in (
        harden.state / "changes.jsonl"
    ).read_text()


@pytest.mark.parametrize(
    "content,check,needle",
    [
        (b'ECS_AWSVPC_BLOCK_IMDS="true"\n', BLOCK, "quoted"),
        (b"ECS_AWSVPC_BLOCK_IMDS='true'\n", BLOCK, "quoted"),
        (b"ECS_AWSVPC_BLOCK_IMDS=true\nECS_AWSVPC_BLOCK_IMDS=false\n", BLOCK, "silently uses the last one"),
        (b"ECS_AWSVPC_BLOCK_IMDS=false\n", BLOCK, "sets ECS_AWSVPC_BLOCK_IMDS=false, want true"),
        (b"ECS_AWSVPC_BLOCK_IMDS=true\n", HOSTNET, "injects ECS_ENABLE_TASK_IAM_ROLE_NETWORK_HOST=true"),
        (b"ECS_AWSVPC_BLOCK_IMDS =true\n", BLOCK, "whitespace before '='"),
    ],
)
def test_each_drift_kind_is_named_then_repaired(
    harden: Harden, content: bytes, check: str, needle: str
) -> None:
    harden.config.write_bytes(b"# keep me\r\nECS_CLUSTER=prod\r\n" + content + b"\n\n" + SECRET.encode())
    r = harden("check", "--format", "json")
    assert r.code == 3
    finding = r.findings()[check]
    assert finding["status"] == "drift" and needle in finding["detail"]
    assert r.json()["compliant"] is False

    r = harden("apply", "--format", "json")
    assert r.findings()[check]["status"] == "ok"
    assert r.findings()[check]["changed"] is True
    data = harden.config.read_bytes()
    lines = data.split(b"\n")
    assert lines.count(b"ECS_AWSVPC_BLOCK_IMDS=true") + lines.count(b"ECS_AWSVPC_BLOCK_IMDS=true\r") == 1
    assert b"ECS_ENABLE_TASK_IAM_ROLE_NETWORK_HOST=false" in data
    assert data.startswith(b"# keep me\r\nECS_CLUSTER=prod\r\n")
    assert SECRET.encode() in data
    assert stat.S_IMODE(os.stat(harden.config).st_mode) == 0o644

    again = harden("apply", "--format", "json")
    assert not any(f["changed"] for f in again.findings().values() if f["check"].startswith("ecs_"))
    assert again.json()["changes"] == [] or all("ecs.config" not in c for c in again.json()["changes"])
    assert harden.config.read_bytes() == data


def test_apply_keeps_every_other_byte_mode_and_owner(harden: Harden) -> None:
    original = (
        b"# ECS settings\r\n\r\nECS_CLUSTER=prod\r\nECS_AWSVPC_BLOCK_IMDS=\"true\"\r\n"
        b"UNKNOWN_KEY=\xff\xfe latin\r\n" + SECRET.encode()
    )
    harden.config.write_bytes(original)
    os.chmod(harden.config, 0o640)
    os.chown(harden.config, 0, 4)
    r = harden("apply", "--format", "json")
    assert r.findings()[BLOCK]["status"] == "ok"
    data = harden.config.read_bytes()
    assert data == (
        b"# ECS settings\r\n\r\nECS_CLUSTER=prod\r\nECS_AWSVPC_BLOCK_IMDS=true\r\n"
        b"UNKNOWN_KEY=\xff\xfe latin\r\n" + SECRET.encode() + b"\r\n"
        b"ECS_ENABLE_TASK_IAM_ROLE_NETWORK_HOST=false\r\n"
    )
    st = os.stat(harden.config)
    assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_gid == 4
    # The old file is backed up byte for byte and the change journaled.
    journal = [json.loads(x) for x in (harden.state / "changes.jsonl").read_text().splitlines()]
    entry = next(e for e in journal if e["path"] == str(harden.config))
    assert Path(entry["backup"]).read_bytes() == original
    assert entry["sha256_after"] == sha(harden.config)


def test_missing_file_and_directory_are_created_root_only(harden: Harden) -> None:
    harden.config.parent.rmdir()
    r = harden("check", "--format", "json")
    assert r.code == 3 and "does not exist" in r.findings()[BLOCK]["detail"]
    assert not harden.config.parent.exists()
    harden("apply")
    st = os.stat(harden.config)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0
    assert harden.config.read_bytes() == (
        b"ECS_AWSVPC_BLOCK_IMDS=true\nECS_ENABLE_TASK_IAM_ROLE_NETWORK_HOST=false\n"
    )


def test_null_setting_removes_the_key(harden: Harden) -> None:
    harden.write_policy(
        "imds:\n  persist: false\n", ecs_config="  settings:\n    ECS_LOGLEVEL: null\n"
    )
    harden.config.write_bytes(b"ECS_LOGLEVEL=debug\nECS_AWSVPC_BLOCK_IMDS=true\n")
    r = harden("check", "--format", "json")
    assert r.findings()["ecs_config.ECS_LOGLEVEL"]["status"] == "drift"
    harden("apply")
    assert b"ECS_LOGLEVEL" not in harden.config.read_bytes()
    assert harden("check", "--format", "json").findings()["ecs_config.ECS_LOGLEVEL"]["status"] == "ok"


def test_dry_run_and_report_mode_change_nothing(harden: Harden) -> None:
    harden.config.write_bytes(b"ECS_AWSVPC_BLOCK_IMDS=false\n")
    before = sha(harden.config)
    r = harden("apply", "--dry-run")
    assert r.code == 3
    assert "would:" in r.stdout and "set ECS_AWSVPC_BLOCK_IMDS=true" in r.stdout
    assert sha(harden.config) == before
    harden.write_policy("mode: report\nimds:\n  persist: false\n")
    r = harden("apply", "--format", "json")
    assert r.code == 3 and r.json()["mode"] == "report"
    assert not any(f["changed"] for f in r.json()["findings"])
    assert sha(harden.config) == before
    assert not harden.state.exists()


def test_secrets_never_printed_logged_or_journaled(harden: Harden) -> None:
    secret = SECRET.encode()
    harden.config.write_bytes(secret + b"\nECS_AWSVPC_BLOCK_IMDS=\"true\"\n" + secret + b"\n")
    token = "c2VjcmV0LXRva2VuLTQy"
    outputs = [
        harden("check", "--format", "json"),
        harden("check", "--format", "text"),
        harden("apply", "--dry-run"),
        harden("apply", "--format", "json"),
        harden("--log-level", "debug", "apply", "--format", "text"),
    ]
    for r in outputs:
        assert token not in r.stdout and token not in r.stderr
    journal = (harden.state / "changes.jsonl").read_text()
    assert token not in journal
    assert all(token not in p.name for p in (harden.state / "backups").iterdir())


def test_bad_policy_exits_2_and_changes_nothing(harden: Harden) -> None:
    harden.config.write_bytes(b"ECS_AWSVPC_BLOCK_IMDS=false\n")
    before = sha(harden.config)
    cases = [
        ("mode: enforce\nbogus: 1\n", "line 2: bogus: unknown key"),
        ("ecs_config:\n  settings:\n    ECS_AWSVPC_BLOCK_IMDS: true\n", "line 3"),
        ("imds:\n  ipv4: nope\n", "line 2: imds.ipv4"),
        ("interval: 0\n", "line 1: interval"),
        ("mode: [\n", "not valid YAML"),
    ]
    for text, needle in cases:
        harden.policy.write_text(text)
        for cmd in ("check", "apply"):
            r = harden(cmd)
            assert r.code == 2, (text, r.stderr)
            assert needle in r.stderr and str(harden.policy) in r.stderr
    harden.write_policy()
    os.chmod(harden.policy, 0o666)
    r = harden("apply")
    assert r.code == 2 and "writable by group or others" in r.stderr
    os.chmod(harden.policy, 0o600)
    os.chown(harden.policy, 1000, 1000)
    r = harden("apply")
    assert r.code == 2 and "owned by uid 1000" in r.stderr
    assert sha(harden.config) == before
    assert not harden.state.exists()


def test_empty_policy_file_means_defaults(harden: Harden) -> None:
    harden.policy.write_text("")
    r = harden("check", "--format", "json")
    assert r.code in (0, 1, 3)
    assert "ecs_config.ECS_AWSVPC_BLOCK_IMDS" in r.findings()


def test_logs_are_json_lines_on_stderr_with_drift_events(harden: Harden) -> None:
    harden.config.write_bytes(b"ECS_AWSVPC_BLOCK_IMDS=false\n")
    r = harden("apply", "--format", "json")
    events = r.log_events()
    # a one-shot command reports the drift; it does not also warn about it (the daemon does)
    assert not any(e["event"] == "drift.detected" for e in events)
    repaired = [e for e in events if e["event"] == "drift.repaired" and e["check"] == BLOCK]
    assert repaired and repaired[0]["actual"] == "ECS_AWSVPC_BLOCK_IMDS=false"


def test_usage_errors_exit_2(harden: Harden) -> None:
    assert harden("frobnicate").code == 2
    assert harden("check", "--format", "yaml").code == 2


def test_an_error_is_one_line_and_a_dry_run_says_what_it_would_change(harden: Harden) -> None:
    harden.policy.write_text("mode: sometimes\n")
    r = harden("check")
    assert r.code == 2 and len([ln for ln in r.stderr.splitlines() if ln.strip()]) == 1, r.stderr
    harden.policy.write_text("")
    harden.config.write_bytes(b"ECS_AWSVPC_BLOCK_IMDS=false\n")
    dry = harden("apply", "--dry-run")
    assert "dry run: " in dry.stdout and "0 change(s)" not in dry.stdout, dry.stdout
    assert "drift.detected" not in dry.stderr
