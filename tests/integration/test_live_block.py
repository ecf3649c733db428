"""The IMDS block in the live ruleset, proven with real containers on both iptables variants."""

from __future__ import annotations

import shlex
from typing import Any

from tests.lab.host import CREDS, IMDS_V4, IMDS_V6, EcsHost

COMMENT = '"ecs-harden: block IMDS from containers"'


def findings(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["check"]: f for f in report["findings"]}


def block_rules(host: EcsHost, chain: str, family: int = 4) -> list[str]:
    addr = IMDS_V4 if family == 4 else IMDS_V6
    return [r for r in host.sandbox.rules(chain, family) if addr in r and "-j DROP" in r]


def test_before_apply_a_container_reaches_imds(clean: EcsHost) -> None:
    assert clean.reaches(IMDS_V4)
    assert clean.reaches(IMDS_V6)
    code, report = clean.report("check")
    assert code == 3
    f = findings(report)
    assert f["imds.ipv4.live"]["status"] == "drift"
    assert "accepted by `-A FORWARD -i docker0 ! -o docker0 -j ACCEPT`" in f["imds.ipv4.live"]["detail"]


def test_apply_blocks_containers_but_not_the_host_or_credentials(clean: EcsHost) -> None:
    code, report = clean.report("apply")
    assert code == 0, report
    assert findings(report)["imds.ipv4.live"]["changed"] is True
    assert not clean.reaches(IMDS_V4)
    assert not clean.reaches(IMDS_V6)
    assert clean.reaches(CREDS)
    assert clean.host_reaches_imds(IMDS_V4)
    assert clean.host_reaches_imds(IMDS_V6)
    assert clean.report("check")[0] == 0
    for chain in ("DOCKER-USER", "FORWARD"):
        assert len(block_rules(clean, chain)) == 1
        assert len(block_rules(clean, chain, 6)) == 1
    # Twice changes nothing.
    code, again = clean.report("apply")
    assert code == 0 and again["changes"] == []
    assert not any(f["changed"] for f in findings(again).values())


def test_still_blocked_after_dockerd_restarts_without_the_agent(clean: EcsHost) -> None:
    assert clean.report("apply")[0] == 0
    clean.restart_docker()
    first = clean.sandbox.rules("FORWARD")[0]
    assert first == "-A FORWARD -j DOCKER-USER"  # Docker put itself back on top
    assert not clean.reaches(IMDS_V4)
    assert not clean.reaches(IMDS_V6)
    assert clean.reaches(CREDS)
    assert clean.report("check")[0] == 0


def test_block_deleted_is_named_and_restored(clean: EcsHost) -> None:
    clean.report("apply")
    rule = block_rules(clean, "DOCKER-USER")[0]
    clean.sandbox.iptables("-D", *shlex.split(rule)[1:])
    code, report = clean.report("check")
    assert code == 3
    assert "no DROP for docker+ in DOCKER-USER" in findings(report)["imds.ipv4.live"]["detail"]
    assert clean.report("apply")[0] == 0
    assert len(block_rules(clean, "DOCKER-USER")) == 1
    code, again = clean.report("apply")
    assert code == 0 and again["changes"] == []


def test_block_moved_below_dockers_accept_is_named_and_fixed(clean: EcsHost) -> None:
    # The AWS recipe after a Docker restart: the DROP sits below Docker's ACCEPT in FORWARD.
    clean.sandbox.iptables("-A", "FORWARD", "-i", "docker+", "-d", f"{IMDS_V4}/32", "-j", "DROP")
    assert clean.reaches(IMDS_V4)
    code, report = clean.report("check")
    assert code == 3
    detail = findings(report)["imds.ipv4.live"]["detail"]
    assert "shadowed" in detail and "-i docker0 ! -o docker0 -j ACCEPT" in detail
    assert clean.report("apply")[0] == 0
    assert not clean.reaches(IMDS_V4)
    assert len(block_rules(clean, "FORWARD")) == 1
    assert clean.report("apply")[1]["changes"] == []


