#!/usr/bin/env bash
# Static checks of the container image and the Kubernetes examples:
#   1. checkov on the Dockerfile (framework dockerfile)
#   2. checkov on examples/kubernetes (framework kubernetes)
#   3. kubernetes-validate --strict on every built-in-kind manifest, against the oldest
#      Kubernetes the examples support (1.30: native sidecars + the preStop sleep action) and
#      the newest schema kubernetes-validate bundles
#   4. the Prometheus-operator resources (podmonitor.yaml) against the operator's CRD schema
#   5. `sidekey check` on every *.toml held by a ConfigMap in examples/kubernetes
# With SIDEKEY_LINT_DIR=DIR only steps 2 and 3 run, on DIR (the injected manifests of
# tests/kube_inject.rs). kustomization.yaml files are not Kubernetes objects: step 3 skips them.
# Both checkov runs must end with zero failed checks; the checks skipped on purpose, each with
# its reason, are in .checkov.yaml at the repository root. Nothing here talks to the network.
#
# Needs the venv that tests/servers/install.sh makes (SIDEKEY_LINT_VENV, default
# /opt/sidekey-lint-venv) and a built sidekey binary (SIDEKEY_BIN, default target/debug/sidekey,
# else target/release/sidekey). Exit 0 when every step passes, 1 otherwise; the last line is
# "lint: N passed, N failed" (steps).
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
here="$root/tests/servers/lint"
cd "$root" || exit 1

venv="${SIDEKEY_LINT_VENV:-/opt/sidekey-lint-venv}"
k8s_versions=(1.30.0 1.37.0)
manifests_dir="${SIDEKEY_LINT_DIR:-examples/kubernetes}"
only_manifests="${SIDEKEY_LINT_DIR:+yes}"
checkov_config=.checkov.yaml

# checkov: no update check against PyPI, no guideline download from Prisma Cloud.
export CKV_SKIP_PACKAGE_UPDATE_CHECK=true BC_SKIP_MAPPING=TRUE

if [[ ! -x "$venv/bin/checkov" || ! -x "$venv/bin/kubernetes-validate" ]]; then
  echo "lint: no checkov/kubernetes-validate in $venv; run tests/servers/install.sh first" >&2
  exit 1
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

passed=0
failed=0
details=()
step() { # step NAME STATUS DETAIL
  if [[ "$2" == ok ]]; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
  fi
  details+=("$(printf '%-4s %-30s %s' "$2" "$1" "$3")")
}

# --- 1, 2: checkov ---------------------------------------------------------------------------
# Prints checkov's failures (compact), reads its JSON summary, and requires: at least one
# resource scanned and check passed, no failed check, no parsing error.
run_checkov() { # run_checkov NAME FRAMEWORK (-f FILE | -d DIR)
  local name="$1" framework="$2"
  shift 2
  local json="$tmp/$framework.json"
  echo "== checkov ($framework): $*"
  "$venv/bin/checkov" --config-file "$checkov_config" --framework "$framework" "$@" \
    --compact --quiet -o cli -o json --output-file-path "console,$json"
  local summary
  if ! summary="$("$venv/bin/python" - "$json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
reports = d if isinstance(d, list) else [d]
s = {k: sum(r.get("summary", {}).get(k, 0) for r in reports)
     for k in ("passed", "failed", "skipped", "parsing_errors", "resource_count")}
print(f"{s['passed']} passed, {s['failed']} failed, {s['skipped']} skipped (inline), "
      f"{s['parsing_errors']} parsing errors, {s['resource_count']} resources")
ok = s["failed"] == 0 and s["parsing_errors"] == 0 and s["passed"] > 0 and s["resource_count"] > 0
sys.exit(0 if ok else 1)
EOF
  )"; then
    step "$name" FAIL "${summary:-no checkov report}"
  else
    step "$name" ok "$summary"
  fi
}
[[ -z "$only_manifests" ]] && run_checkov "checkov dockerfile" dockerfile -f Dockerfile
run_checkov "checkov kubernetes" kubernetes -d "$manifests_dir"

