#!/usr/bin/env bash
# Installs the real container clients the integration tests start, only those named and only
# when missing:  scripts/install-client-deps.sh docker [containerd podman ...]; with no
# argument, every client.
# One line per client in the table below (`client) have CMD || need+=(PKG) ;;`); the tests
# call this script and skip with the reason when a client still cannot be had.
# Debian's packages ship init scripts; the tests start their own instances (own roots and
# sockets), so a service a package may have started is not needed and is left alone.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }

clients=("$@")
[ "${#clients[@]}" -gt 0 ] || clients=(docker containerd podman debootstrap)

for client in "${clients[@]}"; do
  case "$client" in
    # containerd and ctr (Debian 12: 1.6.20); the tests start it with its own config, root,
    # state and socket, native snapshotter.
    containerd) have containerd && have ctr || need+=(containerd) ;;
    # dockerd and the Debian docker CLI (BuildKit built in); debootstrap makes the offline
    # base image for `make test-image`.
    docker) have dockerd || need+=(docker.io) ;;
    debootstrap) have debootstrap || need+=(debootstrap) ;;
    # podman pulls with its own --root/--runroot (tests: testbed/clients/podman.py).
    podman) have podman || need+=(podman) ;;
    *) echo "install-client-deps: unknown client '$client'" >&2; exit 2 ;;
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
# Another apt run may hold the lock (a parallel test session): wait for it, bounded.
apt_get() { apt-get -o DPkg::Lock::Timeout=300 "$@"; }
apt_get install -y -q --no-install-recommends "${need[@]}" ca-certificates \
  || { apt_get update -q && apt_get install -y -q --no-install-recommends "${need[@]}" ca-certificates; }
