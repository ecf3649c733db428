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

# Where ecs-harden comes from: a release tarball (`scripts/release` builds one per
# target Python: py3.9 for AL2023, py3.8 for AL2, py3.11 for Debian 12), one of
#   s3://BUCKET/KEY.tar.gz      aws s3 cp (on ECS AMIs; the instance role, or an S3
#                               gateway endpoint for hosts without internet)
#   https://HOST/PATH.tar.gz    curl
#   /PATH/ON/THE/HOST.tar.gz    a file already there (an AMI baked with it)
# and its sha256 (SHA256SUMS beside it): a mismatch stops before anything is changed.
# Nothing comes from a package index, and nothing is compiled on the host.
ECS_HARDEN_FROM="${ECS_HARDEN_FROM:-}"
ECS_HARDEN_SHA256="${ECS_HARDEN_SHA256:-}"
# For S3 through an interface endpoint (or an S3-compatible store): its URL.
ECS_HARDEN_S3_ENDPOINT="${ECS_HARDEN_S3_ENDPOINT:-}"
# An unhardened host must not take tasks: ecs.service gets a drop-in that starts the
# agent only once `ecs-harden check` passes (it retries every 10 s, so the agent comes
# up by itself once the host is fixed). "false": the agent starts whatever happens
# here (availability first); the failure is still logged and reported.
ECS_HARDEN_GATE_AGENT="${ECS_HARDEN_GATE_AGENT:-true}"

