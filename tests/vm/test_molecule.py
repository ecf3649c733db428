"""`molecule test` of the Ansible role (ansible/roles/ecs_harden/molecule/default) on the
test VM's box, in the confined libvirt of tests/vm: create, converge, idempotence
(a second converge changes nothing), verify with the testinfra suite of tests/infra,
destroy."""

from __future__ import annotations

import json
import re
import time

import pytest

from tests.boot.image import CACHE, PROJECT, wheelhouse
from tests.vm.box import box
from tests.vm.test_vm import require_vm
from tests.vm.vagrantlab import VagrantLab

ROLE = PROJECT / "ansible" / "roles" / "ecs_harden"
pytestmark = pytest.mark.vm


def test_molecule_test_passes(tmp_path_factory: pytest.TempPathFactory) -> None:
    require_vm()
    pytest.importorskip("molecule_plugins.vagrant")
    boxdir, _ = box()
    work = tmp_path_factory.mktemp("molecule")
    wheelhouse(work / "www" / "wheelhouse")
    with VagrantLab(work / "lab", boxdir) as lab:
        url = lab.serve(work / "www", work / "http.log") + "wheelhouse/"
        lab.add_box()
        t0 = time.monotonic()
        cp = lab.sandbox.run(
            ["sh", "-c", f"cd {ROLE} && molecule test"], env=lab.molecule_env(url), timeout=3600, check=False,
        )
        took = round(time.monotonic() - t0, 1)
        out = cp.stdout + cp.stderr
        timings = CACHE / "vm-timings.json"
        data = json.loads(timings.read_text()) if timings.exists() else {}
        data["molecule test"] = took
        CACHE.mkdir(exist_ok=True)
        timings.write_text(json.dumps(data, indent=2) + "\n")
        assert cp.returncode == 0, out[-8000:]
        # idempotence ran and found nothing to change; verify ran the testinfra suite
        for step in ("converge", "idempotence", "verify"):
            assert f"{step}] Executed: Successful" in out or f"{step}: Executed: Successful" in out, out[-4000:]
        assert re.search(r"=+ \d+ passed", out) and not re.search(r"=+ .*\d+ failed", out), out[-4000:]
