#!/bin/bash
# The script of ecs-harden's SSM Command document (deploy/ssm/ecs-harden.json, which
# scripts/gen-docs makes from this file line for line). aws:runShellScript runs it as
# root in a working directory of its own. Its parameters arrive only as environment
# variables (interpolationType ENV_VAR: SSM_Action, SSM_ReleaseUri, SSM_ReleaseSha256,
# SSM_Policy): no value is ever pasted into this text, and each is checked again here.
# Lines start "ecs-harden: "; a failure is one "ecs-harden: FAILED: ..." line and exit 1.
# ECS_HARDEN_S3_ENDPOINT and ECS_HARDEN_SSM_ENDPOINT (not parameters: the host's own
# environment) point the AWS CLI elsewhere, as the user-data's S3 endpoint does.
if [ -z "${BASH_VERSION:-}" ]; then exec /bin/bash "$0" "$@"; fi
set -Eeuo pipefail
umask 077
say() { echo "ecs-harden: $*"; }
fail() { say "FAILED: $*"; exit 1; }
trap 'fail "line $LINENO: \`$BASH_COMMAND\` exited $?"' ERR
[ -n "${SSM_Action+x}" ] || fail "no SSM_Action in the environment: this SSM agent predates \
environment variable interpolation (3.3.2746.0); update it"
action=$SSM_Action uri=${SSM_ReleaseUri:-} sha=${SSM_ReleaseSha256:-} policy=${SSM_Policy:-}
case $action in
    install | upgrade | check | remove) ;;
    *) fail "Action: install, upgrade, check or remove" ;;
esac
[ "$(id -u)" -eq 0 ] || fail "must run as root"
export PATH="$PATH:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Never at once with the user-data's install at launch (an association's first run comes
# as soon as the SSM agent starts): wait for cloud-init; then one run of this document at
# a time (the association and a Run Command of an operator).
# (cloud-init's --wait also waits while its stages have not started; bounded below the
# document's 900 s: a user-data still running then is a failure, retried next schedule.)
if command -v cloud-init >/dev/null; then
    ci=$(cloud-init status 2>/dev/null || true)
    if [[ $ci =~ status:\ (running|not\ run) ]]; then
        say "waiting for cloud-init (the user-data) to finish: ${ci#status: }"
        waited=0
        timeout 840 cloud-init status --wait >/dev/null 2>&1 || waited=$?
        [ "$waited" != 124 ] || fail "cloud-init still running after 840 s: not installing beside the user-data"
    fi
fi
mkdir -p /run/lock
exec 9>/run/lock/ecs-harden-ssm.lock
flock 9
work=$(mktemp -d /var/tmp/ecs-harden-ssm.XXXXXX)
trap 'rm -rf "$work"' EXIT

fetch_and_install() {
    local name sum
    [[ $uri =~ ^(s3|https)://[A-Za-z0-9.:_~/%+=-]+/(ecs-harden-[A-Za-z0-9._+-]+\.(rpm|tar\.gz))$ ]] \
        || fail "ReleaseUri: s3:// or https:// to an ecs-harden release (.rpm or .tar.gz)"
    name=${BASH_REMATCH[2]}
    [[ $sha =~ ^[0-9a-f]{64}$ ]] || fail "ReleaseSha256: 64 lowercase hex digits"
    say "fetching $uri"
    case $uri in
        s3://*) AWS_RETRY_MODE=standard AWS_MAX_ATTEMPTS=6 aws s3 cp --only-show-errors \
            ${ECS_HARDEN_S3_ENDPOINT:+--endpoint-url "$ECS_HARDEN_S3_ENDPOINT"} "$uri" "$work/$name" ;;
        *) curl -fsSLo "$work/$name" --retry 5 --retry-connrefused "$uri" ;;
    esac || fail "cannot fetch $uri"
    sum=$(sha256sum "$work/$name" | cut -d' ' -f1)
    [ "$sum" = "$sha" ] || fail "sha256 is $sum, not the pinned $sha"
    if [[ $name = *.rpm ]]; then
        dnf install -y -q "$work/$name"
    else
        tar -xzf "$work/$name" -C "$work"
        "$work/${name%.tar.gz}/install"
    fi
    # the one installer: policy, unit, boot restore, apply, start, check (docs/install.md)
    if [ -n "$policy" ]; then
        printf '%s\n' "$policy" | ecs-harden --log-level error setup --policy-from - || return
    else
        ecs-harden --log-level error setup || return
    fi
}

# SSM Compliance: the host's items (type Custom:ecs_harden), replacing what was there
report() {
    local rc=0
    [ -n "${AWS_SSM_INSTANCE_ID:-}" ] || fail "no AWS_SSM_INSTANCE_ID: not run by the SSM agent"
    if [ "$1" = none ]; then
        printf '{"ResourceType": "ManagedInstance", "ComplianceType": "Custom:ecs_harden", "ExecutionSummary": %s, "Items": [], "UploadType": "COMPLETE"}\n' \
            "{\"ExecutionTime\": \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\", \"ExecutionType\": \"Command\"}" > "$work/items.json"
    else
        ecs-harden --log-level error check --format ssm-compliance > "$work/items.json" || rc=$?
        [ "$rc" -eq 0 ] || [ "$rc" -eq 3 ] || fail "ecs-harden check exited $rc"
    fi
    aws ssm put-compliance-items ${AWS_SSM_REGION_NAME:+--region "$AWS_SSM_REGION_NAME"} \
        ${ECS_HARDEN_SSM_ENDPOINT:+--endpoint-url "$ECS_HARDEN_SSM_ENDPOINT"} \
        --resource-id "$AWS_SSM_INSTANCE_ID" --cli-input-json "file://$work/items.json"
    say "compliance reported: $(grep -c '"Status": "NON_COMPLIANT"' "$work/items.json" || true) item(s) not compliant"
    return "$rc"
}

case $action in
    install | upgrade)
        fetch_and_install || fail "ecs-harden setup exited $?"
        report items || { say "NOT compliant (ecs-harden check)"; exit 3; } ;;
    check)
        command -v ecs-harden >/dev/null || fail "ecs-harden is not installed (Action install)"
        report items || { say "NOT compliant (ecs-harden check)"; exit 3; } ;;
    remove)
        # the agent's gate masked first: the agent is never held for a block taken away
        gate=/etc/systemd/system/ecs.service.d/ecs-harden-gate.conf
        mkdir -p "${gate%/*}"
        ln -sfn /dev/null "$gate"
        systemctl daemon-reload || true
        if command -v ecs-harden >/dev/null; then ecs-harden remove --yes; fi
        if rpm -q ecs-harden >/dev/null 2>&1; then
            dnf remove -y -q ecs-harden
        else
            systemctl disable --now ecs-harden.service 2>/dev/null || true
        fi
        say "removed: the IMDS block, and the daemon stopped and disabled; ecs.config's flags stay"
        report none ;;
esac
say "done: $action"