# --- 3, 4: schemas ---------------------------------------------------------------------------
# Built-in kinds go to kubernetes-validate; files of the Prometheus operator's API group to the
# CRD validator. A kind neither knows is a failure, not a warning.
all=() core=() crds=()
for f in "$manifests_dir"/*.yaml "$manifests_dir"/*.yml; do
  [[ -f "$f" ]] || continue
  [[ "$(basename "$f")" == kustomization.y*ml ]] && continue
  all+=("$f")
  if grep -q '^apiVersion: *monitoring\.coreos\.com/' "$f"; then
    crds+=("$f")
  else
    core+=("$f")
  fi
done

for v in "${k8s_versions[@]}"; do
  echo "== kubernetes-validate --strict -k $v"
  n_ok=0 n_bad=0
  for f in "${core[@]}"; do # one file at a time: a YAML error in one hides nothing else
    out="$("$venv/bin/kubernetes-validate" --strict -k "$v" "$f" 2>&1)"
    rc=$?
    echo "$out"
    n_ok=$((n_ok + $(grep -c ' passed for resource ' <<<"$out")))
    if [[ $rc -ne 0 ]] || grep -qE "^(ERROR|WARN)|Couldn't (find schema|parse)" <<<"$out" ||
      ! grep -q ' passed for resource ' <<<"$out"; then
      n_bad=$((n_bad + 1))
    fi
  done
  if [[ $n_bad -eq 0 && $n_ok -gt 0 ]]; then
    step "kubernetes-validate $v" ok "$n_ok resources valid (strict) in ${#core[@]} files"
  else
    step "kubernetes-validate $v" FAIL "$n_bad of ${#core[@]} files with errors or unknown kinds (above)"
  fi
done

if [[ ${#crds[@]} -gt 0 ]]; then
  echo "== prometheus-operator CRD schema"
  out="$("$venv/bin/python" "$here/validate_crds.py" "${crds[@]}" 2>&1)"
  rc=$?
  echo "$out"
  n_ok="$(grep -c ' passed for resource ' <<<"$out")"
  if [[ $rc -eq 0 ]]; then
    step "CRD schema (PodMonitor)" ok "$n_ok resources valid in ${#crds[@]} files"
  else
    step "CRD schema (PodMonitor)" FAIL "errors above"
  fi
fi

# --- 5: the config in the ConfigMap --------------------------------------------------------
if [[ -n "$only_manifests" ]]; then
  echo "lint: $passed passed, $failed failed"
  printf '%s\n' "${details[@]}"
  [[ $failed -eq 0 ]]
  exit
fi
sidekey="${SIDEKEY_BIN:-}"
if [[ -z "$sidekey" ]]; then
  for b in target/debug/sidekey target/release/sidekey; do
    if [[ -x "$b" ]]; then sidekey="$b"; break; fi
  done
fi
echo "== sidekey check on the ConfigMap's TOML"
if [[ -z "$sidekey" || ! -x "$sidekey" ]]; then
  echo "no sidekey binary: build it (cargo build) or set SIDEKEY_BIN" >&2
  step "sidekey check (ConfigMap)" FAIL "no sidekey binary"
else
  out="$("$venv/bin/python" "$here/check_configmaps.py" "$sidekey" "${all[@]}" 2>&1)"
  rc=$?
  echo "$out"
  if [[ $rc -eq 0 ]]; then
    step "sidekey check (ConfigMap)" ok "$(tail -n1 <<<"$out") ($sidekey)"
  else
    step "sidekey check (ConfigMap)" FAIL "$(tail -n1 <<<"$out")"
  fi
fi

# --- summary -------------------------------------------------------------------------------
echo
echo "== summary"
printf '%s\n' "${details[@]}"
skipped="$(sed -n 's/^ *- *\(CKV[A-Z0-9_]*\).*/\1/p' "$checkov_config" | paste -sd, - | sed 's/,/, /g')"
echo "checkov checks skipped by $checkov_config (reasons there): ${skipped:-none}"
echo "lint: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
