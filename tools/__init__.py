"""Harnesses that drive a running halviz app from outside: load and soak (``python -m tools.stress``),
hostile-user scenarios (``tools.hostile``, used by the stress command and the tests), the app bench
and the memory-budget bench. Not part of the installed package."""
