#!/bin/bash
# ecs-harden: EC2 user-data for Amazon ECS container instances.
#
# Paste into a launch template's user data as is, before or after the usual ECS lines
# (`echo ECS_CLUSTER=prod >> /etc/ecs/ecs.config`): ecs-harden merges ecs.config, it
# never overwrites it. On first boot, before the ECS agent starts (ecs.service runs
# after cloud-final), it
#   1. installs ecs-harden into a venv under /opt/ecs-harden (python3.8 from
#      amazon-linux-extras on Amazon Linux 2, the system python3 elsewhere),
#   2. writes the policy below to /etc/ecs-harden/policy.yaml (validated first),
#   3. runs `ecs-harden install`: the flavor's boot-restore package where it is
#      missing (iptables-services with dnf/yum, iptables-persistent with apt),
#      ecs-harden.service and its drop-ins, enabled (what goes where is the
#      package's knowledge, not this script's),
#   4. runs `ecs-harden apply` (the block, the persisted rules, ecs.config; on Amazon
#      Linux it replaces iptables-services' sample, whose catch-all REJECT would cut
#      every container off at boot),
#   5. starts ecs-harden.service (`ecs-harden install --now`): READY comes only with
#      the block in place.
# It is idempotent (cloud-init may run it again) and logs to the console and to
# /var/log/ecs-harden-user-data.log. Where it cannot make the host compliant it
# stops the whole user-data with a line starting "ecs-harden: FAILED" and exit 1:
# a host that silently stays exposed is the worst outcome.

# Where ecs-harden comes from, in one variable:
#   empty                                   the package index (pip's default)
#   https://host/path/ecs_harden-....whl    that wheel (dependencies from the index)
#   https://host/path/wheelhouse/           a directory of wheels (ends in /): nothing
#                                           from the index, for hosts without one
ECS_HARDEN_FROM="${ECS_HARDEN_FROM:-}"
# A version to pin from the index or the wheelhouse, e.g. 0.1.0; empty: the newest.
ECS_HARDEN_VERSION="${ECS_HARDEN_VERSION:-}"

# The policy (SPEC: every key optional, these are the defaults that matter).
ECS_HARDEN_POLICY=$(cat <<'POLICY'
mode: enforce
imds:
  interfaces: ["docker+"]
  ipv4: 169.254.169.254/32
  ipv6: fd00:ec2::254/128
  persist: true
ecs_config:
  path: /etc/ecs/ecs.config
  settings:
    ECS_AWSVPC_BLOCK_IMDS: "true"
    ECS_ENABLE_TASK_IAM_ROLE_NETWORK_HOST: "false"
report:
  status_file: /run/ecs-harden/status.json
POLICY
)

