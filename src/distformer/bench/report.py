"""Formatting shared by the benchmark reports."""

from __future__ import annotations


def fmt_estimate(e: dict | None, digits: int = 4) -> str:
    """``mean ± half-width`` of a 95% normal interval from an ``Estimate.as_dict()``; ``–`` when missing."""
    return "–" if e is None else f"{e['mean']:.{digits}f} ± {1.96 * e['stderr']:.{digits}f}"


def stage(bench: str, message: str) -> None:
    """One progress line on stderr (``[bench] message``) for the long stages of a benchmark."""
    import sys

    print(f"[{bench}] {message}", file=sys.stderr, flush=True)
