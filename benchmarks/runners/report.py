"""Formatting and writing shared by the benchmark reports."""

from __future__ import annotations

import json
from pathlib import Path


def write_report(out_dir: Path, name: str, lines: list[str], payload) -> Path:
    """Write ``out_dir/NAME.md`` (the lines) and ``out_dir/NAME.json`` (the payload, JSON; values it cannot encode
    as their ``str``), each atomically so that an interrupted run leaves the previous report whole; print the
    report and return the markdown path."""
    from distformer.io import atomic_write

    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / f"{name}.md"
    atomic_write(md, ("\n".join(lines) + "\n").encode())
    atomic_write(out_dir / f"{name}.json", (json.dumps(payload, indent=2, default=str) + "\n").encode())
    print("\n".join(lines))
    return md


def fmt_estimate(e: dict | None, digits: int = 4) -> str:
    """``mean ± half-width`` of a 95% normal interval from an ``Estimate.as_dict()``; ``–`` when missing."""
    return "–" if e is None else f"{e['mean']:.{digits}f} ± {1.96 * e['stderr']:.{digits}f}"


def stage(bench: str, message: str) -> None:
    """One progress line on stderr (``[bench] message``) for the long stages of a benchmark."""
    import sys

    print(f"[{bench}] {message}", file=sys.stderr, flush=True)
