"""`molecule test` of the Ansible role (ansible/roles/ecs_harden/molecule/default) on the
test VM's box, in the confined libvirt of tests/vm: create, converge, idempotence
(a second converge changes nothing), verify with the testinfra suite of tests/infra,
destroy.

Not in ./run-tests unless ECS_HARDEN_MOLECULE=1: what it proves is proven in CI already,
and cost 532 s of it. The role converging, converging again with nothing changed, check
mode and a repair run on three flavors in tests/vm/test_fleet.py; the testinfra suite
passes on the test VM (tests/vm/test_vm.py). Run it after changing the role's molecule
scenario: ECS_HARDEN_MOLECULE=1 ./run-tests tests/vm/test_molecule.py"""

from __future__ import annotations

import os
import re
import time

import pytest

from tests.boot.image import PROJECT
from tests.vm.test_vm import require_vm
from tests.vm.vagrantlab import lab_with_box

ROLE = PROJECT / "ansible" / "roles" / "ecs_harden"


def test_molecule_test_passes(tmp_path_factory: pytest.TempPathFactory) -> None:
    if os.environ.get("ECS_HARDEN_MOLECULE") != "1":
        pytest.skip("molecule duplicates the fleet and VM tests' proof: ECS_HARDEN_MOLECULE=1 runs it")
    require_vm()
    pytest.importorskip("molecule_plugins.vagrant")
    with lab_with_box(tmp_path_factory, "molecule") as lab:
        t0 = time.monotonic()
        cp = lab.sandbox.run(
            ["sh", "-c", f"cd {ROLE} && molecule test"], env=lab.molecule_env(*lab.release),
            timeout=3600, check=False,
        )
        lab.timings["molecule test"] = round(time.monotonic() - t0, 1)
        out = cp.stdout + cp.stderr
        assert cp.returncode == 0, out[-8000:]
        # idempotence ran and found nothing to change; verify ran the testinfra suite
        for step in ("converge", "idempotence", "verify"):
            assert f"{step}] Executed: Successful" in out or f"{step}: Executed: Successful" in out, out[-4000:]
        assert re.search(r"=+ \d+ passed", out) and not re.search(r"=+ .*\d+ failed", out), out[-4000:]
