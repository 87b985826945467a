"""trustproxy: content trust enforced at the registry, for every client."""

import sys

# httpx imports its command-line client (rich, click, pygments: about 5 MiB per process)
# whenever those happen to be installed, and sigstore-python brings them. The proxy never
# runs that client; httpx's own fallback for "not installed" is what a None entry gives.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
