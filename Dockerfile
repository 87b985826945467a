# trustproxy container image.
#
#   docker build -t trustproxy:0.1.0 .
#   docker run --rm --read-only -p 8443:8443 \
#     -v "$PWD/deploy:/etc/trustproxy:ro" trustproxy:0.1.0
#
# The image holds no config: mount a folder with trustproxy.yaml (and the policy file it
# names, relative to it) at /etc/trustproxy. The config must listen on 0.0.0.0:8443 (or
# set TRUSTPROXY_SERVER__LISTEN). See docs/deploy.md.
#
# No `# syntax=` line: the engine's built-in Dockerfile frontend (BuildKit) handles
# RUN --mount, and a syntax line would make every build fetch the frontend from Docker Hub.
#
# Base image: a tag, so that `docker build --pull` picks up Debian and CPython security
# fixes. For reproducible builds pin the digest as well, e.g.
#   --build-arg BASE_IMAGE=python:3.11-slim-bookworm@sha256:<digest>
# (`docker buildx imagetools inspect python:3.11-slim-bookworm` prints it). Any Debian
# bookworm image with python3 (3.11) and python3-venv works: `make test-image` builds on a
# debootstrap-made one, without Docker Hub.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- build: wheels only
FROM ${BASE_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Only what the package build reads (pyproject names README.md as the long description),
# and the lock (`make lock`): runtime.txt for what the image runs, dev.txt for the build
# backend (setuptools), both exact versions with hashes.
COPY pyproject.toml README.md ./
COPY requirements/runtime.txt requirements/dev.txt ./requirements/
COPY proxy ./proxy

# Wheels for every dependency exactly as locked (--require-hashes: a file on the index that
# changed fails the build), with the `speed` extra (uvloop, httptools); then trustproxy's
# own wheel, built with the locked setuptools (no build isolation: nothing unlocked is
# fetched). All ship manylinux wheels for CPython 3.11: no compiler. A venv, because a
# Debian base has no pip outside one.
RUN python3 -m venv /opt/pip \
    && awk '/^[a-z]/ { keep = ($0 ~ /^setuptools==/) } keep' \
       requirements/dev.txt > /tmp/build-backend.txt \
    && /opt/pip/bin/pip install --require-hashes --no-deps -r /tmp/build-backend.txt \
    && /opt/pip/bin/pip wheel --wheel-dir /wheels --require-hashes --no-deps \
       -r requirements/runtime.txt \
    && /opt/pip/bin/pip wheel --wheel-dir /wheels --no-deps --no-build-isolation . \
    && cp requirements/runtime.txt /wheels/runtime.txt

# ---------------------------------------------------------------- runtime
FROM ${BASE_IMAGE}

LABEL org.opencontainers.image.title="trustproxy" \
      org.opencontainers.image.description="OCI registry pull proxy that serves only signed images (Notary v1)" \
      org.opencontainers.image.licenses="Apache-2.0"

# No .pyc writes at runtime (the root filesystem may be read-only: pip compiled the
# bytecode at install time), unbuffered logs, no pip chatter.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/trustproxy/bin:$PATH

# Install from the build stage's wheels only (--no-index: nothing else is fetched), the
# dependencies checked against the lock's hashes once more; the wheels are bind-mounted,
# so they never become a layer of this image. Into a venv: the same on python:slim and on
# Debian's python3 (whose system site-packages pip must not touch).
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python3 -m venv /opt/trustproxy \
    && pip install --no-index --find-links=/wheels --require-hashes --no-deps \
       -r /wheels/runtime.txt \
    && pip install --no-index --find-links=/wheels --no-deps "trustproxy[speed]==0.1.0" \
    && pip check \
    && groupadd --system --gid 10001 trustproxy \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin trustproxy \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/trustproxy

# /var/lib/trustproxy is cache.state_dir, the trust state file the workers share (README
# "Workers"). No VOLUME (an anonymous volume per container piles up): with a read-only root,
# mount something writable there (--tmpfs, a volume, an emptyDir), as docs/deploy.md shows.

# Relative paths in the config resolve against the config file's folder, not this one;
# it is only where the process starts.
WORKDIR /etc/trustproxy

# Numeric, so that Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
USER 10001:10001

EXPOSE 8443

# GET /healthz on the local listener. Python, not curl (slim has no curl). Plain HTTP by
# default; with TLS set HEALTHCHECK_URL=https://127.0.0.1:8443/healthz (the certificate
# is not verified: it is the process checking itself). With mTLS (client_ca_file) the
# handshake needs a client certificate: disable this check (--no-healthcheck) and rely
# on the orchestrator's probes. The variable deliberately has no TRUSTPROXY_ prefix:
# TRUSTPROXY_* variables are config overrides and an unknown key is an error.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, ssl, sys, urllib.request as r; url = os.environ.get('HEALTHCHECK_URL', 'http://127.0.0.1:8443/healthz'); sys.exit(0 if r.urlopen(url, timeout=4, context=ssl._create_unverified_context()).status == 200 else 1)"]

# uvicorn finishes in-flight requests on SIGTERM (up to 10 s); SIGHUP reloads config and
# policy without dropping connections (docker kill --signal HUP <container>).
STOPSIGNAL SIGTERM

ENTRYPOINT ["trustproxy"]
CMD ["serve", "--config", "/etc/trustproxy/trustproxy.yaml"]
