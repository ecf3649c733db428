"""deploy/user-data.sh as an operator's launch template carries it: the wheelhouse in its
variable, the usual ECS lines before and after it. Shared by the test VM and the
emulated Amazon Linux hosts."""

from __future__ import annotations

from tests.boot.image import PROJECT

USER_DATA = PROJECT / "deploy" / "user-data.sh"
TEXTFILE = "/var/lib/node_exporter/textfile_collector/ecs_harden.prom"
# What an operator's launch template has around ours: ECS lines before and after.
BEFORE = "mkdir -p /etc/ecs\necho ECS_CLUSTER=vmtest >> /etc/ecs/ecs.config\n"
AFTER = "echo ECS_ENABLE_CONTAINER_METADATA=true >> /etc/ecs/ecs.config\n"


def ours(url: str) -> str:
    """The script with the wheelhouse URL in its variable, a node_exporter textfile added
    to its policy, and a 2 s interval."""
    text = USER_DATA.read_text()
    var = 'ECS_HARDEN_FROM="${ECS_HARDEN_FROM:-}"'
    status = "report:\n  status_file: /run/ecs-harden/status.json\n"
    assert text.count(var) == 1 and text.count(status) == 1
    text = text.replace(var, f'ECS_HARDEN_FROM="${{ECS_HARDEN_FROM:-{url}}}"')
    return text.replace(status, f"interval: 2\n{status}  textfile: {TEXTFILE}\n")


def launch_template(url: str) -> str:
    shebang, _, rest = ours(url).partition("\n")
    return f"{shebang}\n{BEFORE}{rest}{AFTER}"
