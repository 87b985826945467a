#!/usr/bin/env bash
# Installs sigstore-js (npm @sigstore/sign, pinned by testbed/sigstore_js/package-lock.json)
# into testbed/sigstore_js/node_modules: the independent signer the cosign tests use to make
# key-based Sigstore bundles. Node and npm come from Debian when missing.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
dir="$here/testbed/sigstore_js"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "node/npm missing and not root: cannot install them" >&2
        exit 1
    fi
    apt-get install -y -q nodejs npm >/dev/null
fi
cd "$dir"
npm ci --no-audit --no-fund --loglevel=error
