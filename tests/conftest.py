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
