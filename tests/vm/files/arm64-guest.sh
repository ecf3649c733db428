#!/bin/bash
# What the arm64 guest runs (tests/vm/test_arm64.py): the aarch64 release as an operator
# installs it, then the block judged by a real packet. Run as the guest's only process
# tree (its /init), so it also works in a private network namespace on any machine.
#
#   arm64-guest.sh TARBALL [RPM_ROOT]
#
# Every result is one line "RESULT <name> <value>" on stdout; the test reads those.
set -uo pipefail
tarball=$1 rpm_root=${2:-}
result() { echo "RESULT $*"; }
step() { echo "STEP $(cut -d' ' -f1 /proc/uptime) $*"; }  # where the guest's time goes

# A container on a Docker-like bridge, and a fake IMDS behind the host (as in the lab:
# tests/lab/host.py), with busybox's httpd answering "imds-ok".
network() {
    ip link set lo up
    ip link add docker0 type bridge
    ip addr add 172.17.0.1/16 dev docker0
    ip link set docker0 up
    ip netns add c1
    ip link add veth-c1 type veth peer name eth0 netns c1
    ip link set veth-c1 master docker0 up
    ip netns exec c1 ip link set lo up
    ip netns exec c1 ip addr add 172.17.0.2/16 dev eth0
    ip netns exec c1 ip link set eth0 up
    ip netns exec c1 ip route add default via 172.17.0.1
    ip netns add imds
    ip link add imds-host type veth peer name imds-peer netns imds
    ip addr add 169.254.169.1/24 dev imds-host
    ip link set imds-host up
    ip netns exec imds ip link set lo up
    ip netns exec imds ip addr add 169.254.169.254/24 dev imds-peer
    ip netns exec imds ip link set imds-peer up
    ip netns exec imds ip route add default via 169.254.169.1
    echo 1 > /proc/sys/net/ipv4/ip_forward
    mkdir -p /srv/imds
    echo imds-ok > /srv/imds/index.html
    ip netns exec imds busybox httpd -p 80 -h /srv/imds
}

# "reached" when the container got IMDS's answer, else "blocked"
probe() {
    local got
    got=$(printf 'GET / HTTP/1.0\r\n\r\n' | ip netns exec c1 busybox nc -w 5 169.254.169.254 80 2>/dev/null)
    case "$got" in *imds-ok*) echo reached ;; *) echo blocked ;; esac
}

variant() {  # what update-alternatives --set does, for every iptables name
    local family suffix
    for family in iptables ip6tables; do
        for suffix in "" -save -restore; do
            ln -sfn "/usr/sbin/$family-$1$suffix" "/usr/sbin/$family$suffix"
        done
    done
}

# apply, a packet, the block's counter, check, remove, a packet: one variant, one install
exercise() {  # $1: the label of this run
    local label=$1 rc
    result "$label.variant" "$(iptables -V)"
    result "$label.before" "$(probe)"
    step "$label apply"
    ecs-harden apply --log-format json > "/tmp/$label.apply" 2>&1
    rc=$?
    result "$label.apply_rc" "$rc"
    [ "$rc" -eq 0 ] || cat "/tmp/$label.apply"
    result "$label.after" "$(probe)"
    # the packets our rules dropped (the probe's SYNs): the sum of our DROP rules' counters
    result "$label.dropped" "$(iptables-save -c | python3.11 -c 'import re, sys
print(sum(int(m[1]) for m in re.finditer(r"^\[(\d+):\d+\] .*ecs-harden.* -j DROP$", sys.stdin.read(), re.M)))')"
    ecs-harden check --format json > "/tmp/$label.check" 2>/dev/null
    result "$label.check_rc" "$?"
    result "$label.live" "$(python3.11 -c 'import json, sys
found = json.load(open(sys.argv[1]))["findings"]
print(",".join(f["status"] for f in found if f["check"] in ("imds.ipv4.live", "imds.ipv6.live")))' "/tmp/$label.check")"
    step "$label remove"
    ecs-harden remove --yes > "/tmp/$label.remove" 2>&1
    rc=$?
    result "$label.remove_rc" "$rc"
    [ "$rc" -eq 0 ] || cat "/tmp/$label.remove"
    result "$label.removed" "$(probe)"
    result "$label.left" "$( { iptables-save; ip6tables-save; } | grep -c ecs-harden)"
}

result arch "$(uname -m)"
network
# No boot persistence here: the guest has no init system to restore at boot (the x86_64
# VM and the booted hosts prove that part); everything else is the default policy.
mkdir -p /etc/ecs-harden
printf 'imds:\n  persist: false\n' > /etc/ecs-harden/policy.yaml
chmod 600 /etc/ecs-harden/policy.yaml
result python "$(python3.11 -c 'import platform; print(platform.python_version(), platform.machine())')"

# the 3.11 tarball, offline, with its own installer
mkdir -p /tmp/release
tar -xzf "$tarball" -C /tmp/release
top=$(echo /tmp/release/ecs-harden-*)
step install
"$top/install" > /tmp/install.log 2>&1
result install_rc "$?"
tail -3 /tmp/install.log
result version "$(ecs-harden --version)"
result helper "$(/opt/ecs-harden/bin/python -c 'import iptc.xtables, yaml, psutil; print(yaml.__with_libyaml__, psutil.cpu_count() > 0)' 2>&1)"
for v in nft legacy; do
    variant "$v"
    exercise "tarball-$v"
done

# the AL2023 RPM's venv, with a Python 3.9 at /usr/bin/python3.9: its files as the real
# rpm laid them into RPM_ROOT (rpm --root on the test's machine: its scriptlets need
# AL2023's systemd), copied over the guest's / once the tarball's install is gone
if [ -n "$rpm_root" ]; then
    rm -rf /opt/ecs-harden /usr/bin/ecs-harden /usr/local/bin/ecs-harden
    (cd "$rpm_root" && tar -c opt usr) | tar -x --keep-directory-symlink -C /
    result rpm.python "$(/usr/bin/python3.9 -c 'import platform; print(platform.python_version(), platform.machine())')"
    result rpm.version "$(/usr/bin/ecs-harden --version)"
    variant nft
    exercise rpm-nft
fi
