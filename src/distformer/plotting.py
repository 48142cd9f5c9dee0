"""matplotlib on demand: figures are for ``make demo`` and the benchmarks, so ``import distformer`` never imports
matplotlib and the package does not require it (extra ``plot``)."""

from __future__ import annotations


def pyplot():
    """``matplotlib.pyplot`` with the file-only ``Agg`` backend; a one-sentence ImportError where it is missing."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("Expected matplotlib for figures, but it is not installed; "
                          "pip install 'distformer[plot]'.") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
