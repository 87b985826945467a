"""Real container clients started by the tests, each with its own roots and socket."""
