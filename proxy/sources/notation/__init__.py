"""Notation (Notary Project v2) trust source: pure verification core (docstring below)."""
