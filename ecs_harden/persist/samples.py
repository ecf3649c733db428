"""The iptables-services sample: the distribution's file, not the operator's.

Installing iptables-services (RHEL 7/8/9, Amazon Linux 2, Amazon Linux 2023) lays
down /etc/sysconfig/iptables and ip6tables as config files holding a sample whose
last rules REJECT everything in INPUT and FORWARD. Enabled as is, it cuts every
container off at the next boot. On a fresh host the file is always that sample, so
refusing it would mean never enabling the restore there: the untouched sample is
replaced by a file holding the block; a file the operator edited is theirs.

Which file is the untouched sample:
- on an rpm host, `rpm -V <package>` is the authority: a config file it does not
  list with a changed size or digest is as shipped;
- elsewhere (or when rpm does not own the file), its rule lines are compared with
  the known samples, comments, blank lines and counters ignored.

The known samples' rule lines are those of `sysconfig_iptables` and
`sysconfig_ip6tables` in Fedora's iptables package (src.fedoraproject.org/rpms/
iptables), which RHEL 7, 8, 9, Amazon Linux 2 (iptables-services 1.8.4) and Amazon
Linux 2023 (1.8.8) ship unchanged; FACTS.md ("Persistence") records them as seen.
"""

from __future__ import annotations

import re
import shutil

from ecs_harden import proc

SAMPLE_V4 = (
    "*filter",
    ":INPUT ACCEPT",
    ":FORWARD ACCEPT",
    ":OUTPUT ACCEPT",
    "-A INPUT -m state --state RELATED,ESTABLISHED -j ACCEPT",
    "-A INPUT -p icmp -j ACCEPT",
    "-A INPUT -i lo -j ACCEPT",
    "-A INPUT -p tcp -m state --state NEW -m tcp --dport 22 -j ACCEPT",
    "-A INPUT -j REJECT --reject-with icmp-host-prohibited",
    "-A FORWARD -j REJECT --reject-with icmp-host-prohibited",
    "COMMIT",
)
SAMPLE_V6 = (
    "*filter",
    ":INPUT ACCEPT",
    ":FORWARD ACCEPT",
    ":OUTPUT ACCEPT",
    "-A INPUT -m state --state RELATED,ESTABLISHED -j ACCEPT",
    "-A INPUT -p ipv6-icmp -j ACCEPT",
    "-A INPUT -i lo -j ACCEPT",
    "-A INPUT -p tcp -m state --state NEW -m tcp --dport 22 -j ACCEPT",
    "-A INPUT -d fe80::/64 -p udp -m udp --dport 546 -m state --state NEW -j ACCEPT",
    "-A INPUT -j REJECT --reject-with icmp6-adm-prohibited",
    "-A FORWARD -j REJECT --reject-with icmp6-adm-prohibited",
    "COMMIT",
)
SAMPLES = {4: (SAMPLE_V4,), 6: (SAMPLE_V6,)}

WHAT = "the iptables-services sample (catch-all REJECT)"

_COUNTERS = re.compile(r"\s*\[\d+:\d+\]\s*$")
# rpm -V: "S.5....T.  c /etc/sysconfig/iptables"; S size, 5 digest, ? unreadable.
_RPM_LINE = re.compile(r"^(?P<flags>[.?A-Za-z0-9]{8,9}|missing)\s+(?:[cdglr]\s+)?(?P<path>/.*)$")


def rule_lines(data: bytes) -> tuple[str, ...]:
    """The lines that restore does something with: no comments, no blank lines, no
    counters, whitespace collapsed."""
    out = []
    for raw in data.decode("utf-8", "surrogateescape").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = _COUNTERS.sub("", line)
        if line.startswith("[") and "]" in line:  # a rule's own counters: [0:0] -A INPUT ...
            line = line.split("]", 1)[1].strip()
        out.append(" ".join(line.split()))
    return tuple(out)


def looks_like_sample(data: bytes, family: int) -> bool:
    return rule_lines(data) in SAMPLES.get(family, ())


def rpm_verdict(package: str, path: str) -> bool | None:
    """True: rpm says the package's config file at path is as shipped; False: changed;
    None: no rpm here, the package is not installed, or it does not own path."""
    if shutil.which("rpm") is None:
        return None
    try:
        owner = proc.run(["rpm", "-qf", "--qf", "%{NAME}\n", path], check=False, timeout=30)
        if owner.returncode != 0 or package not in owner.stdout.split():
            return None
        done = proc.run(["rpm", "-V", package], check=False, timeout=60)
    except proc.CommandError:
        return None
    if "is not installed" in done.stdout + done.stderr or done.returncode not in (0, 1):
        return None
    for line in done.stdout.splitlines():
        m = _RPM_LINE.match(line.strip())
        if m is None or m.group("path") != path:
            continue
        flags = m.group("flags")
        return not (flags == "missing" or any(c in flags for c in "S5?"))
    return True  # not listed: as shipped


def is_untouched_sample(data: bytes, family: int, path: str, package: str | None) -> tuple[bool, str]:
    """Whether data (the file at path) is the package's untouched sample, and how that
    was told (for the report)."""
    if package:
        verdict = rpm_verdict(package, path)
        if verdict is not None:
            return verdict, f"rpm -V {package}: {'as shipped' if verdict else 'changed since installed'}"
    same = looks_like_sample(data, family)
    return same, "its rule lines are " + ("those of the sample" if same else "not the sample's")