ecs_harden_user_data() (
    # -E: the ERR trap below also fires inside functions (pkg_install): a failed dnf or apt
    # must end with a FAILED line, not silently.
    set -Eeuo pipefail
    umask 022
    prefix=/opt/ecs-harden
    log=/var/log/ecs-harden-user-data.log
    exec > >(tee -a "$log") 2>&1

    say() { echo "ecs-harden: $*"; }
    fail() { echo "ecs-harden: FAILED: $*"; exit 1; }
    trap 'fail "line $LINENO: \`$BASH_COMMAND\` exited $?"' ERR

    say "user-data starting $(date -u +%FT%TZ)"
    [ "$(id -u)" -eq 0 ] || fail "must run as root (EC2 user-data does)"
    [ -r /etc/os-release ] || fail "no /etc/os-release: cannot tell the distribution"
    # shellcheck source=/dev/null
    id=$(. /etc/os-release && echo "${ID:-}")
    # shellcheck source=/dev/null
    version=$(. /etc/os-release && echo "${VERSION_ID:-}")
    # shellcheck source=/dev/null
    like=$(. /etc/os-release && echo "${ID_LIKE:-}")

    # Which Python is all this script needs to know of the distribution; which restore
    # package, unit and drop-ins is `ecs-harden install`'s business.
    python=python3
    case "$id:$version" in
        amzn:2)    python=python3.8 ;;
        amzn:*)    case "$version" in 2023*) ;; *) fail "Amazon Linux $version: no Python >= 3.8 for ecs-harden (use AL2023 or AL2)" ;; esac ;;
    esac
    say "distribution $id $version${like:+ (like $like)}, $python"

    pkg_install() {
        say "installing $*"
        if command -v dnf >/dev/null; then dnf install -y -q "$@"
        elif command -v yum >/dev/null; then yum install -y -q "$@"
        elif command -v apt-get >/dev/null; then
            apt-get update -qq || true
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
        else fail "no dnf, yum or apt-get to install $*"; fi
    }

    # 1. Python and the venv.
    if [ "$python" = python3.8 ] && ! command -v python3.8 >/dev/null; then
        say "installing python3.8 from amazon-linux-extras"
        amazon-linux-extras install -y python3.8
    fi
    command -v "$python" >/dev/null || fail "$python not found"
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 8))' \
        || fail "$($python -V 2>&1) is too old: ecs-harden needs Python >= 3.8"
    if ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
        command -v apt-get >/dev/null && pkg_install python3-venv
    fi
    if ! "$prefix/bin/python" -c 'import sys' 2>/dev/null; then
        say "creating the venv $prefix with $($python -V 2>&1)"
        rm -rf "$prefix"
        "$python" -m venv "$prefix"
    fi
    req=ecs-harden${ECS_HARDEN_VERSION:+==$ECS_HARDEN_VERSION}
    pip=("$prefix/bin/pip" install --disable-pip-version-check --upgrade --upgrade-strategy only-if-needed)
    case "$ECS_HARDEN_FROM" in
        "") need_compiler=1; args=("$req") ;;
        */) need_compiler=0; args=(--no-index --find-links "$ECS_HARDEN_FROM" "$req") ;;
        *)  need_compiler=1; args=("$ECS_HARDEN_FROM") ;;
    esac
    case "$ECS_HARDEN_FROM" in
        # pip refuses plain http unless told the host is trusted: the operator chose it
        http://*) host=${ECS_HARDEN_FROM#http://}; args=(--trusted-host "${host%%[/:]*}" "${args[@]}") ;;
    esac
    if [ "$need_compiler" = 1 ] && ! "$prefix/bin/python" -c 'import iptc' 2>/dev/null \
            && ! command -v gcc >/dev/null; then
        # python-iptables is published as source only: pip builds its small C helper.
        if command -v apt-get >/dev/null; then pkg_install gcc python3-dev
        elif [ "$python" = python3.8 ]; then pkg_install gcc python38-devel
        else pkg_install gcc python3-devel; fi
    fi
    say "pip install ${args[*]}"
    "${pip[@]}" "${args[@]}"
    ln -sfn "$prefix/bin/ecs-harden" /usr/local/bin/ecs-harden
    say "installed $(/usr/local/bin/ecs-harden --version)"

    # 2. The policy: validated before it replaces anything.
    install -d -m 0755 /etc/ecs-harden
    tmp=$(mktemp /etc/ecs-harden/.policy.yaml.XXXXXX)
    printf '%s\n' "$ECS_HARDEN_POLICY" > "$tmp"
    chmod 0600 "$tmp"
    rc=0
    /usr/local/bin/ecs-harden --policy "$tmp" --log-level error check --format json >/dev/null || rc=$?
    if [ "$rc" -eq 2 ]; then
        rm -f "$tmp"
        fail "the policy in this user-data is invalid (see the error above); nothing was changed"
    elif [ "$rc" -ne 0 ] && [ "$rc" -ne 3 ]; then
        rm -f "$tmp"
        fail "ecs-harden check exited $rc with the new policy (see above); nothing was changed"
    fi
    if cmp -s "$tmp" /etc/ecs-harden/policy.yaml; then rm -f "$tmp"
    else mv -f "$tmp" /etc/ecs-harden/policy.yaml; say "wrote /etc/ecs-harden/policy.yaml"; fi

    # 3. The boot restore package, the unit and its drop-ins (the policy's paths writable
    # in its sandbox; on amzn2 the systemd 219 one), enabled for every boot.
    /usr/local/bin/ecs-harden --log-level error install

    # 4. Converge now: the block, the persisted rules and their restore, ecs.config.
    rc=0
    /usr/local/bin/ecs-harden apply --format text || rc=$?
    [ "$rc" -eq 0 ] || fail "ecs-harden apply exited $rc: the host is NOT compliant (report above)"

    # 5. Started (READY only with the block); restarted when it ran already (a new version).
    /usr/local/bin/ecs-harden --log-level error install --now --restart --no-restore-package
    rc=0
    /usr/local/bin/ecs-harden check --format text || rc=$?
    [ "$rc" -eq 0 ] || fail "ecs-harden check exited $rc after the unit started: NOT compliant"
    say "done: compliant, ecs-harden.service $(systemctl is-active ecs-harden.service)"
)

# Not `ecs_harden_user_data || exit 1`: bash ignores `set -e` (and the ERR trap) in a
# function whose caller tests it, and a failed step would go on.
ecs_harden_user_data
ecs_harden_rc=$?
if [ "$ecs_harden_rc" -ne 0 ]; then
    echo "ecs-harden: FAILED (exit $ecs_harden_rc): the host is NOT hardened; see /var/log/ecs-harden-user-data.log" >&2
    exit 1
fi
