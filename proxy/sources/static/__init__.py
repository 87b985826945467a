"""``type: static``: a file of pins (``repository:tag -> digest``, and digests allowed by
digest) as a trust source: for tests, break-glass pins and trust snapshots.

:mod:`.pins` parses the file (pure); :mod:`.source` answers from it; :mod:`.entry` is the
registry entry (settings section, policy rule part, builder).
"""
