"""tests/infra: a testinfra suite for a hardened host, unchanged against the test VM
(tests/vm), a Vagrant VM of yours, or a real EC2 host:

    pytest tests/infra --hosts=ssh://ec2-user@HOST --sudo
    vagrant ssh-config > ssh.cfg; pytest tests/infra --hosts=ssh://default --ssh-config=ssh.cfg --sudo

Without --hosts (or molecule's --ansible-inventory) it is skipped: it would otherwise
test this machine. --disruptive
adds the unit's life-cycle tests (stop, kill -9, reload: for test hosts only).
--no-daemon is for a host where ecs-harden.service is disabled on purpose: only what
the boot restore must hold is checked.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

IMAGE = "lab/busybox"
PUBLIC_IMAGE = "public.ecr.aws/docker/library/busybox:stable"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ecs-harden host")
    group.addoption("--disruptive", action="store_true", help="also stop, kill and reload the unit")
    group.addoption("--no-daemon", action="store_true", help="the unit is disabled on purpose")
    group.addoption("--ecs-harden", default="/usr/local/bin/ecs-harden", help="the CLI on the host")
    group.addoption("--policy-file", default="/etc/ecs-harden/policy.yaml", help="the policy on the host")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = str(config.rootpath / "tests" / "infra")
    mine = [i for i in items if str(i.path).startswith(here)]
    targeted = config.getoption("hosts", None) or config.getoption("ansible_inventory", None)
    if not targeted:  # molecule's verifier gives --ansible-inventory (and --connection=ansible)
        skip = pytest.mark.skip(reason="tests/infra runs against a host: give --hosts (see its conftest)")
        for item in mine:
            item.add_marker(skip)
        return
    for item in mine:
        if "disruptive" in item.keywords and not config.getoption("disruptive"):
            item.add_marker(pytest.mark.skip(reason="needs --disruptive"))
        if "daemon" in item.keywords and config.getoption("no_daemon"):
            item.add_marker(pytest.mark.skip(reason="--no-daemon: the unit is disabled on purpose"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "daemon: needs ecs-harden.service running")
    config.addinivalue_line("markers", "disruptive: stops, kills or reloads the unit")


@dataclass
class Harden:
    host: Any
    cli: str
    policy_file: str

    def run(self, *args: str) -> Any:
        return self.host.run(" ".join(shlex.quote(a) for a in (self.cli, *args)))

    def json(self, *args: str) -> tuple[int, dict[str, Any]]:
        cmd = self.run(*args, "--format", "json")
        return cmd.rc, json.loads(cmd.stdout)


@pytest.fixture
def harden(host: Any, request: pytest.FixtureRequest) -> Harden:
    return Harden(host, request.config.getoption("ecs_harden"), request.config.getoption("policy_file"))


@pytest.fixture
def policy(host: Any, harden: Harden) -> dict[str, Any]:
    """The host's policy with the SPEC's defaults filled in where it is silent."""
    f = host.file(harden.policy_file)
    data: dict[str, Any] = yaml.safe_load(f.content_string) if f.exists else {}
    data = data or {}
    imds = {"interfaces": ["docker+"], "ipv4": "169.254.169.254/32", "ipv6": "fd00:ec2::254/128",
            "persist": True, **(data.get("imds") or {})}
    ecs = {"path": "/etc/ecs/ecs.config", **(data.get("ecs_config") or {})}
    ecs["settings"] = {"ECS_AWSVPC_BLOCK_IMDS": "true", "ECS_ENABLE_TASK_IAM_ROLE_NETWORK_HOST": "false",
                       **((data.get("ecs_config") or {}).get("settings") or {})}
    report = {"status_file": "/run/ecs-harden/status.json", "textfile": None, **(data.get("report") or {})}
    return {**data, "imds": imds, "ecs_config": ecs, "report": report,
            "interval": data.get("interval", 5), "resync": data.get("resync", 60)}


@pytest.fixture
def facts(harden: Harden) -> dict[str, Any]:
    rc, data = harden.json("facts")
    assert rc == 0
    return data


@pytest.fixture
def image(host: Any) -> str:
    """An image for the probing containers: the test box's, else busybox from ECR Public."""
    if host.run(f"docker image inspect {IMAGE}").rc == 0:
        return IMAGE
    if host.file("/usr/local/lib/ecs-test/ecs-test-image").exists:
        host.check_output("/usr/local/lib/ecs-test/ecs-test-image")
        return IMAGE
    host.check_output(f"docker pull -q {PUBLIC_IMAGE}")
    return PUBLIC_IMAGE


def probe(host: Any, image: str, address: str, port: int = 80) -> str:
    """What a container on the default bridge reads from http://address:port/."""
    target = f"[{address}]" if ":" in address else address
    script = (
        # a container's IPv6 address is unusable until duplicate address detection ends
        "i=0; while ip -6 addr show dev eth0 2>/dev/null | grep -q tentative && [ $i -lt 50 ]; "
        "do sleep 0.1; i=$((i+1)); done; "
        f"printf 'GET /latest/meta-data/ HTTP/1.0\\r\\nHost: {target}\\r\\n\\r\\n' | nc -w 3 {address} {port}"
    )
    cmd = host.run(f"timeout 60 docker run --rm {image} sh -c {shlex.quote(script)}")
    return str(cmd.stdout)
