"""Hardening runs: faults under load (``faults.py``), the soak (``soak.py``) and the
report ``docs/hardening.md`` (``report.py``); ``python -m loadtest.hardening``.

The fast variant of the faults run is ``tests/hardening/test_faults_quick.py`` (``make
test``); the attack tests in ``tests/hardening`` record their attempts with
``testbed.attempts``, and the report shows them next to these runs.
"""