# The policy (SPEC: every key optional, these are the defaults that matter).
# (Not $ECS_HARDEN_POLICY: the CLI reads that as the policy's path.)
ECS_HARDEN_POLICY_YAML=$(cat <<'POLICY'
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
    # 0. The ECS agent starts only on a hardened host (first, whatever fails later).
    gate=/etc/systemd/system/ecs.service.d/ecs-harden-gate.conf
    case "$ECS_HARDEN_GATE_AGENT" in
        true)
            # `gate` holds the agent only while the block is not in force (or a flag is
            # wrong) under mode: enforce; an older drop-in (a full `check`) is replaced.
            want=$(printf '%s\n' "# Written by ecs-harden's user-data: the ECS agent starts only once the IMDS" \
                "# block is in force (ECS_HARDEN_GATE_AGENT=false in the user-data: not)." \
                "[Unit]" "After=ecs-harden.service" "[Service]" "ExecStartPre=/usr/local/bin/ecs-harden gate")
            if [ "$(cat "$gate" 2>/dev/null)" != "$want" ]; then
                mkdir -p "${gate%/*}"
                printf '%s\n' "$want" > "$gate"
                systemctl daemon-reload 2>/dev/null || true
                say "ecs.service starts only once the IMDS block is in force ($gate)"
            fi ;;
        false) if [ -f "$gate" ]; then rm -f "$gate"; systemctl daemon-reload 2>/dev/null || true; fi ;;
        *) fail "ECS_HARDEN_GATE_AGENT must be true or false, not '$ECS_HARDEN_GATE_AGENT'" ;;
    esac
    [ -r /etc/os-release ] || fail "no /etc/os-release: cannot tell the distribution"
    # shellcheck source=/dev/null
    id=$(. /etc/os-release && echo "${ID:-}")
    # shellcheck source=/dev/null
    version=$(. /etc/os-release && echo "${VERSION_ID:-}")
    # shellcheck source=/dev/null
    like=$(. /etc/os-release && echo "${ID_LIKE:-}")

    # Nothing here depends on the distribution: the Python is the one the tarball is for,
    # and the restore package, the unit and its drop-ins are `ecs-harden install`'s business.
    say "distribution $id $version${like:+ (like $like)}"

    pkg_install() {
        say "installing $*"
        if command -v dnf >/dev/null; then dnf install -y -q "$@"
        elif command -v yum >/dev/null; then yum install -y -q "$@"
        elif command -v apt-get >/dev/null; then
            apt-get update -qq || true
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
        else fail "no dnf, yum or apt-get to install $*"; fi
    }

    # 1. The release tarball, fetched into a temporary directory and its sha256 checked
    # before anything on the host is changed.
    [ -n "$ECS_HARDEN_FROM" ] || fail "ECS_HARDEN_FROM is empty: set it to the release tarball (s3://, https:// or a path on the host; docs/user-data.md)"
    [[ "$ECS_HARDEN_SHA256" =~ ^[0-9a-f]{64}$ ]] || fail "ECS_HARDEN_SHA256 must be the tarball's sha256 (64 hex digits, from SHA256SUMS), not '${ECS_HARDEN_SHA256}'"
    name=${ECS_HARDEN_FROM##*/}
    [[ "$name" =~ ^ecs-harden-([^-]+)-py([0-9]+\.[0-9]+)-([a-z0-9_]+)\.tar\.gz$ ]] \
        || fail "ECS_HARDEN_FROM: '$name' is not a release tarball name (ecs-harden-VERSION-pyX.Y-ARCH.tar.gz)"
    want_version=${BASH_REMATCH[1]} want_python=${BASH_REMATCH[2]} want_arch=${BASH_REMATCH[3]}
    python=python$want_python  # as every distribution names it (AL2023: python3.9, AL2: python3.8)
    [ "$want_arch" = "$(uname -m)" ] || fail "$name is for $want_arch; this host is $(uname -m)"
    dist=$(mktemp -d /var/tmp/ecs-harden-dist.XXXXXX)
    # shellcheck disable=SC2064  # $dist is fixed now
    trap "rm -rf '$dist'" EXIT
    case "$ECS_HARDEN_FROM" in
        s3://*)
            command -v aws >/dev/null || fail "no aws CLI to fetch $ECS_HARDEN_FROM (on ECS AMIs it is there; else use https:// or a local path)"
            say "fetching $ECS_HARDEN_FROM"
            # standard retries: a refused or reset connection at boot is tried again
            AWS_RETRY_MODE=standard AWS_MAX_ATTEMPTS=6 aws s3 cp --only-show-errors ${ECS_HARDEN_S3_ENDPOINT:+--endpoint-url "$ECS_HARDEN_S3_ENDPOINT"} \
                "$ECS_HARDEN_FROM" "$dist/$name" || fail "cannot fetch $ECS_HARDEN_FROM (aws s3 cp exited $?): nothing was installed" ;;
        https://*|http://*)
            say "fetching $ECS_HARDEN_FROM"
            curl -fsSL --retry 5 --retry-connrefused --connect-timeout 10 -o "$dist/$name" "$ECS_HARDEN_FROM" \
                || fail "cannot fetch $ECS_HARDEN_FROM (curl exited $?): nothing was installed" ;;
        /*)
            [ -f "$ECS_HARDEN_FROM" ] || fail "$ECS_HARDEN_FROM: no such file: nothing was installed"
            cp "$ECS_HARDEN_FROM" "$dist/$name" ;;
        *)  fail "ECS_HARDEN_FROM: '$ECS_HARDEN_FROM' is neither s3://, https://, http:// nor an absolute path" ;;
    esac
    got=$(sha256sum "$dist/$name" | cut -d' ' -f1)
    [ "$got" = "$ECS_HARDEN_SHA256" ] \
        || fail "$name: sha256 is $got, not the pinned $ECS_HARDEN_SHA256: refusing it; nothing was changed"
    say "verified $name (sha256 $got)"

    # 2. Python and the venv.
    if [ "$python" = python3.8 ] && ! command -v python3.8 >/dev/null && command -v amazon-linux-extras >/dev/null; then
        say "installing python3.8 from amazon-linux-extras"
        amazon-linux-extras install -y python3.8
    fi
    if ! command -v "$python" >/dev/null; then
        have=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)
        fail "$name is for Python $want_python; this host has no $python${have:+ (its python3 is $have: use the py$have tarball)}"
    fi
    if ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
        command -v apt-get >/dev/null && pkg_install python3-venv
    fi
    tar -xzf "$dist/$name" -C "$dist"
    wheels="$dist/${name%.tar.gz}/wheels"
    [ -d "$wheels" ] || fail "$name holds no ${name%.tar.gz}/wheels directory"
    if [ "$("$prefix/bin/ecs-harden" --version 2>/dev/null || true)" = "ecs-harden $want_version" ]; then
        say "unchanged: ecs-harden $want_version is installed in $prefix"
    else
        if ! "$prefix/bin/python" -c 'import sys' 2>/dev/null; then
            say "creating the venv $prefix with $($python -V 2>&1)"
            rm -rf "$prefix"
            "$python" -m venv "$prefix"
        fi
        say "installing ecs-harden $want_version from $name (no index)"
        "$prefix/bin/pip" install -q --disable-pip-version-check --no-index --find-links "$wheels" \
            --upgrade "ecs-harden==$want_version"
    fi
    ln -sfn "$prefix/bin/ecs-harden" /usr/local/bin/ecs-harden
    say "installed $(/usr/local/bin/ecs-harden --version)"

    # 3. The policy: validated before it replaces anything.
    install -d -m 0755 /etc/ecs-harden
    tmp=$(mktemp /etc/ecs-harden/.policy.yaml.XXXXXX)
    printf '%s\n' "$ECS_HARDEN_POLICY_YAML" > "$tmp"
    chmod 0600 "$tmp"
    if ! /usr/local/bin/ecs-harden --log-level error validate "$tmp" >/dev/null; then
        rm -f "$tmp"
        fail "the policy in this user-data is invalid (see the error above); nothing was changed"
    fi
    if cmp -s "$tmp" /etc/ecs-harden/policy.yaml; then rm -f "$tmp"
    else mv -f "$tmp" /etc/ecs-harden/policy.yaml; say "wrote /etc/ecs-harden/policy.yaml"; fi

    # 4. The boot restore package, the unit and its drop-ins (the policy's paths writable
    # in its sandbox; on amzn2 the systemd 219 one), enabled for every boot.
    /usr/local/bin/ecs-harden --log-level error install

    # 5. Converge now: the block, the persisted rules and their restore, ecs.config.
    rc=0
    /usr/local/bin/ecs-harden apply --format text || rc=$?
    [ "$rc" -eq 0 ] || fail "ecs-harden apply exited $rc: the host is NOT compliant (report above)"

    # 6. Started (READY only with the block); restarted when it ran already (a new version).
    /usr/local/bin/ecs-harden --log-level error install --now --restart --no-restore-package
    rc=0
    /usr/local/bin/ecs-harden check --format text || rc=$?
    [ "$rc" -eq 0 ] || fail "ecs-harden check exited $rc after the unit started: NOT compliant"
    say "done: compliant, ecs-harden.service $(systemctl is-active ecs-harden.service)"
)

# Not `ecs_harden_user_data || ...`: bash ignores `set -e` (and the ERR trap) in a
# function whose caller tests it, and a failed step would go on.
ecs_harden_user_data
ecs_harden_rc=$?
if [ "$ecs_harden_rc" -ne 0 ]; then
    echo "ecs-harden: FAILED (exit $ecs_harden_rc): the host is NOT hardened; see /var/log/ecs-harden-user-data.log" >&2
    # The rest of the user-data still runs (an ECS_CLUSTER line after these must still
    # land): the gate, not this script's exit, keeps the agent from taking tasks. The
    # user-data as a whole ends with exit 1, so cloud-init reports it failed.
    if [ -z "$(trap -p EXIT)" ]; then
        trap 'exit 1' EXIT
    fi
fi
