#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages that `make test` and `make demo` need:
# the real servers the test bed starts (docker-registry, notary, redis-server),
# the real client (skopeo), openssl/htpasswd for fixtures, and Python's venv.
# Idempotent: does nothing when every command is already present.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have docker-registry || need+=(docker-registry)
have notary-server || need+=(notary)
have redis-server || need+=(redis-server)
have skopeo || need+=(skopeo)
have openssl || need+=(openssl)
have htpasswd || need+=(apache2-utils)
have make || need+=(make)
have curl || need+=(curl)
have python3 || need+=(python3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)

if [ "${#need[@]}" -eq 0 ]; then
  echo "system packages: all present"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "missing system packages: ${need[*]}" >&2
  echo "run as root (or: sudo apt-get install -y ${need[*]})" >&2
  exit 1
fi

echo "installing system packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${need[@]}" ca-certificates
# The packages ship init scripts; the test bed starts its own instances on free ports,
# so a service the package may have started is not needed and is left alone.
