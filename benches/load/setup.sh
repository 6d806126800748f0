#!/usr/bin/env bash
# Installs the load harness's tools from Debian's packages: wrk (the load generator), nginx and
# HAProxy (the proxies sidekey is compared with), valgrind (for --callgrind), h2load from
# nghttp2-client (the HTTP/2 rows, --h2). The packaged
# services are kept from starting (a temporary policy-rc.d): the harness runs its own instances
# on free ports.
# Idempotent: apt-get runs only when something is missing.
set -euo pipefail

pkgs=(wrk nginx-light haproxy valgrind nghttp2-client)
missing=()
for p in "${pkgs[@]}"; do
  [[ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null)" == "ii "* ]] || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  if [[ $(id -u) -ne 0 ]]; then
    echo "load setup: installing ${missing[*]} needs root (or run: sudo $0)" >&2
    exit 1
  fi
  . "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/../../tests/servers/apt.sh"
  apt_install_quiet "${missing[@]}" -- nginx haproxy
fi
echo "wrk $(wrk -v 2>&1 | head -n1 | awk '{print $2}'), $(nginx -v 2>&1 | sed 's/^nginx version: //'), $(haproxy -v | head -n1 | awk '{print "HAProxy", $3}'), $(h2load --version | head -n1)"
