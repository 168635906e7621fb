"""Hardening tests: random graphs, fuzzed files, crash safety, memory, bad inputs, threads.

Every module sizes its work with :mod:`.profile`: a fast CI profile by default,
the long profile with ``CHAINRULE_LONG=1``. See ``docs/reliability.md``.
"""
