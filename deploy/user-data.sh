#!/bin/bash
# ecs-harden: docs/user-data.md
ECS_HARDEN_FROM="${ECS_HARDEN_FROM:-}"
ECS_HARDEN_SHA256="${ECS_HARDEN_SHA256:-}"
ECS_HARDEN_S3_ENDPOINT="${ECS_HARDEN_S3_ENDPOINT:-}"
ECS_HARDEN_GATE_AGENT="${ECS_HARDEN_GATE_AGENT:-true}"
ECS_HARDEN_POLICY_YAML=$(cat <<'POLICY'
mode: enforce
report:
  status_file: /run/ecs-harden/status.json
POLICY
)
ecs_harden_user_data() (
  set -Eeuo pipefail
  exec > >(tee -a /var/log/ecs-harden-user-data.log) 2>&1
  fail() { echo "ecs-harden: FAILED: $*"; exit 1; }
  trap 'fail "line $LINENO: $BASH_COMMAND exited $?"' ERR
  g=/etc/systemd/system/ecs.service.d/ecs-harden-gate.conf
  v=/usr/lib/${g#/etc/} f=$ECS_HARDEN_FROM s=$ECS_HARDEN_SHA256 e=$ECS_HARDEN_S3_ENDPOINT
  mkdir -p ${g%/*}
  case $ECS_HARDEN_GATE_AGENT in
    true) rm -f $g; [ -f "$v" ] || echo -e \
      "[Unit]\nAfter=ecs-harden.service\n[Service]\nExecStartPre=/usr/bin/ecs-harden gate" >$g ;;
    false) rm -f $g; [ ! -f "$v" ] || ln -s /dev/null $g ;;
    *) fail "ECS_HARDEN_GATE_AGENT: true|false" ;;
  esac
  systemctl daemon-reload || :
  n=${f##*/}
  [[ $n =~ ^ecs-harden-[A-Za-z0-9._+-]+\.(rpm|tar\.gz)$ ]] || fail "ECS_HARDEN_FROM: not a release: '$f'"
  [[ $s =~ ^[0-9a-f]{64}$ ]] || fail "not a sha256: $s"
  d=$(mktemp -d /var/tmp/ecs-harden-dist.XXXXXX)
  trap 'rm -rf "$d"' EXIT
  a=$d/$n
  echo "ecs-harden: fetching $f"
  case $f in
    s3://*) AWS_RETRY_MODE=standard AWS_MAX_ATTEMPTS=6 aws s3 cp --only-show-errors \
      ${e:+--endpoint-url "$e"} "$f" "$a" ;;
    http*) curl -fsSLo "$a" --retry 5 --retry-connrefused "$f" ;;
    /*) cp "$f" "$a" ;;
    *) false ;;
  esac || fail "cannot fetch $f"
  h=$(sha256sum "$a" | cut -d' ' -f1)
  [ "$h" = "$s" ] || fail "sha256 is $h, not the pinned $s"
  if [[ $n = *.rpm ]]; then dnf install -y -q "$a"
  else tar -xzf "$a" -C "$d"; "${a%.tar.gz}/install" || exit; fi
  echo "$ECS_HARDEN_POLICY_YAML" | ecs-harden --log-level error setup --policy-from - || exit
)
ecs_harden_user_data
# shellcheck disable=SC2181
[ $? = 0 ] || [ "$(trap -p EXIT)" ] || trap 'exit 1' EXIT
