"""Each test's tier comes from its directory, not from a marker in every file:
quick (tests/unit, tests/cli: no root needed, no apt, seconds), lab (tests/integration,
tests/boot: root, namespace sandboxes, real netfilter, Docker and systemd), vm
(tests/tools, tests/vm: Vagrant, Ansible and the test VMs), infra (tests/infra: run
against a host given with --hosts). `./run-tests --quick|--lab|--vm` selects by them."""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
TIERS = {"unit": "quick", "cli": "quick", "integration": "lab", "boot": "lab", "release": "lab",
         "tools": "vm", "vm": "vm", "infra": "infra"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        try:
            top = Path(str(item.fspath)).resolve().relative_to(TESTS).parts[0]
        except ValueError:
            continue
        item.add_marker(TIERS.get(top, "quick"))
    one_variant(config, items)


def one_variant(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`@pytest.mark.one_variant("legacy")`: what the test proves does not depend on
    iptables' variant (it never reads or writes netfilter, or another test proves that part
    on both), so the lab host's other variant is deselected, not set up and skipped."""
    keep, drop = [], []
    for item in items:
        mark = item.get_closest_marker("one_variant")
        params = getattr(getattr(item, "callspec", None), "params", {})
        if mark is not None and params.get("host", mark.args[0]) != mark.args[0]:
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


# -- where the run's time goes: printed at the end of every run (TESTING.md) ----------
_SPENT: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    path = report.nodeid.split("::", 1)[0]
    _SPENT[path] = _SPENT.get(path, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if sum(_SPENT.values()) < 60:  # a quick tier or a single file: nothing worth a table
        return
    tiers: dict[str, float] = {}
    for path, spent in _SPENT.items():
        parts = Path(path).parts
        tier = "/".join(parts[:2]) if parts[:1] == ("tests",) and len(parts) > 2 else path
        tiers[tier] = tiers.get(tier, 0.0) + spent
    total = sum(_SPENT.values())
    write = terminalreporter.write_line
    terminalreporter.section("where the time went (setup + call + teardown)")
    for name, spent in sorted(tiers.items(), key=lambda kv: -kv[1]):
        write(f"{spent:8.1f} s {100 * spent / total:5.1f} %  {name}")
    write("")
    for path, spent in sorted(_SPENT.items(), key=lambda kv: -kv[1])[:15]:
        write(f"{spent:8.1f} s {100 * spent / total:5.1f} %  {path}")
    write(f"{total:8.1f} s in all")
