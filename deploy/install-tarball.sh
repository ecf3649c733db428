#!/bin/bash
# The release tarball's installer (`ecs-harden-VERSION-pyX.Y-ARCH/install`, put there by
# scripts/release): the venv /opt/ecs-harden from the wheels beside it (no package index,
# no compiler), for the Python the tarball is for, as every distribution names it
# (python3.9 on AL2023, python3.8 from amazon-linux-extras on Amazon Linux 2, python3.11
# on Debian 12); /usr/local/bin/ecs-harden and /usr/bin/ecs-harden (the agent gate's
# path, the RPM's too) link to it. Idempotent: an installed version is kept. Then
# `ecs-harden setup` sets the host up. Lines start "ecs-harden: "; a failure is one
# "ecs-harden: FAILED: ..." line and exit 1.
set -Eeuo pipefail
umask 022
say() { echo "ecs-harden: $*"; }
fail() { say "FAILED: $*"; exit 1; }
trap 'fail "line $LINENO: \`$BASH_COMMAND\` exited $?"' ERR

here=$(cd "$(dirname "$0")" && pwd)
name=${here##*/}
prefix=${ECS_HARDEN_PREFIX:-/opt/ecs-harden}
[[ "$name" =~ ^ecs-harden-([^-]+)-py([0-9]+\.[0-9]+)-([a-z0-9_]+)$ ]] \
    || fail "$here: not an unpacked release tarball (ecs-harden-VERSION-pyX.Y-ARCH)"
version=${BASH_REMATCH[1]} minor=${BASH_REMATCH[2]} arch=${BASH_REMATCH[3]}
[ "$(id -u)" -eq 0 ] || fail "must run as root"
[ "$arch" = "$(uname -m)" ] || fail "$name is for $arch; this host is $(uname -m)"
[ -d "$here/wheels" ] || fail "$here holds no wheels directory"
for link in /usr/bin/ecs-harden /usr/local/bin/ecs-harden; do
    owner=$(rpm -qf "$link" 2>/dev/null) && fail "$link belongs to the package $owner: upgrade it with dnf, not this tarball"
done

python=python$minor
if [ "$python" = python3.8 ] && ! command -v python3.8 >/dev/null && command -v amazon-linux-extras >/dev/null; then
    say "installing python3.8 from amazon-linux-extras"
    amazon-linux-extras install -y python3.8
fi
if ! command -v "$python" >/dev/null; then
    have=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)
    fail "$name is for Python $minor; this host has no $python${have:+ (its python3 is $have: use the py$have tarball)}"
fi
if ! "$python" -c 'import ensurepip, venv' 2>/dev/null && command -v apt-get >/dev/null; then
    say "installing python3-venv"
    apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
fi

if [ "$("$prefix/bin/ecs-harden" --version 2>/dev/null || true)" = "ecs-harden $version" ]; then
    say "unchanged: ecs-harden $version is installed in $prefix"
else
    if ! "$prefix/bin/python" -c 'import sys' 2>/dev/null; then
        say "creating the venv $prefix with $("$python" -V 2>&1)"
        rm -rf "$prefix"
        "$python" -m venv "$prefix"
    fi
    say "installing ecs-harden $version from $name (no index)"
    "$prefix/bin/pip" install -q --disable-pip-version-check --no-index --find-links "$here/wheels" \
        --upgrade "ecs-harden==$version"
fi
ln -sfn "$prefix/bin/ecs-harden" /usr/local/bin/ecs-harden
ln -sfn "$prefix/bin/ecs-harden" /usr/bin/ecs-harden
say "installed $(/usr/bin/ecs-harden --version)"
