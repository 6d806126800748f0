#!/usr/bin/env bash
# Installs the load harness's peers from Debian's packages: wrk (the load generator), nginx and
# HAProxy (the proxies sidekey is compared with). Their packaged services are kept from
# starting (a temporary policy-rc.d): the harness runs its own instances on free ports.
# Idempotent: apt-get runs only when something is missing.
set -euo pipefail

pkgs=(wrk nginx-light haproxy)
missing=()
for p in "${pkgs[@]}"; do
  [[ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null)" == "ii "* ]] || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  if [[ $(id -u) -ne 0 ]]; then
    echo "load setup: installing ${missing[*]} needs root (or run: sudo $0)" >&2
    exit 1
  fi
  policy=/usr/sbin/policy-rc.d own_policy=0
  if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod 755 "$policy"
    own_policy=1
  fi
  rc=0
  (
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  ) || rc=$?
  [[ $own_policy == 0 ]] || rm -f "$policy"
  [[ $rc == 0 ]] || exit "$rc"
  if [[ -d /run/systemd/system ]]; then
    systemctl disable --now nginx haproxy >/dev/null 2>&1 || true
  fi
fi
echo "wrk $(wrk -v 2>&1 | head -n1 | awk '{print $2}'), $(nginx -v 2>&1 | sed 's/^nginx version: //'), $(haproxy -v | head -n1 | awk '{print "HAProxy", $3}')"
