#!/usr/bin/env bash
# Installs what `make hardening` needs on top of the test and benchmark packages:
# PostgreSQL, where the faults run keeps notary-server's metadata so that a notary-server
# killed with SIGKILL comes back with its repositories (Debian's notary-server has no
# sqlite3 driver, and its memory storage starts empty). The run starts its own cluster on a
# free loopback port and stops it by PID; a service the package may start is left alone.
# Idempotent: does nothing when initdb is already present.
set -euo pipefail

if command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "hardening packages: all present"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "missing: PostgreSQL (initdb); run as root (or: sudo apt-get install -y postgresql)" >&2
  exit 1
fi

echo "installing hardening packages: postgresql"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends postgresql
