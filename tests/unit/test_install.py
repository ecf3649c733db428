"""`ecs-harden install` with its side effects recorded: what it writes where per flavor,
what it runs, that a second run changes nothing, and how it picks the package manager."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ecs_harden import flavors, install, proc, unitpaths
from ecs_harden.errors import RuntimeFailure
from ecs_harden.policy import Policy, ReportPolicy


class Host:
    """systemctl and the package manager as seen by install: their answers, and what was run."""

    def __init__(self) -> None:
        self.enabled = False
        self.active = False
        self.restore = True
        self.runs: list[list[str]] = []
        self.prepared: list[str] = []

    def run(self, argv: list[str], **kw: object) -> proc.Completed:
        self.runs.append(list(argv))
        out, rc = "", 0
        if argv[:2] == ["systemctl", "is-enabled"]:
            out, rc = ("enabled\n", 0) if self.enabled else ("disabled\n", 1)
        elif argv[:2] == ["systemctl", "is-active"]:
            out, rc = ("active\n", 0) if self.active else ("inactive\n", 3)
        elif argv[:2] == ["systemctl", "enable"]:
            self.enabled = True
        elif argv[:2] in (["systemctl", "start"], ["systemctl", "restart"]):
            self.active = True
        elif argv[0] in ("dnf", "yum", "apt-get") and "install" in argv:
            self.restore = True
        return proc.Completed(tuple(argv), rc, out, "")


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Host:
    h = Host()
    monkeypatch.setattr(install, "UNIT_DIR", str(tmp_path / "systemd"))
    monkeypatch.setattr(install, "VENDOR_UNIT_DIR", str(tmp_path / "vendor"))
    monkeypatch.setattr(install, "ECS_DROP_INS", str(tmp_path / "systemd" / "ecs.service.d"))
    monkeypatch.setattr(install, "DOC_DIR", str(tmp_path / "doc"))
    monkeypatch.setattr(install, "MAN_DIR", str(tmp_path / "man8"))
    monkeypatch.setattr(install, "SHARE", str(tmp_path / "no-share"))
    monkeypatch.setattr(install, "systemd_running", lambda: True)
    monkeypatch.setattr(install, "restore_installed", lambda flavor: h.restore)
    monkeypatch.setattr(proc, "run", h.run)
    # what prepare would create on this machine (/etc/ecs, /run/ecs-harden): recorded only
    def prepare(pol: Policy, flavor: str) -> list[str]:
        h.prepared.append(flavor)
        return []

    monkeypatch.setattr(unitpaths, "prepare", prepare)
    return h


def policy(tmp_path: Path) -> Policy:
    return Policy(state_dir=str(tmp_path / "state"), source=str(tmp_path / "policy.yaml"))


def systemctl(h: Host) -> list[str]:
    return [" ".join(r[1:]) for r in h.runs if r[0] == "systemctl" and r[1] not in ("is-enabled", "is-active")]


@pytest.mark.parametrize("flavor", ["amzn2023", "amzn2", "debian", "rhel"])
def test_the_unit_and_its_drop_ins_per_flavor_then_nothing_to_do(
    host: Host, tmp_path: Path, flavor: str
) -> None:
    fl = flavors.by_name(flavor)
    first = install.install(policy(tmp_path), now=True, flavor=fl)
    units = tmp_path / "systemd"
    packaged = Path(install.PACKAGED)
    assert (units / "ecs-harden.service").read_bytes() == (packaged / "ecs-harden.service").read_bytes()
    al2 = units / "ecs-harden.service.d" / "al2.conf"
    assert al2.exists() == (flavor == "amzn2")
    paths = (units / "ecs-harden.service.d" / "paths.conf").read_text()
    key = "ReadWriteDirectories=" if flavor == "amzn2" else "ReadWritePaths="
    assert key in paths and "-/run/xtables.lock" in paths and f"-{os.path.dirname(fl.rules_v4 or '')}" in paths
    assert oct((units / "ecs-harden.service").stat().st_mode & 0o777) == "0o644"
    # the unit's Documentation= is on the host: the README the package carries
    unit_text = (units / "ecs-harden.service").read_text()
    assert "Documentation=file:///usr/local/share/doc/ecs-harden/README.md" in unit_text
    assert (tmp_path / "doc" / "README.md").read_text().startswith("# ecs-harden")
    assert systemctl(host) == ["daemon-reload", "enable ecs-harden.service", "start ecs-harden.service"]
    assert "start ecs-harden.service" in first.changed
    host.runs.clear()
    again = install.install(policy(tmp_path), now=True, flavor=fl)
    assert again.changed == [] and systemctl(host) == []  # idempotent: no reload, no restart
    assert host.prepared == [flavor, flavor]  # what the daemon writes, created at every install


def test_a_changed_unit_file_is_rewritten_and_the_running_unit_restarted(host: Host, tmp_path: Path) -> None:
    fl = flavors.by_name("amzn2023")
    install.install(policy(tmp_path), now=True, flavor=fl)
    unit = tmp_path / "systemd" / "ecs-harden.service"
    unit.write_text("[Service]\nExecStart=/bin/true\n")  # an old or hand-edited copy
    host.runs.clear()
    result = install.install(policy(tmp_path), now=True, flavor=fl)
    assert unit.read_bytes() == (Path(install.PACKAGED) / "ecs-harden.service").read_bytes()
    assert systemctl(host) == ["daemon-reload", "restart ecs-harden.service"]
    assert result.changed == [f"write {unit}", "restart ecs-harden.service (its unit changed)"]


def test_the_al2_drop_in_goes_when_the_host_is_no_longer_amzn2(host: Host, tmp_path: Path) -> None:
    install.install(policy(tmp_path), flavor=flavors.by_name("amzn2"))
    al2 = tmp_path / "systemd" / "ecs-harden.service.d" / "al2.conf"
    assert al2.exists()
    install.install(policy(tmp_path), flavor=flavors.by_name("amzn2023"))
    assert not al2.exists()


def test_dry_run_changes_nothing_and_says_what_it_would(
    host: Host, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host.restore = False
    stub(tmp_path, monkeypatch, "dnf")
    result = install.install(policy(tmp_path), now=True, dry_run=True, flavor=flavors.by_name("amzn2023"))
    assert not (tmp_path / "systemd").exists() and systemctl(host) == []
    assert result.changed[0] == "install iptables-services (the boot restore) with dnf"
    assert "enable ecs-harden.service" in result.changed
    assert not any(r[0] in ("dnf", "yum", "apt-get") for r in host.runs)


def stub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *tools: str) -> None:
    bindir = tmp_path / ("bin-" + "-".join(tools))
    bindir.mkdir()
    for tool in tools:
        (bindir / tool).write_text("#!/bin/sh\nexit 0\n")
        os.chmod(bindir / tool, 0o755)
    monkeypatch.setenv("PATH", str(bindir))


def test_the_package_tool_is_the_flavors_found_on_the_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stub(tmp_path, monkeypatch, "dnf", "yum")
    amzn2, amzn2023, rhel, debian = (flavors.by_name(n) for n in ("amzn2", "amzn2023", "rhel", "debian"))
    assert [s.argv for s in amzn2.install_steps("iptables-services") or []] == [
        ("yum", "install", "-y", "-q", "iptables-services")]  # AL2: yum, even beside a dnf
    assert [s.argv[0] for s in amzn2023.install_steps("iptables-services") or []] == ["dnf"]
    stub(tmp_path, monkeypatch, "yum")
    assert [s.argv[0] for s in rhel.install_steps("iptables-services") or []] == ["yum"]  # RHEL 7
    assert amzn2023.install_steps("iptables-services") is None
    stub(tmp_path, monkeypatch, "apt-get")
    steps = debian.install_steps("iptables-persistent") or []
    assert [s.argv[0] for s in steps] == ["debconf-set-selections", "apt-get", "apt-get"]
    assert "autosave_v4 boolean false" in (steps[0].input or "") and not steps[1].must_succeed
    assert steps[2].env == {"DEBIAN_FRONTEND": "noninteractive"}
    assert debian.install_command() == "DEBIAN_FRONTEND=noninteractive apt-get install -y iptables-persistent"
    assert amzn2.install_command() == "yum install -y iptables-services"


def test_no_package_tool_of_the_flavor_is_a_clear_error(
    host: Host, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub(tmp_path, monkeypatch, "apt-get")
    host.restore = False
    with pytest.raises(RuntimeFailure, match=r"none of dnf \(the amzn2023 package tools\) is on this host"):
        install.install(policy(tmp_path), flavor=flavors.by_name("amzn2023"))


def test_a_missing_restore_package_is_installed_debian_told_not_to_save(
    host: Host, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub(tmp_path, monkeypatch, "apt-get")
    host.restore = False
    result = install.install(policy(tmp_path), flavor=flavors.by_name("debian"))
    assert result.changed[0] == "install iptables-persistent (the boot restore) with apt-get"
    tools = [r[0] for r in host.runs]
    assert tools.index("debconf-set-selections") < tools.index("apt-get")
    assert ["apt-get", "install", "-y", "-q", "iptables-persistent"] in host.runs


def test_a_flavor_without_a_boot_restore_says_so(host: Host, tmp_path: Path) -> None:
    with pytest.raises(RuntimeFailure, match=r"no known boot restore.*imds.persist: false"):
        install.install(policy(tmp_path), flavor=flavors.Unknown)


def test_without_systemd_running_it_installs_and_enables_but_cannot_start(
    host: Host, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(install, "systemd_running", lambda: False)
    install.install(policy(tmp_path), flavor=flavors.by_name("debian"))
    assert systemctl(host) == ["enable ecs-harden.service"]  # no daemon-reload in an image
    with pytest.raises(RuntimeFailure, match="systemd is not running"):
        install.install(policy(tmp_path), now=True, flavor=flavors.by_name("debian"))


def test_install_creates_what_the_sandboxed_daemon_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On amzn2 (no '+' for ExecStartPre on systemd 219) prepare runs inside the sandbox,
    where /var is read-only: a textfile directory must exist before the first start."""
    textfile = tmp_path / "var" / "lib" / "node_exporter" / "textfile_collector" / "ecs_harden.prom"
    pol = Policy(state_dir=str(tmp_path / "state"), source="test",
                 report=ReportPolicy(status_file=str(tmp_path / "run" / "status.json"), textfile=str(textfile)))
    real = unitpaths.writable_paths
    monkeypatch.setattr(unitpaths, "writable_paths",
                        lambda p, f: [w for w in real(p, f) if w.path.startswith(str(tmp_path))])
    fl = flavors.by_name("amzn2")
    dry = install.Result()
    install.create_writable(pol, fl, dry, dry_run=True)
    assert f"create {textfile.parent} (report.textfile)" in dry.changed and not textfile.parent.exists()
    done = install.Result()
    install.create_writable(pol, fl, done, dry_run=False)
    assert textfile.parent.is_dir() and f"create {textfile.parent}" in done.changed
    again = install.Result()
    install.create_writable(pol, fl, again, dry_run=False)
    assert again.changed == []


