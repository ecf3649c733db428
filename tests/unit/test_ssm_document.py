"""The SSM Command document (deploy/ssm/ecs-harden.json): its shape, its parameters'
patterns against hostile values, and its script run as aws:runShellScript runs it (root,
a working directory of its own, the parameters as SSM_* environment variables), with
stand-ins for the host's commands (aws, dnf, ecs-harden, ...) that record what they were
asked: a hostile value is refused by the document's pattern or by the script, or passes
through as data, never as code. (The script on a booted AL2023 host with the real
commands is the next part of this issue's tests.)"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.boot.image import PROJECT

DOCUMENT = json.loads((PROJECT / "deploy" / "ssm" / "ecs-harden.json").read_text())
SCRIPT = PROJECT / "deploy" / "ssm" / "command.sh"
SHA = "0" * 64
HOSTILE = ["'", "$(touch /tmp/pwned)", "`touch /tmp/pwned`", "a\nb", "ECS_HARDEN_SSM\nEOF\n", "x; rm -rf /",
           "${IFS}", "\\", '"']


def allowed(name: str, value: str) -> bool:
    return re.search(DOCUMENT["parameters"][name]["allowedPattern"], value) is not None


def test_every_parameter_is_an_environment_variable_with_a_pattern_and_the_script_is_command_sh() -> None:
    assert DOCUMENT["schemaVersion"] == "2.2"
    for name, spec in DOCUMENT["parameters"].items():
        assert spec["type"] == "String" and spec["interpolationType"] == "ENV_VAR", name
        assert allowed(name, spec["default"]), name
    (step,) = DOCUMENT["mainSteps"]
    assert step["action"] == "aws:runShellScript"
    assert step["inputs"]["runCommand"] == SCRIPT.read_text().splitlines()
    assert "{{" not in json.dumps(step)  # no parameter is ever pasted into the script's text


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_are_refused_by_the_patterns_where_a_value_has_no_need_of_them(value: str) -> None:
    assert not allowed("Action", value) and not allowed("Action", f"check{value}")
    assert not allowed("ReleaseSha256", value) and not allowed("ReleaseSha256", SHA + value.strip("\n") + "0")
    assert not allowed("ReleaseUri", f"s3://bucket/ecs-harden-1.rpm{value}".rstrip("\n") + "x")
    assert not allowed("ReleaseUri", f"https://host/{value}/ecs-harden-1.rpm".replace("\n", "\n/"))


def test_a_uri_that_is_neither_s3_nor_https_and_a_sum_that_is_not_64_hex_are_refused() -> None:
    for uri in ("http://host/ecs-harden-1.rpm", "file:///etc/ecs-harden-1.rpm", "/tmp/ecs-harden-1.rpm",
                "s3://bucket/other-1.rpm", "s3://bucket/ecs-harden-1.sh"):
        assert not allowed("ReleaseUri", uri), uri
    assert allowed("ReleaseUri", "s3://fleet-artifacts/ecs-harden/ecs-harden-0.3.0-1.amzn2023.aarch64.rpm")
    for sha in ("0" * 63, "0" * 65, "G" * 64, ("A" * 64)):
        assert not allowed("ReleaseSha256", sha), sha


STUB = """#!/bin/bash
# TEST FIXTURE: records its name, arguments and stdin, then does what the test needs
{ printf '%s' "${0##*/}"; printf ' %q' "$@"; echo; } >> "$STUBS/calls"
case "${0##*/} $*" in
  "aws s3 cp"*) cp "$STUBS/release" "${@: -1}" ;;
  "aws ssm put-compliance-items"*) f=${*: -1}; cp "${f#file://}" "$STUBS/put.json" ;;
  "ecs-harden --log-level error setup --policy-from -") cat > "$STUBS/policy" ;;
  "ecs-harden --log-level error check --format ssm-compliance") cat "$STUBS/items.json" ;;
  "rpm -q"*) exit 1 ;;
esac
exit 0
"""


def run(tmp_path: Path, env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], str]:
    """The script as aws:runShellScript runs it: bash, root, its own working directory;
    /run/lock, /var/tmp and /etc/systemd/system private (a mount namespace of the test's
    own: remove writes the gate's mask there)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare (a private /run/lock and /var/tmp)")
    stubs = tmp_path / "stubs"
    (stubs / "bin").mkdir(parents=True, exist_ok=True)
    for name in ("aws", "dnf", "curl", "ecs-harden", "rpm", "systemctl", "cloud-init"):
        (stubs / "bin" / name).write_text(STUB)
        (stubs / "bin" / name).chmod(0o755)
    (stubs / "release").write_bytes(b"the release's bytes\n")
    (stubs / "items.json").write_text(json.dumps({"Items": [{"Id": "imds.ipv4.live", "Status": "COMPLIANT"}]}))
    cwd = tmp_path / "orchestration"
    cwd.mkdir(exist_ok=True)
    inner = ("mount -t tmpfs t /run/lock && mount -t tmpfs t /var/tmp && mount -t tmpfs t /etc/systemd/system"
             f" && exec bash {SCRIPT}")
    cp = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", inner], cwd=cwd,
                        capture_output=True, text=True, timeout=60,
                        env={"PATH": f"{stubs / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin", "STUBS": str(stubs),
                             "AWS_SSM_INSTANCE_ID": "i-0123456789abcdef0", "AWS_SSM_REGION_NAME": "eu-west-1",
                             **env})
    calls = (stubs / "calls").read_text() if (stubs / "calls").exists() else ""
    return cp, calls


