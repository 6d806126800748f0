#!/usr/bin/env bash
# End-to-end check of the apache resource server against oidc/server.mjs, with curl:
# valid token 200, no/garbage/tampered/expired/foreign token 401, aud/iss mismatch 401.
# Not part of the Rust tests; run by hand after changing start.sh or upgrading the packages.
# Prints one line per case and "N passed, N failed"; exit code 1 if any failed. Takes ~8 s.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tmp="$(mktemp -d)"
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
json() { python3 -c 'import json,sys; print(json.loads(sys.stdin.readline())[sys.argv[1]])' "$1"; }

# start_oidc NAME [ENV=VALUE...]: starts oidc/server.mjs, waits for its ready line
start_oidc() {
  local name=$1; shift
  env OIDC_EXIT_WITH_PARENT=1 "$@" node "$here/../oidc/server.mjs" > "$tmp/$name.out" 2> "$tmp/$name.err" &
  pids+=($!)
  for _ in $(seq 1 100); do [[ -s "$tmp/$name.out" ]] && return 0; sleep 0.05; done
  echo "oidc server $name did not start:" >&2; cat "$tmp/$name.err" >&2; exit 1
}

# start_apache NAME ARGS...: runs start.sh, waits until GET /healthz answers 200
start_apache() {
  local name=$1 port=$2; shift 2
  "$here/start.sh" "$port" "$@" > "$tmp/$name.out" 2> "$tmp/$name.err" &
  pids+=($!)
  for _ in $(seq 1 100); do
    [[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/healthz")" == 200 ]] && return 0
    sleep 0.05
  done
  echo "apache $name did not start:" >&2; cat "$tmp/$name.err" >&2; exit 1
}

token() { # token TOKEN_URL [curl args...]
  local url=$1; shift
  curl -sf -u sidekey:sidekey-secret -d grant_type=client_credentials "$@" "$url" | json access_token
}

passed=0 failed=0
expect() { # expect NAME WANT_STATUS PORT TOKEN
  local name=$1 want=$2 port=$3 tok=$4 got hdr
  hdr=()
  [[ -z "$tok" ]] || hdr=(-H "Authorization: Bearer $tok")
  got="$(curl -s -o "$tmp/body" -D "$tmp/headers" -w '%{http_code}' "${hdr[@]}" "http://127.0.0.1:$port/check?x=1")"
  if [[ "$got" == "$want" ]] && { [[ "$want" != 401 ]] || grep -qi '^WWW-Authenticate: Bearer' "$tmp/headers"; }; then
    passed=$((passed + 1)); echo "ok   $name: $got"
  else
    failed=$((failed + 1)); echo "FAIL $name: got $got, want $want"; cat "$tmp/headers" "$tmp/body"
  fi
}

start_oidc p1 OIDC_TOKEN_TTL=3 OIDC_HTTPS_PORT=0
start_oidc p2 OIDC_TOKEN_TTL=60
p1_token_url="$(json token_url < "$tmp/p1.out")"
p1_issuer="$(json issuer < "$tmp/p1.out")"
jwks="https://127.0.0.1:$(json https_port < "$tmp/p1.out")/jwks"
ca="$(json ca_file < "$tmp/p1.out")"

a1=$(free_port)
start_apache a1 "$a1" "$jwks" "$ca" "$tmp/a1"
a2=$(free_port)
start_apache a2 "$a2" "$jwks" "$ca" "$tmp/a2" urn:sidekey:test "$p1_issuer"

t="$(token "$p1_token_url")"
expect "valid token" 200 "$a1" "$t"
grep -q '"sub":"sidekey"' "$tmp/body" || { failed=$((failed + 1)); echo "FAIL echo body: $(cat "$tmp/body")"; }
expect "valid token, aud+iss required" 200 "$a2" "$t"
expect "no token" 401 "$a1" ""
expect "garbage token" 401 "$a1" "garbage"
expect "payload of another token, same signature" 401 "$a1" \
  "$(cut -d. -f1 <<<"$t").$(cut -d. -f2 <<<"$(token "$p1_token_url" -d scope=write)").$(cut -d. -f3 <<<"$t")"
expect "token of another provider (other key)" 401 "$a1" "$(token "$(json token_url < "$tmp/p2.out")")"
expect "other audience, aud required" 401 "$a2" "$(token "$p1_token_url" -d audience=urn:other)"
expect "other audience, aud not required" 200 "$a1" "$(token "$p1_token_url" -d audience=urn:other)"
sleep 5 # TTL 3 s + the up to 1 s mod_auth_openidc still accepts + margin
expect "expired token" 401 "$a1" "$t"
expect "fresh token after expiry" 200 "$a1" "$(token "$p1_token_url")"

echo "$passed passed, $failed failed"
[[ $failed == 0 ]]