def test_an_accept_inserted_above_everything_is_named_and_overridden(clean: EcsHost) -> None:
    clean.report("apply")
    clean.sandbox.iptables("-I", "FORWARD", "1", "-i", "docker0", "-j", "ACCEPT")
    assert not clean.reaches(IMDS_V4)  # the raw PREROUTING guards still hold
    guard = [r for r in clean.sandbox.iptables("-t", "raw", "-S", "PREROUTING").splitlines() if IMDS_V4 in r]
    assert len(guard) == 2  # the docker+ one and the one of every interface
    for line in guard:
        clean.sandbox.iptables("-t", "raw", "-D", *shlex.split(line)[1:])
    assert clean.reaches(IMDS_V4)
    code, report = clean.report("check")
    assert code == 3
    detail = findings(report)["imds.ipv4.live"]["detail"]
    assert "`-A FORWARD -i docker0 -j ACCEPT`" in detail and "no guard for docker+ in raw PREROUTING" in detail
    assert clean.report("apply")[0] == 0
    assert not clean.reaches(IMDS_V4)
    # The operator's rule stays; ours is above it.
    rules = clean.sandbox.rules("FORWARD")
    assert "-A FORWARD -i docker0 -j ACCEPT" in rules
    assert IMDS_V4 in rules[0]
    clean.sandbox.iptables("-D", "FORWARD", "-i", "docker0", "-j", "ACCEPT")


def test_tripled_by_hand_is_deduplicated(clean: EcsHost) -> None:
    for _ in range(3):
        clean.sandbox.iptables("-I", "DOCKER-USER", "1", "-i", "docker+", "-d", f"{IMDS_V4}/32", "-j", "DROP")
        clean.sandbox.iptables("-I", "FORWARD", "1", "-i", "docker+", "-d", f"{IMDS_V4}/32", "-j", "DROP")
    code, report = clean.report("check")
    assert code == 3
    assert "3 copies of the DROP for docker+ in DOCKER-USER" in findings(report)["imds.ipv4.live"]["detail"]
    assert clean.report("apply")[0] == 0
    assert len(block_rules(clean, "DOCKER-USER")) == 1
    assert len(block_rules(clean, "FORWARD")) == 1
    assert not clean.reaches(IMDS_V4)
    assert clean.report("apply")[1]["changes"] == []


def test_user_defined_network_is_guarded_and_without_the_guard_drift_until_covered(clean: EcsHost) -> None:
    clean.docker("network", "create", "labnet")
    try:
        assert clean.report("apply")[0] == 0
        bridge = "br-" + clean.docker("network", "inspect", "-f", "{{.Id}}", "labnet").stdout.strip()[:12]
        assert not clean.reaches(IMDS_V4, network="labnet")  # the guard of every interface
        f = findings(clean.report("check")[1])["imds.paths"]
        assert f["status"] == "ok" and f"{bridge}: blocked by the guard" in f["actual"]
        unguarded = clean.policy("imds:\n  guard_all_interfaces: false\n", name="policy-ng.yaml")
        code, report = clean.report("apply", policy=unguarded)
        f = findings(report)["imds.paths"]
        assert code == 3 and f["status"] == "drift" and bridge in f["detail"]
        assert clean.reaches(IMDS_V4, network="labnet")
        policy = clean.policy('imds:\n  interfaces: ["docker+", "br-+"]\n  guard_all_interfaces: false\n',
                              name="policy-br.yaml")
        assert clean.report("apply", policy=policy)[0] == 0
        assert not clean.reaches(IMDS_V4, network="labnet")
        assert not clean.reaches(IMDS_V4)
        assert findings(clean.report("check", policy=policy)[1])["imds.paths"]["status"] == "ok"
    finally:
        clean.docker("network", "rm", "labnet", check=False)
        clean.policy()


def test_docker_network_create_after_apply_stays_blocked(clean: EcsHost) -> None:
    policy = clean.policy('imds:\n  interfaces: ["docker+", "br-+"]\n', name="policy-br.yaml")
    assert clean.report("apply", policy=policy)[0] == 0
    clean.docker("network", "create", "labnet2")
    try:
        assert not clean.reaches(IMDS_V4, network="labnet2")
        assert clean.report("check", policy=policy)[0] == 0
    finally:
        clean.docker("network", "rm", "labnet2", check=False)


def test_remove_takes_out_exactly_what_apply_added(clean: EcsHost) -> None:
    clean.sandbox.iptables("-A", "FORWARD", "-s", "192.0.2.7/32", "-j", "DROP")
    before = {fam: clean.sandbox.iptables("-S", family=fam) for fam in (4, 6)}
    clean.report("apply")
    assert clean.sandbox.iptables("-S") != before[4]
    code = clean.harden("remove", "--yes").returncode
    assert code == 0
    assert {fam: clean.sandbox.iptables("-S", family=fam) for fam in (4, 6)} == before
    assert clean.reaches(IMDS_V4)
    clean.sandbox.iptables("-D", "FORWARD", "-s", "192.0.2.7/32", "-j", "DROP")