def test_the_shipped_docs_and_man_page_land_where_the_readme_links_work_and_restart_nothing(
    host: Host, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    share = tmp_path / "share"  # as the wheel's data files put them into the venv
    (share / "doc" / "ecs-harden" / "docs").mkdir(parents=True)
    (share / "man" / "man8").mkdir(parents=True)
    (share / "doc" / "ecs-harden" / "README.md").write_text("# ecs-harden\n[install](docs/install.md)\n")
    (share / "doc" / "ecs-harden" / "docs" / "install.md").write_text("# Install\n")
    (share / "doc" / "ecs-harden" / "docs" / "policy.schema.json").write_text("{}\n")
    (share / "man" / "man8" / "ecs-harden.8").write_text(".TH ECS-HARDEN 8\n")
    (share / "man" / "man8" / "someone-else.8").write_text(".TH OTHER 8\n")
    monkeypatch.setattr(install, "SHARE", str(share))
    fl = flavors.by_name("amzn2023")
    install.install(policy(tmp_path), now=True, flavor=fl)
    assert (tmp_path / "doc" / "README.md").read_text().startswith("# ecs-harden")
    assert (tmp_path / "doc" / "docs" / "install.md").read_text() == "# Install\n"
    assert (tmp_path / "doc" / "docs" / "policy.schema.json").read_text() == "{}\n"
    assert sorted(p.name for p in (tmp_path / "man8").iterdir()) == ["ecs-harden.8"]
    # a newer page (same version) is written, and restarts nothing
    (share / "doc" / "ecs-harden" / "docs" / "install.md").write_text("# Install, again\n")
    host.runs.clear()
    again = install.install(policy(tmp_path), now=True, flavor=fl)
    assert again.changed == [f"write {tmp_path / 'doc' / 'docs' / 'install.md'}"]
    assert systemctl(host) == []


def test_where_the_rpm_put_the_unit_no_copy_in_etc_shadows_it_nor_an_etc_gate_masks_its_gate(
    host: Host, tmp_path: Path
) -> None:
    """A host that moved from the tarball to the RPM: the tarball's /etc unit (ExecStart
    /usr/local/bin) and the user-data's /etc gate of the same name would shadow the
    package's unit and mask its gate: both go; the drop-ins beside the unit stay ours."""
    fl = flavors.by_name("amzn2023")
    install.install(policy(tmp_path), flavor=fl)  # the tarball's install
    units, vendor = tmp_path / "systemd", tmp_path / "vendor"
    old_gate = units / "ecs.service.d" / "ecs-harden-gate.conf"
    old_gate.parent.mkdir(parents=True)
    old_gate.write_text("[Service]\nExecStartPre=/usr/local/bin/ecs-harden gate\n")
    other = units / "ecs.service.d" / "cluster.conf"  # the operator's: untouched
    other.write_text("[Service]\nEnvironment=X=1\n")
    assert (units / "ecs-harden.service").exists()
    (vendor / "ecs.service.d").mkdir(parents=True)
    (vendor / "ecs-harden.service").write_text((Path(install.PACKAGED) / "ecs-harden.service").read_text()
                                               .replace("/usr/local/bin/", "/usr/bin/"))
    (vendor / "ecs.service.d" / "ecs-harden-gate.conf").write_text("[Service]\nExecStartPre=/usr/bin/ecs-harden gate\n")
    host.runs.clear()
    moved = install.install(policy(tmp_path), flavor=fl)
    assert f"remove {units / 'ecs-harden.service'}" in moved.changed
    assert f"remove {old_gate}" in moved.changed
    assert not (units / "ecs-harden.service").exists() and not old_gate.exists()
    assert other.read_text() == "[Service]\nEnvironment=X=1\n"
    assert (units / "ecs-harden.service.d" / "paths.conf").exists()
    assert "daemon-reload" in systemctl(host)
    again = install.install(policy(tmp_path), flavor=fl)
    assert not [c for c in again.changed if "remove" in c or "write" in c], again.changed
    # the package's gate masked (the user-data's ECS_HARDEN_GATE_AGENT=false): left so
    old_gate.symlink_to("/dev/null")
    install.install(policy(tmp_path), flavor=fl)
    assert old_gate.is_symlink() and os.readlink(old_gate) == "/dev/null"
