#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages that `make bench` needs on top of
# scripts/install-system-deps.sh: nginx (the "do nothing" reverse-proxy baseline the
# benchmark compares trustproxy with) and the HTTP load generators wrk and hey.
# Idempotent: does nothing when every command is already present.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
# nginx lives in /usr/sbin, which is not on every user's PATH.
if ! have nginx; then
  # nginx-light: the small build (Debian 12: nginx plus a few modules); `nginx` where a
  # release has no nginx-light.
  if apt-cache show nginx-light >/dev/null 2>&1; then need+=(nginx-light); else need+=(nginx); fi
fi
have wrk || need+=(wrk)
have hey || need+=(hey)

if [ "${#need[@]}" -eq 0 ]; then
  echo "benchmark packages: all present"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "missing benchmark packages: ${need[*]}" >&2
  echo "run as root (or: sudo apt-get install -y ${need[*]})" >&2
  exit 1
fi

echo "installing benchmark packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${need[@]}"
# The nginx package may start a default site on port 80 through its init script; the
# benchmark starts its own nginx (own config, free loopback port, stopped by PID) and
# leaves a service the package started alone.
