# syntax=docker/dockerfile:1
#
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
# Base image: a tag, so that `docker build --pull` picks up Debian and CPython security
# fixes. For reproducible builds pin the digest as well, e.g.
#   FROM python:3.11-slim-bookworm@sha256:<digest>
# (`docker buildx imagetools inspect python:3.11-slim-bookworm` prints it).

# ---------------------------------------------------------------- build: wheels only
FROM python:3.11-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Only what the package build reads (pyproject names README.md as the long description).
COPY pyproject.toml README.md ./
COPY proxy ./proxy

# Wheels for trustproxy and every dependency, with the `speed` extra (uvloop, httptools).
# All of them ship manylinux wheels for CPython 3.11, so no compiler is needed; versions
# are resolved from pyproject.toml's ranges at build time.
RUN pip wheel --wheel-dir /wheels ".[speed]"

# ---------------------------------------------------------------- runtime
FROM python:3.11-slim-bookworm

LABEL org.opencontainers.image.title="trustproxy" \
      org.opencontainers.image.description="OCI registry pull proxy that serves only signed images (Notary v1)" \
      org.opencontainers.image.licenses="Apache-2.0"

# No .pyc writes at runtime (the root filesystem may be read-only: pip compiled the
# bytecode at install time), unbuffered logs, no pip chatter.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Install from the build stage's wheels only (--no-index: nothing else is fetched); the
# wheels are bind-mounted, so they never become a layer of this image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels "trustproxy[speed]==0.1.0" \
    && groupadd --system --gid 10001 trustproxy \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin trustproxy

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
