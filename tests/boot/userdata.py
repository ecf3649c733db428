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
# The user-data's policy (its here-document's body), and the tests' own: a 2 s interval
# and a node_exporter textfile (a launch template's Policy parameter for the same text).
DEFAULT_POLICY = "\nmode: enforce\nreport:\n  status_file: /run/ecs-harden/status.json\nPOLICY\n"
TEST_POLICY = ("mode: enforce\ninterval: 2\nreport:\n  status_file: /run/ecs-harden/status.json\n"
               f"  textfile: {TEXTFILE}")


def ours(source: str, sha256: str, **more: str) -> str:
    """The script with the release tarball and its sha256 in its variables (and any other
    ECS_HARDEN_* of its, by name), a node_exporter textfile added to its policy, and a
    2 s interval: the two lines an operator edits, and a policy of theirs."""
    text = USER_DATA.read_text()
    assert text.count(DEFAULT_POLICY) == 1
    for name, value in {"ECS_HARDEN_FROM": source, "ECS_HARDEN_SHA256": sha256, **more}.items():
        var = f'{name}="${{{name}:-}}"' if name != "ECS_HARDEN_GATE_AGENT" else f'{name}="${{{name}:-true}}"'
        assert text.count(var) == 1, var
        text = text.replace(var, f'{name}="${{{name}:-{value}}}"')
    return text.replace(DEFAULT_POLICY, f"\n{TEST_POLICY}\nPOLICY\n")


def launch_template(source: str, sha256: str, before: str = "", **more: str) -> str:
    """As a launch template carries it: the usual ECS lines before and after ours."""
    shebang, _, rest = ours(source, sha256, **more).partition("\n")
    return f"{shebang}\n{before}{BEFORE}{rest}{AFTER}"


# A cloud-config part beside ours: it leaves a mark the tests look for.
CLOUD_CONFIG = """#cloud-config
write_files:
  - path: /var/lib/ecs-test/cloud-config-ran
    content: |
      yes
"""


def mime(script: str, cloud_config: str = CLOUD_CONFIG) -> str:
    """A launch template's multi-part MIME user data: cloud-config, then the script (as
    docs/user-data.md shows it)."""
    boundary = "==ecs-harden=="
    parts = [("text/cloud-config", cloud_config), ("text/x-shellscript", script)]
    body = "".join(f'--{boundary}\nContent-Type: {kind}; charset="us-ascii"\n\n{text}\n' for kind, text in parts)
    return f'Content-Type: multipart/mixed; boundary="{boundary}"\nMIME-Version: 1.0\n\n{body}--{boundary}--\n'
