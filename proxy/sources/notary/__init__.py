"""Notary v1 / Docker Content Trust as a trust source.

:mod:`.tuf` is the pure verification core (bytes in, verified facts or an exception out);
:mod:`.fetcher` reads metadata over HTTP; :mod:`.source` is the :class:`TrustSource` that
drives the walk and keeps state in a :class:`~proxy.sources.store.TrustStateStore`;
:mod:`.inspect_report` renders ``trustproxy trust inspect``.

Nothing is imported here on purpose: the shared interface (:mod:`proxy.sources.base`) and
this package's modules import each other's leaves, never this package's namespace.
"""
