#!/usr/bin/env bash
# Sourced by tests/servers/install.sh and benches/load/setup.sh.
# Installs Debian packages without letting their postinst start a system service (a temporary
# policy-rc.d that says no, removed again): the tests start their own instances on free ports.
# On a host that runs systemd, the units given after `--` are disabled too.
apt_install_quiet() {
  local pkgs=() units=() seen_sep=0 a
  for a in "$@"; do
    if [[ $a == -- ]]; then seen_sep=1; elif [[ $seen_sep == 1 ]]; then units+=("$a"); else pkgs+=("$a"); fi
  done
  local policy=/usr/sbin/policy-rc.d own_policy=0
  if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod 755 "$policy"
    own_policy=1
  fi
  local rc=0
  (
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
  ) || rc=$?
  [[ $own_policy == 0 ]] || rm -f "$policy"
  [[ $rc == 0 ]] || exit "$rc"
  if [[ ${#units[@]} -gt 0 && -d /run/systemd/system ]]; then
    systemctl disable --now "${units[@]}" >/dev/null 2>&1 || true
  fi
}
