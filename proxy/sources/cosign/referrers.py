"""Finding cosign 3 bundles among an image's referrers (pure parsing of registry answers).

cosign 3 pushes each bundle as an OCI image manifest with ``artifactType`` the bundle media
type, an empty config, one layer (the bundle) and ``subject`` the image (cosign
``WriteAttestationNewBundleFormat``). A registry with the referrers API lists them at
``/v2/<name>/referrers/<digest>``; without it (Debian's registry 2.8.2), go-containerregistry
keeps the tag-schema index ``sha256-<hex>`` shared by every referrer type (OCI
distribution-spec "referrers tag schema"). Both answers are image indexes whose
descriptors carry ``artifactType``: we keep the bundle ones, then read each referrer
manifest to the bundle layer, checking that its subject is the image.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from proxy.sources.cosign.bundle import BUNDLE_MEDIA_TYPES, MAX_BUNDLE_BYTES
from proxy.sources.cosign.errors import CosignFormatError, CosignLimitError, CosignMismatchError
from proxy.sources.cosign.strict_json import loads_strict

__all__ = [
    "MAX_REFERRERS",
    "BundleRef",
    "bundle_layer",
    "bundle_referrers",
    "referrers_tag",
]

#: Bundle referrers read per image (each costs two fetches).
MAX_REFERRERS: Final = 32
MAX_INDEX_BYTES: Final = 4 * 1024 * 1024
MAX_REFERRER_MANIFEST_BYTES: Final = 64 * 1024
_INDEX_TYPES: Final = frozenset({"application/vnd.oci.image.index.v1+json"})
_MANIFEST_TYPE: Final = "application/vnd.oci.image.manifest.v1+json"


@dataclass(frozen=True)
class BundleRef:
    """A descriptor to fetch: a referrer manifest, or the bundle blob inside one."""

    digest: str
    size: int
    media_type: str


def referrers_tag(digest: str) -> str:
    """The referrers tag-schema tag of ``digest``: ``sha256-<hex>``."""
    algorithm, _, hex_part = digest.partition(":")
    return f"{algorithm}-{hex_part}"


def _descriptor(node: Any, field: str) -> BundleRef:
    if not isinstance(node, Mapping):
        raise CosignFormatError("descriptor must be an object", field=field)
    digest, size, media_type = node.get("digest"), node.get("size"), node.get("mediaType")
    if not isinstance(digest, str) or not digest.startswith("sha256:") or len(digest) != 71:
        raise CosignFormatError("digest must be sha256:<64 hex>", field=f"{field}.digest")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise CosignFormatError("size must be a non-negative integer", field=f"{field}.size")
    return BundleRef(digest, size, str(media_type or ""))


def bundle_referrers(index: bytes, *, max_referrers: int = MAX_REFERRERS) -> list[BundleRef]:
    """The bundle referrer manifests listed in a referrers response or tag-schema index.

    Raises:
        CosignFormatError: not an image index.
        CosignLimitError: more bundle referrers than ``max_referrers``.
    """
    node = loads_strict(index, what="referrers index", limit=MAX_INDEX_BYTES)
    if not isinstance(node, Mapping) or node.get("schemaVersion") != 2:
        raise CosignFormatError("not an image index", field="referrers")
    media_type = node.get("mediaType")
    if media_type is not None and media_type not in _INDEX_TYPES:
        raise CosignFormatError("not an OCI image index", field="referrers.mediaType")
    manifests = node.get("manifests", [])
    if not isinstance(manifests, list):
        raise CosignFormatError("manifests must be a list", field="referrers.manifests")
    found = []
    for i, entry in enumerate(manifests):
        if isinstance(entry, Mapping) and entry.get("artifactType") in BUNDLE_MEDIA_TYPES:
            found.append(_descriptor(entry, f"referrers.manifests[{i}]"))
            if len(found) > max_referrers:
                raise CosignLimitError(
                    f"more than {max_referrers} bundle referrers", field="referrers"
                )
    return found


def bundle_layer(manifest: bytes, *, digest: str) -> BundleRef:
    """The bundle layer of a referrer manifest whose subject is ``digest``.

    Raises:
        CosignFormatError: not a bundle referrer manifest (type, layers, sizes).
        CosignMismatchError: its subject is another image.
    """
    node = loads_strict(manifest, what="referrer manifest", limit=MAX_REFERRER_MANIFEST_BYTES)
    if not isinstance(node, Mapping) or node.get("schemaVersion") != 2:
        raise CosignFormatError("not an image manifest", field="referrer")
    if node.get("mediaType", _MANIFEST_TYPE) != _MANIFEST_TYPE:
        raise CosignFormatError("not an OCI image manifest", field="referrer.mediaType")
    if node.get("artifactType") not in BUNDLE_MEDIA_TYPES:
        raise CosignFormatError("not a Sigstore bundle referrer", field="referrer.artifactType")
    subject = _descriptor(node.get("subject"), "referrer.subject")
    if subject.digest != digest:
        raise CosignMismatchError(f"referrer is for {subject.digest}, not {digest}")
    layers = node.get("layers")
    if not isinstance(layers, list) or len(layers) != 1:
        raise CosignFormatError("a bundle referrer has exactly one layer", field="referrer")
    layer = _descriptor(layers[0], "referrer.layers[0]")
    if layer.media_type not in BUNDLE_MEDIA_TYPES:
        raise CosignFormatError("layer is not a Sigstore bundle", field="referrer.layers[0]")
    if layer.size > MAX_BUNDLE_BYTES:
        raise CosignLimitError(
            f"bundle of {layer.size} bytes, limit {MAX_BUNDLE_BYTES}", field="referrer.layers[0]"
        )
    return layer
