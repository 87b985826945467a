#!/usr/bin/env bash
# A Debian bookworm root filesystem with python3 and python3-venv, as a tar for
# `docker import`: the offline stand-in for python:3.11-slim-bookworm (no Docker Hub needed;
# only Debian's package mirror). Cached: a second run prints the path at once.
#   scripts/base-image-tarball.sh            make it if needed, print its path
#   scripts/base-image-tarball.sh --cached   print its path if it is cached, else exit 1
# The local CAs of this host (/usr/local/share/ca-certificates, e.g. a TLS-inspecting egress
# proxy's) are trusted in the base too, by the system bundle and by pip (/etc/pip.conf), so
# that the image build reaches PyPI from where this host does; they are part of the cache key.
# TRUSTPROXY_CACHE_DIR overrides the cache folder; DEBIAN_MIRROR the package mirror.
set -euo pipefail

cache="${TRUSTPROXY_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/trustproxy}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
local_cas=()
if [ -d /usr/local/share/ca-certificates ]; then
  while IFS= read -r -d '' f; do local_cas+=("$f"); done \
    < <(find /usr/local/share/ca-certificates -name '*.crt' -type f -print0 | sort -z)
fi
key="none"
if [ "${#local_cas[@]}" -gt 0 ]; then
  key="$(cat "${local_cas[@]}" | sha256sum | cut -c1-12)"
fi
tarball="$cache/debian-bookworm-python3-ca-$key.tar"

if [ -s "$tarball" ]; then
  echo "$tarball"
  exit 0
fi
if [ "${1:-}" = "--cached" ]; then
  exit 1
fi

command -v debootstrap >/dev/null 2>&1 || bash "$(dirname "$0")/install-client-deps.sh" debootstrap >&2
mkdir -p "$cache"
root="$(mktemp -d "$cache/rootfs.XXXXXX")"
trap 'rm -rf "$root"' EXIT
echo "debootstrap bookworm (python3, python3-venv) into $root ..." >&2
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  bookworm "$root" "$mirror" >&2
if [ "${#local_cas[@]}" -gt 0 ]; then
  mkdir -p "$root/usr/local/share/ca-certificates"
  cp "${local_cas[@]}" "$root/usr/local/share/ca-certificates/"
  cat "${local_cas[@]}" >> "$root/etc/ssl/certs/ca-certificates.crt"
  # pip uses its own CA bundle unless told otherwise.
  printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$root/etc/pip.conf"
fi
# Nothing of the build host's apt state or caches in the image.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
# mktemp made the folder 0700; as the image's / it would lock out every non-root user.
chmod 0755 "$root"
tar --numeric-owner -C "$root" -cf "$tarball.partial" .
mv "$tarball.partial" "$tarball"
echo "$tarball"