def test_install_fetches_verifies_and_hands_the_policy_as_data(tmp_path: Path) -> None:
    policy = "mode: enforce\n# " + " ".join(HOSTILE).replace("\n", " ") + "\nPOLICY\n'$(touch /tmp/pwned)'"
    sha = hashlib.sha256(b"the release's bytes\n").hexdigest()
    cp, calls = run(tmp_path, {"SSM_Action": "install", "SSM_ReleaseSha256": sha, "SSM_Policy": policy,
                               "SSM_ReleaseUri": "s3://fleet/ecs-harden/ecs-harden-0.3.0-1.amzn2023.x86_64.rpm"})
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "aws s3 cp --only-show-errors s3://fleet/ecs-harden/ecs-harden-0.3.0-1.amzn2023.x86_64.rpm" in calls
    assert re.search(r"^dnf install -y -q /var/tmp/ecs-harden-ssm\.\w+/ecs-harden-0\.3\.0-1\.amzn2023\.x86_64\.rpm$",
                     calls, re.M), calls
    assert (tmp_path / "stubs" / "policy").read_text() == policy + "\n"  # the bytes, as data
    assert not Path("/tmp/pwned").exists()
    assert "--region eu-west-1 --resource-id i-0123456789abcdef0 --cli-input-json file://" in calls
    assert json.loads((tmp_path / "stubs" / "put.json").read_text())["Items"][0]["Id"] == "imds.ipv4.live"
    assert cp.stdout.splitlines()[-1] == "ecs-harden: done: install"


@pytest.mark.parametrize("env, says", [
    ({"SSM_Action": "install", "SSM_ReleaseUri": "s3://b/ecs-harden-1.rpm", "SSM_ReleaseSha256": "f" * 64},
     "sha256 is"),
    ({"SSM_Action": "install", "SSM_ReleaseUri": "s3://b/ecs-harden-1.rpm$(touch /tmp/pwned)",
      "SSM_ReleaseSha256": SHA}, "ReleaseUri: s3:// or https://"),
    ({"SSM_Action": "install", "SSM_ReleaseUri": "http://b/ecs-harden-1.rpm", "SSM_ReleaseSha256": SHA},
     "ReleaseUri: s3:// or https://"),
    ({"SSM_Action": "upgrade", "SSM_ReleaseUri": "s3://b/ecs-harden-1.rpm", "SSM_ReleaseSha256": SHA + "\n"},
     "ReleaseSha256: 64 lowercase hex digits"),
    ({"SSM_Action": "check; touch /tmp/pwned"}, "Action: install, upgrade, check or remove"),
    ({"SSM_Action": "check\n"}, "Action: install, upgrade, check or remove"),
    ({}, "this SSM agent predates environment variable interpolation"),
])
def test_a_refused_value_fails_naming_it_and_installs_nothing(tmp_path: Path, env: dict[str, str], says: str) -> None:
    cp, calls = run(tmp_path, env)
    assert cp.returncode == 1
    (last,) = [line for line in cp.stdout.splitlines() if "FAILED" in line]
    assert last.startswith("ecs-harden: FAILED: ") and says in last, cp.stdout
    assert "dnf" not in calls and "setup" not in calls and "put-compliance-items" not in calls
    assert not Path("/tmp/pwned").exists()


def test_check_reports_the_items_even_when_not_compliant(tmp_path: Path) -> None:
    stubs = tmp_path / "stubs"
    cp, calls = run(tmp_path, {"SSM_Action": "check"})
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "ecs-harden --log-level error check --format ssm-compliance" in calls
    assert json.loads((stubs / "put.json").read_text())["Items"]


def test_remove_masks_the_gate_first_and_reports_no_items(tmp_path: Path) -> None:
    cp, calls = run(tmp_path, {"SSM_Action": "remove"})
    assert cp.returncode == 0, cp.stdout + cp.stderr
    lines = calls.splitlines()
    assert lines.index("systemctl daemon-reload") < lines.index("ecs-harden remove --yes")
    put = json.loads((tmp_path / "stubs" / "put.json").read_text())
    assert put["Items"] == [] and put["UploadType"] == "COMPLETE"


def test_the_document_validates_against_the_ssm_document_schema_cfn_lint_carries() -> None:
    """cfn-lint's schema of SSM documents (it also checks the copy in the CloudFormation
    template, tests/unit/test_fleet_template.py)."""
    jsonschema = pytest.importorskip("jsonschema")
    schemas = pytest.importorskip("cfnlint.data.schemas.other.ssm")
    schema = json.loads((Path(schemas.__file__).parent / "document.json").read_text())
    jsonschema.validate(DOCUMENT, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**DOCUMENT, "schemaVersion": "2.3"}, schema)
