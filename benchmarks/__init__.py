"""Benchmark results (``*.md``, ``*.png``) and, in ``runners/``, the code that measures them."""
