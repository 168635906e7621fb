"""chainrule's benchmark suite: ``python -m bench`` from the repository root.

Nothing here imports NumPy at import time: thread counts must be fixed in the
environment before NumPy (and its BLAS) is first loaded; see ``_env.py``.
"""
