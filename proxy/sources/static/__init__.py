"""``type: static``: a file of pins (``repository:tag -> digest``, and digests allowed by
digest), or a signed trust snapshot, as a trust source: for tests, break-glass pins, and
life after a trust server is gone.

:mod:`.pins` parses a pins file and :mod:`.snapshot` a signed snapshot (pure, with the
operator keys of :mod:`.snapshot_keys`; :mod:`.snapshot_load` reads them, bounded);
:mod:`.source` answers from either; :mod:`.entry` is the registry entry (settings section,
policy rule part, builder).
"""
