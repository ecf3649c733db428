"""The launch template as code (deploy/cloudformation/ecs-harden-fleet.yaml): cfn-lint
clean; its UserData, resolved with test values, is deploy/user-data.sh with the operator's
two lines and the cluster's line; its document is deploy/ssm/ecs-harden.json; IMDSv2
required; the association's targets and rate control; the role's permissions."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.boot.image import PROJECT
from tests.fleettemplate import TEMPLATE, stack_values, template, user_data

# the project's .venv has cfn-lint (the test extras); the hosts' older Pythons' runs do not
pytest.importorskip("cfnlint")

VALUES = {"ClusterName": "prod", "ReleaseBucket": "fleet-artifacts", "ReleasePrefix": "ecs-harden/",
          "ReleaseFile": "ecs-harden-0.3.0-1.amzn2023.aarch64.rpm", "ReleaseSha256": "ab" * 32}


def test_cfn_lint_finds_nothing() -> None:
    cfn_lint = Path(sys.executable).parent / "cfn-lint"
    cp = subprocess.run([str(cfn_lint), str(TEMPLATE)], capture_output=True, text=True)
    assert cp.returncode == 0, cp.stdout + cp.stderr


def test_the_user_data_is_deploy_user_data_sh_with_the_stacks_values() -> None:
    data = template()["Resources"]["LaunchTemplate"]["Properties"]["LaunchTemplateData"]
    got = user_data(VALUES)
    shebang, rest = (PROJECT / "deploy" / "user-data.sh").read_text().split("\n", 1)
    uri = "s3://fleet-artifacts/ecs-harden/ecs-harden-0.3.0-1.amzn2023.aarch64.rpm"
    want = (f"{shebang}\necho ECS_CLUSTER=prod >> /etc/ecs/ecs.config\n"
            + rest.replace('ECS_HARDEN_FROM="${ECS_HARDEN_FROM:-}"', f'ECS_HARDEN_FROM="${{ECS_HARDEN_FROM:-{uri}}}"')
            .replace('ECS_HARDEN_SHA256="${ECS_HARDEN_SHA256:-}"', f'ECS_HARDEN_SHA256="${{ECS_HARDEN_SHA256:-{"ab" * 32}}}"'))
    assert got == want
    assert len(got.encode()) < 16384  # EC2's user-data limit, before base64
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert data["MetadataOptions"]["HttpPutResponseHopLimit"] == 1
    assert data["ImageId"] == {"Fn::If": ["IsArm64", {"Ref": "AmiArm64"}, {"Ref": "AmiX86"}]}
    params = template()["Parameters"]
    assert params["AmiArm64"]["Default"] == "/aws/service/ecs/optimized-ami/amazon-linux-2023/arm64/recommended/image_id"
    assert params["AmiX86"]["Default"] == "/aws/service/ecs/optimized-ami/amazon-linux-2023/recommended/image_id"


def policy_of(text: str) -> str:
    """What the user-data's shell holds as the policy: the script run by bash up to its
    function (nothing of it installs), the variable printed."""
    head = text[:text.index("ecs_harden_user_data() (")]
    cp = subprocess.run(["bash", "-c", head + 'printf %s "$ECS_HARDEN_POLICY_YAML"'],
                        capture_output=True, text=True, check=True)
    return cp.stdout


@pytest.mark.parametrize("policy", [
    "mode: enforce\nimds:\n  host_network: block\n",  # a trailing newline
    "{mode: report, report: {status_file: /run/ecs-harden/status.json}}",  # one line, as a console gives
    "mode: enforce\n# a comment: POLICY is only a word here\n",
])
def test_the_stacks_policy_is_the_policy_the_user_data_writes(policy: str) -> None:
    assert policy_of(user_data({**VALUES, "Policy": policy})) == policy.rstrip("\n")
    default = stack_values(VALUES)["Policy"]
    assert policy_of(user_data(VALUES)) == default


@pytest.mark.parametrize("policy", ["mode: enforce\nPOLICY\ntouch /tmp/pwned\n", "POLICY", "mode: enforce\n\x07\n", ""])
def test_a_policy_that_would_end_the_here_document_is_refused_by_its_pattern(policy: str) -> None:
    pattern = template()["Parameters"]["Policy"]["AllowedPattern"]
    assert re.fullmatch(pattern, policy) is None


def test_the_document_and_the_association() -> None:
    resources = template()["Resources"]
    content = json.loads(json.dumps(resources["Document"]["Properties"]["Content"]))
    assert content == json.loads((PROJECT / "deploy" / "ssm" / "ecs-harden.json").read_text())
    assoc = resources["Association"]["Properties"]
    assert assoc["Name"] == {"Ref": "Document"}
    assert assoc["Targets"] == [{"Key": "tag:aws:autoscaling:groupName", "Values": [{"Ref": "Group"}]}]
    assert assoc["MaxConcurrency"] == {"Ref": "MaxConcurrency"} and assoc["MaxErrors"] == {"Ref": "MaxErrors"}
    assert assoc["ScheduleExpression"] == {"Ref": "AssociationSchedule"} and assoc["ApplyOnlyAtCronInterval"] is False
    assert assoc["Parameters"]["Action"] == ["install"]
    assert assoc["Parameters"]["Policy"] == [{"Ref": "Policy"}]  # the user-data's, kept
    assert "S3Location" in assoc["OutputLocation"]


def test_the_role_has_the_container_instance_permissions_and_ours() -> None:
    role = template()["Resources"]["InstanceRole"]["Properties"]
    actions: dict[str, Any] = {}
    for policy in role["Policies"]:
        for statement in policy["PolicyDocument"]["Statement"]:
            for action in [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]:
                actions[action] = statement["Resource"]
    for action in ("ec2:DescribeTags", "ecs:CreateCluster", "ecs:RegisterContainerInstance", "ecs:Poll",
                   "ecs:Submit*", "ecr:GetAuthorizationToken", "ecr:BatchGetImage", "logs:PutLogEvents"):
        assert actions[action] == "*", action
    assert actions["s3:GetObject"] == {"Fn::Sub": "arn:${AWS::Partition}:s3:::${ReleaseBucket}/${ReleasePrefix}*"}
    assert actions["ssm:PutComplianceItems"] == "*"
    assert [m["Fn::Sub"] for m in role["ManagedPolicyArns"]] == [
        "arn:${AWS::Partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"]
