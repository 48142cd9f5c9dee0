"""The benchmark harness: every benchmark is a declaration over it, and it writes what it promises."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks.runners import MODULES, experiment
from benchmarks.runners.harness import Experiment, Table, drop_keys, run_experiment


def test_every_benchmark_is_a_declaration_named_as_registered():
    for name in MODULES:
        declared = experiment(name)
        assert isinstance(declared, Experiment) and declared.name == name
        assert set(declared.sizes) == {"quick", "full"}
    with pytest.raises(ValueError, match="Expected a benchmark name among"):
        experiment("no-such-benchmark")


def test_table_renders_one_row_per_item_and_one_cell_per_column():
    table = Table([{"m": "a", "kl": 0.5}, {"m": "b", "kl": 0.25}], (("method", lambda r: r["m"]),
                                                                     ("KL", lambda r: f"{r['kl']:.2f}")))
    assert table.lines() == ["| method | KL |", "|---|---|", "| a | 0.50 |", "| b | 0.25 |"]


def test_run_experiment_seeds_sizes_and_writes_report_json_and_figure(tmp_path):
    """The generator handed to ``evaluate`` is seeded with the declared seed, the quick size is used under
    ``quick``, and the report carries the exact command; the payload function decides what goes to the JSON."""
    seen = {}

    def evaluate(size, generator):
        seen["size"] = size
        return {"draw": float(torch.rand(1, generator=generator)), "bulky": [0] * 3}

    def figure(results, path):
        path.write_bytes(b"png")

    declared = Experiment(
        name="toy", title="a toy", seed=7, sizes={"quick": {"n": 1}, "full": {"n": 100}}, evaluate=evaluate,
        protocol=lambda size, r: f"{size['n']} problem(s).",
        body=lambda r, size: [Table([r], (("draw", lambda x: f"{x['draw']:.6f}"),))], figure=figure,
        caption="toy figure", payload=drop_keys("bulky"))
    md = run_experiment(declared, quick=True, out_dir=tmp_path)
    text = md.read_text()
    expected = float(torch.rand(1, generator=torch.Generator().manual_seed(7)))
    assert seen["size"] == {"n": 1}
    assert text.startswith("# toy: a toy\n") and "Command: `distformer bench toy --quick`" in text
    assert "1 problem(s)." in text and f"| {expected:.6f} |" in text and "![toy figure](toy.png)" in text
    data = json.loads((tmp_path / "toy.json").read_text())
    assert data["command"] == "distformer bench toy --quick" and data["size"] == {"n": 1}
    assert data["draw"] == expected and "bulky" not in data and "machine" in data
    assert (tmp_path / "toy.png").read_bytes() == b"png"


def test_run_experiment_leaves_out_the_figure_when_there_is_nothing_to_draw(tmp_path):
    declared = Experiment(name="toy", title="a toy", seed=0, sizes={"quick": {}, "full": {}},
                          evaluate=lambda size, g: {"figure": None}, protocol=lambda size, r: "",
                          body=lambda r, size: ["nothing"], figure=lambda r, path: path.write_bytes(b"x"))
    text = run_experiment(declared, out_dir=tmp_path).read_text()
    assert "![" not in text and not (tmp_path / "toy.png").exists()
    assert "Command: `distformer bench toy`" in text
