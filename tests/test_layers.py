"""The package's layers: imports point one way between packages, and the library pulls in neither matplotlib nor
benchmark code."""

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src" / "distformer"
# Sub-packages and top-level modules each count as one unit; the package's __init__ (the public face) is left out.
ORDER = ["distributions", "nn", "training", "launch", "cli"]  # DESIGN: each may import only those before it


def _unit(path: Path) -> str:
    parts = path.relative_to(ROOT).parts
    return parts[0] if len(parts) > 1 else parts[0].removesuffix(".py")


def _imports() -> dict[tuple[str, str], set[str]]:
    """(importing unit, imported unit) -> files, for every relative import between units, lazy ones included."""
    edges = defaultdict(set)
    for path in ROOT.rglob("*.py"):
        module = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        package = module[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package[:len(package) - (node.level - 1)] + (node.module.split(".") if node.module else [])
                target = base[1] if len(base) > 1 else "__init__"
                if (ROOT / f"{target}.py").is_file() or (ROOT / target).is_dir():
                    source = _unit(path)
                    if source != target and "__init__" not in (source, target):
                        edges[(source, target)].add(path.name)
    return edges


def test_no_import_cycle_between_packages():
    edges = _imports()
    graph = defaultdict(set)
    for a, b in edges:
        graph[a].add(b)

    def reaches(start, goal, seen=()):
        return any(n == goal or (n not in seen and reaches(n, goal, seen + (n,))) for n in graph[start])

    cycles = sorted((a, b, sorted(edges[(a, b)])) for a, b in edges if reaches(b, a))
    assert not cycles, f"import cycles between packages (importer, imported, files): {cycles}"


def test_layers_import_only_downwards():
    edges = _imports()
    upward = [(a, b, sorted(files)) for (a, b), files in edges.items()
              if a in ORDER and b in ORDER and ORDER.index(b) > ORDER.index(a)]
    assert not upward, f"imports against the layer order {ORDER}: {upward}"
    for unit in ("problems", "filtering", "refinement", "diagnostics", "support"):
        assert (unit, "training") not in edges, f"{unit} imports training: {edges[(unit, 'training')]}"


def test_the_library_imports_neither_matplotlib_nor_benchmark_code():
    code = ("import sys, torch, distformer as dfm\n"
            "model = dfm.pretrained('linear-gaussian-1d')\n"
            "prior = dfm.GaussianMixture(torch.tensor([1.0]), torch.zeros(1, 1), scale_tril=torch.ones(1, 1, 1))\n"
            "model.posterior(prior, torch.zeros(3, 1))\n"
            "bad = [m for m in sys.modules if m.startswith(('matplotlib', 'distformer.bench', 'benchmarks'))]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)
