"""Policy loading: defaults, every error names key and line, ownership is enforced."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest

from ecs_harden import policy
from ecs_harden.errors import PolicyError


def test_empty_file_means_defaults() -> None:
    assert policy.parse(b"", "p") == policy.Policy(source="p")
    assert policy.parse(b"# only a comment\n", "p") == policy.Policy(source="p")


def test_full_policy() -> None:
    text = b"""
mode: report
interval: 2.5
resync: 30
state_dir: /srv/state
imds:
  interfaces: ["docker+", "br-+"]
  ipv4: 169.254.169.254
  ipv6: null
  persist: false
ecs_config:
  path: /etc/ecs/other.config
  settings:
    ECS_CLUSTER: "prod"
    ECS_ENABLE_TASK_IAM_ROLE_NETWORK_HOST: "true"
    ECS_LOGLEVEL: null
  restart_agent: on-change
report:
  status_file: /run/x/status.json
  textfile: /var/lib/node_exporter/textfile_collector/ecs_harden.prom
"""
    p = policy.parse(text, "p")
    assert p.mode == "report" and not p.enforce
    assert (p.interval, p.resync, p.state_dir) == (2.5, 30.0, "/srv/state")
    assert p.imds.interfaces == ("docker+", "br-+")
    assert p.imds.ipv4 == ipaddress.IPv4Network("169.254.169.254/32")
    assert p.imds.ipv6 is None and p.imds.persist is False
    assert dict(p.ecs_config.settings) == {
        "ECS_AWSVPC_BLOCK_IMDS": "true",
        "ECS_ENABLE_TASK_IAM_ROLE_NETWORK_HOST": "true",
        "ECS_CLUSTER": "prod",
        "ECS_LOGLEVEL": None,
    }
    assert p.ecs_config.restart_agent == "on-change"
    assert p.report.textfile.endswith("ecs_harden.prom")  # type: ignore[union-attr]


BAD = [
    (b"mode: enforce\nfoo: 1\n", "line 2: foo: unknown key"),
    (b"imds:\n  interface: [docker+]\n", "line 2: imds.interface: unknown key"),
    (b"mode: strict\n", "line 1: mode: must be one of enforce, report"),
    (b"interval: 0\n", "line 1: interval: must be a number of seconds > 0"),
    (b"interval: -1\n", "line 1: interval: must be a number"),
    (b"interval: true\n", "line 1: interval: must be a number"),
    (b"resync: five\n", "line 1: resync: must be a number"),
    (b"\n\nimds:\n  ipv4: 169.254.169.300/32\n", "line 4: imds.ipv4: '169.254.169.300/32' is not an address"),
    (b"imds:\n  ipv4: fd00:ec2::254/128\n", "line 2: imds.ipv4: 'fd00:ec2::254/128' is not an IPv4 address"),
    (b"imds:\n  ipv6: 169.254.169.254/32\n", "line 2: imds.ipv6: '169.254.169.254/32' is not an IPv6"),
    (b"imds:\n  ipv4: 10.0.0.1/8\n", "line 2: imds.ipv4: '10.0.0.1/8' is not an address"),
    (b"imds:\n  interfaces: docker+\n", "line 2: imds.interfaces: must be a non-empty list"),
    (b"imds:\n  interfaces: []\n", "line 2: imds.interfaces: must be a non-empty list"),
    (b"imds:\n  interfaces: ['doc ker+']\n", "line 2: imds.interfaces[0]: 'doc ker+' is not an iptables"),
    (b"imds:\n  interfaces: ['averyveryverylongname+']\n", "imds.interfaces[0]"),
    (b"imds:\n  persist: yes please\n", "line 2: imds.persist: must be true or false"),
    (b"ecs_config:\n  settings:\n    ECS_AWSVPC_BLOCK_IMDS: true\n",
     "line 3: ecs_config.settings.ECS_AWSVPC_BLOCK_IMDS: must be a quoted string or null, got bool"),
    (b"ecs_config:\n  settings:\n    ECS_RESERVED_MEMORY: 256\n",
     "line 3: ecs_config.settings.ECS_RESERVED_MEMORY: must be a quoted string or null, got int"),
    (b"ecs_config:\n  settings:\n    BAD-KEY: 'x'\n", "line 3: ecs_config.settings.BAD-KEY: is not a valid"),
    (b"ecs_config:\n  settings: [a]\n", "line 2: ecs_config.settings: must be a mapping"),
    (b"ecs_config:\n  path: relative/ecs.config\n", "line 2: ecs_config.path: must be an absolute path"),
    (b"ecs_config:\n  restart_agent: always\n",
     "line 2: ecs_config.restart_agent: must be one of never, on-change"),
    (b"state_dir: 5\n", "line 1: state_dir: must be a non-empty string"),
    (b"backups: -1\n", "line 1: backups: must be a whole number >= 0"),
    (b"backups: '3'\n", "line 1: backups: must be a whole number >= 0"),
    (b"report:\n  status_file: null\n", "line 2: report.status_file: must be a non-empty string"),
    (b"mode: enforce\nmode: report\n", "line 2: mode: duplicate key"),
    (b"- a\n- b\n", "line 1: policy: must be a mapping"),
    (b"mode: [enforce\n", "not valid YAML"),
    (b"mode: 'enforce\n", "not valid YAML"),
    (b"imds: null\n", "line 1: imds: must be a mapping"),
    (b"imds:\n  interfaces: ['br-*']\n",
     "line 2: imds.interfaces[0]: 'br-*' would match no interface: iptables' wildcard is '+' at the end, "
     "not a shell glob; write 'br-+'"),
    (b"imds:\n  interfaces:\n    - docker+\n    - br-+\n    - docker+\n",
     "line 5: imds.interfaces[2]: 'docker+' is listed twice (item 0 already)"),
    (b"report:\n  textfile: /var/lib/node_exporter/ecs_harden.txt\n",
     "line 2: report.textfile: '/var/lib/node_exporter/ecs_harden.txt' does not end in .prom"),
    (b"mode: enforce\n# caf\xe9\nresync: 1\n", "line 2: not valid YAML: byte 0xe9 is not UTF-8 text"),
    (b"mode: enforce\nresync: 1\nx: \x07\n", "line 3: not valid YAML: character #x0007 is not allowed"),
]


@pytest.mark.parametrize("text,message", BAD, ids=[m for _, m in BAD])
def test_bad_policy_names_key_and_line(text: bytes, message: str) -> None:
    with pytest.raises(PolicyError) as err:
        policy.parse(text, "/etc/ecs-harden/policy.yaml")
    assert str(err.value).startswith("/etc/ecs-harden/policy.yaml:")
    assert message in str(err.value)


def _write(path: Path, text: str, mode: int = 0o600) -> str:
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


def test_load_refuses_group_or_world_writable(tmp_path: Path) -> None:
    for mode in (0o620, 0o602, 0o666):
        path = _write(tmp_path / "p.yaml", "mode: report\n", mode)
        with pytest.raises(PolicyError, match="writable by group or others"):
            policy.load(path)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown")
def test_load_refuses_policy_not_owned_by_root(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.yaml", "mode: report\n")
    os.chown(path, 65534, 65534)
    with pytest.raises(PolicyError, match="owned by uid 65534"):
        policy.load(path)


def test_load_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="not found"):
        policy.load(str(tmp_path / "missing.yaml"))


def test_env_var_names_the_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path / "p.yaml", "mode: report\n", 0o644)
    monkeypatch.setenv(policy.ENV_VAR, path)
    assert policy.load(None).mode == "report"
    monkeypatch.setenv(policy.ENV_VAR, str(tmp_path / "gone.yaml"))
    with pytest.raises(PolicyError, match="not found"):
        policy.load(None)


def test_missing_default_file_means_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(policy.ENV_VAR, raising=False)
    monkeypatch.setattr(policy.trusted, "DEFAULT_PATH", str(tmp_path / "absent.yaml"))
    assert policy.load(None) == policy.Policy()


def test_every_error_of_a_file_is_reported_at_once() -> None:
    text = (b"mode: strict\ninterval: 0\nimds:\n  interfaces: ['br-*', 'docker+', 'docker+']\n"
            b"  ipv4: 10.0.0.1/8\nreport:\n  textfile: /x/metrics.txt\n")
    with pytest.raises(PolicyError) as err:
        policy.parse(text, "/etc/ecs-harden/policy.yaml")
    message = str(err.value)
    assert message.startswith("/etc/ecs-harden/policy.yaml: 6 errors:\n")
    for part in ("line 1: mode:", "line 2: interval:", "line 4: imds.interfaces[0]: 'br-*'",
                 "line 4: imds.interfaces[2]: 'docker+' is listed twice", "line 5: imds.ipv4:",
                 "line 7: report.textfile:"):
        assert part in message, part