def test_remove_requires_yes(clean: EcsHost) -> None:
    clean.report("apply")
    assert clean.harden("remove").returncode == 2
    assert len(block_rules(clean, "DOCKER-USER")) == 1


def test_each_copy_is_the_rule_the_cli_makes_of_its_listing(clean: EcsHost) -> None:
    """`iptables -D` of the line `-S` prints finds every copy apply made (the CLI compares
    the whole entry, interface masks included): on legacy IPv6, python-iptables' own
    masks (0x01 per byte: `-i docker+` matching names that are not docker-anything)
    would fail this."""
    assert clean.report("apply")[0] == 0
    for fam in (4, 6):
        for table, chain in (("filter", "DOCKER-USER"), ("filter", "FORWARD"), ("raw", "PREROUTING")):
            ours = [r for r in clean.sandbox.rules_in(table, chain, fam) if "ecs-harden" in r]
            # raw: the docker+ guard and the one of every interface (`! -i lo`)
            assert len(ours) == (2 if table == "raw" else 1), (fam, chain, ours)
            for line in ours:
                clean.sandbox.run(["sh", "-c", f"{'iptables' if fam == 4 else 'ip6tables'} -w -t {table} "
                                   f"-D {chain} " + line.split(" ", 2)[2]])
            assert not [r for r in clean.sandbox.rules_in(table, chain, fam) if "ecs-harden" in r]


def delete_every_copy(host: EcsHost) -> None:
    """Every rule of ours to IMDS (v4), in filter and raw, as another tool's flush would."""
    host.sandbox.sh(
        "for t in filter raw; do iptables-save -t $t | grep -- '^-A .*169.254.169.254.*ecs-harden' "
        "| sed 's/^-A/-D/' | while read -r l; do eval iptables -w -t $t $l; done; done")


def gate(host: EcsHost, policy: Any = None) -> tuple[int, str]:
    cp = host.harden("gate", policy=policy)
    assert cp.stderr == "", cp.stderr
    return cp.returncode, cp.stdout.strip()


def test_the_gate_holds_the_agent_only_while_the_block_is_not_in_force(clean: EcsHost) -> None:
    """`ecs-harden gate` (ecs.service's ExecStartPre): 3 only when the block is not in force
    or a flag is wrong under enforce; never for mode: report, a broken policy on a host
    whose block holds, or what a local user writes in their own namespace."""
    host = clean
    config = host.sandbox.etc / "ecs" / "ecs.config"
    assert host.report("apply")[0] == 0
    assert gate(host) == (0, "ecs-harden gate: the IMDS block is in force")
    # an unprivileged user's namespace, its loopback's alias not UTF-8 and with a control byte
    user = host.sandbox.spawn(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "unshare", "--user",
         "--map-root-user", "--net", "sh", "-c", "ip link set lo alias \"$(printf 'x\\377\\001y')\"; sleep 120"],
        host.dir / "user-ns.log")
    try:
        code, report = host.report("check")
        assert code == 0, [f for f in report["findings"] if f["status"] != "ok"]
        assert gate(host)[0] == 0
    finally:
        user.kill()
    delete_every_copy(host)
    code, line = gate(host)
    assert code == 3 and line.startswith("ecs-harden gate: holding the ECS agent: imds.ipv4.live: "
                                         "traffic from docker+ to 169.254.169.254/32 is not dropped"), line
    report_mode = host.policy("mode: report\n", name="report-policy.yaml")
    code, line = gate(host, report_mode)
    assert code == 0 and "not holding the agent (mode: report); missing: imds.ipv4.live" in line, line
    broken = host.policy("mode: sideways\n", name="broken-policy.yaml")
    code, line = gate(host, broken)
    assert code == 3 and "the policy is broken" in line and "imds.ipv4.live" in line, line
    assert host.report("apply")[0] == 0
    code, line = gate(host, broken)
    assert code == 0 and "the IMDS block is in force; the policy is broken" in line, line
    # a quoted value turns the agent's flag off: held, and named
    config.write_text(config.read_text().replace("ECS_AWSVPC_BLOCK_IMDS=true", 'ECS_AWSVPC_BLOCK_IMDS="true"'))
    code, line = gate(host)
    assert code == 3 and "ecs_config.ECS_AWSVPC_BLOCK_IMDS" in line and "imds." not in line, line
    assert host.report("apply")[0] == 0
    assert gate(host)[0] == 0
