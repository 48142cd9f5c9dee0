"""The one harness every benchmark is declared over.

A benchmark is an :class:`Experiment`: what it measures (``evaluate(size, generator) -> results``, at a quick or a
full ``size``), how it is read (``body(results, size)``: markdown lines and :class:`Table` declarations), and what
it draws (``figure(results, path)``). :func:`run_experiment` does everything else the same way for all of them:
one ``torch.Generator`` seeded with the experiment's seed, the header (title, the exact command, the machine and
thread count, the protocol paragraph), the tables, the figure link, the JSON payload and the figure, each file
written atomically so that an interrupted run leaves the previous report whole.

The shared measuring blocks (batched timing, SVI, NUTS and PFN baselines) are in :mod:`.methods`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

from .report import write_report

Cell = Callable[[Any], str]


@dataclass(frozen=True)
class Table:
    """A markdown table: one row per item of ``rows``, each column a header and a function of the item.

    ``Table(rows, (("method", lambda r: r["name"]), ("KL", lambda r: f"{r['kl']:.4f}")))``.
    """

    rows: Iterable[Any]
    columns: Sequence[tuple[str, Cell]]

    def lines(self) -> list[str]:
        headers = [h for h, _ in self.columns]
        out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        out += ["| " + " | ".join(cell(row) for _, cell in self.columns) + " |" for row in self.rows]
        return out


def render(body: Sequence[str | Table]) -> list[str]:
    """Markdown lines from a body of lines and tables, in order."""
    lines: list[str] = []
    for part in body:
        lines += part.lines() if isinstance(part, Table) else [part]
    return lines


def drop_keys(*keys: str) -> Callable[[Any], Any]:
    """A payload function that drops ``keys`` (bulky per-problem arrays, figure data) from a results dict or from
    each dict of a list of them."""
    def payload(results):
        if isinstance(results, list):
            return [{k: v for k, v in r.items() if k not in keys} for r in results]
        return {k: v for k, v in results.items() if k not in keys}
    return payload


def thread_count(n: int | None = None) -> str:
    """``"1 thread"`` or ``"N threads"`` (torch's current count by default)."""
    n = torch.get_num_threads() if n is None else n
    return f"{n} thread" + ("" if n == 1 else "s")


@dataclass(frozen=True)
class Experiment:
    """One benchmark, as a declaration.

    * ``name``: the report's file stem and the CLI name (``distformer bench NAME``);
    * ``title``: the report's heading, after ``NAME: ``;
    * ``seed``: seeds the one generator handed to ``evaluate``;
    * ``sizes``: ``{"quick": {...}, "full": {...}}``, problem counts, draws, steps, repeats;
    * ``evaluate(size, generator)``: runs every method and returns JSON-able results;
    * ``protocol(size, results)``: the paragraph that says what was measured and how (problems, metric, intervals,
      timing);
    * ``body(results, size)``: the report after the header, lines and :class:`Table` s;
    * ``figure(results, path)``: draws ``NAME.png`` (``None``: no figure); ``caption`` is its alt text;
    * ``payload(results)``: what goes to ``NAME.json`` beside the command (default: the results);
    * ``machine_note``: appended to the machine line (for example the thread counts used).
    """

    name: str
    title: str
    seed: int
    sizes: Mapping[str, Mapping[str, Any]]
    evaluate: Callable[[dict, torch.Generator], Any]
    protocol: Callable[[dict, Any], str]
    body: Callable[[Any, dict], Sequence[str | Table]]
    figure: Callable[[Any, Path], None] | None = None
    caption: str = ""
    payload: Callable[[Any], Any] = field(default=lambda results: results)
    machine_note: Callable[[Any], str] = field(default=lambda results: thread_count())

    def command(self, quick: bool) -> str:
        return f"distformer bench {self.name}" + (" --quick" if quick else "")

    def header(self, quick: bool, size: dict, results: Any) -> list[str]:
        from distformer.timing import machine

        protocol = self.protocol(size, results)
        return [f"# {self.name}: {self.title}", "", f"Command: `{self.command(quick)}`  ",
                f"Machine: {machine()}, {self.machine_note(results)}  ", *([protocol] if protocol else []), ""]


def run_experiment(experiment: Experiment, quick: bool = False, out_dir: Path = Path("benchmarks")) -> Path:
    """Run ``experiment`` at its quick or full size and write ``out_dir/NAME.{md,json,png}``; returns the
    markdown path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    size = dict(experiment.sizes["quick" if quick else "full"])
    results = experiment.evaluate(size, torch.Generator().manual_seed(experiment.seed))
    lines = experiment.header(quick, size, results) + render(experiment.body(results, size))
    figure = experiment.figure is not None and _draws(experiment, results)
    if figure:
        lines += ["", f"![{experiment.caption}]({experiment.name}.png)"]
    payload = experiment.payload(results)
    from distformer.timing import machine

    payload = {"command": experiment.command(quick), "machine": machine(), "size": size,
               **(payload if isinstance(payload, dict) else {"results": payload})}
    md = write_report(out_dir, experiment.name, lines, payload)
    if figure:
        experiment.figure(results, out_dir / f"{experiment.name}.png")
    return md


def _draws(experiment: Experiment, results: Any) -> bool:
    """Whether the experiment has something to draw (a results dict may say ``{"figure": None}``)."""
    return not (isinstance(results, dict) and "figure" in results and results["figure"] is None)
