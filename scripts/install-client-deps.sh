#!/usr/bin/env bash
# Installs the real container clients the integration tests start, when missing:
#   bash scripts/install-client-deps.sh podman [...]
# One line per client argument (`have CMD || need+=(PKG)`); with no argument, every client.
# Idempotent: does nothing when every command is already present. Each client runs in the
# tests with its own roots, config and socket; nothing here starts or configures a service.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1; }
need=()
clients=("$@")
[ "${#clients[@]}" -gt 0 ] || clients=(podman)

for client in "${clients[@]}"; do
  case "$client" in
    # podman pulls with its own --root/--runroot (tests: testbed/clients/podman.py).
    podman) have podman || need+=(podman) ;;
    *) echo "unknown client: $client (known: podman)" >&2; exit 2 ;;
  esac
done

if [ "${#need[@]}" -eq 0 ]; then
  echo "client packages: all present (${clients[*]})"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "missing client packages: ${need[*]}" >&2
  echo "run as root (or: sudo apt-get install -y ${need[*]})" >&2
  exit 1
fi

echo "installing client packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${need[@]}" ca-certificates
