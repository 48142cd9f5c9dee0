"""sbibm 1.1.0's published files, read out of its wheel without installing the package.

The wheel (a zip, 18.6 MB) is fetched once from the package registry by ``make sbibm-files`` (``pip download
--no-deps sbibm==1.1.0``) into ``.cache/sbibm/``; ``SBIBM_WHEEL`` may point to another copy. For task ``T`` and
observation ``k`` in 1..10 it holds ``sbibm/tasks/T/files/num_observation_k/`` with ``observation.csv``,
``true_parameters.csv`` and ``reference_posterior_samples.csv.bz2`` (10,000 samples).
"""

from __future__ import annotations

import bz2
import io
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

CHECKOUT = Path(__file__).resolve().parents[2]
WHEEL = "sbibm-1.1.0-py2.py3-none-any.whl"


def wheel_path() -> Path:
    """Where the sbibm wheel is: ``$SBIBM_WHEEL``, else ``.cache/sbibm/`` in the checkout."""
    path = Path(os.environ.get("SBIBM_WHEEL", CHECKOUT / ".cache" / "sbibm" / WHEEL))
    if not path.is_file():
        raise FileNotFoundError(f"Expected sbibm's wheel at {path} (run `make sbibm-files`, which downloads it from "
                                "the package registry, or set SBIBM_WHEEL), but it is missing.")
    return path


def _csv(archive: zipfile.ZipFile, name: str) -> torch.Tensor:
    raw = archive.read(name)
    if name.endswith(".bz2"):
        raw = bz2.decompress(raw)
    return torch.from_numpy(np.loadtxt(io.StringIO(raw.decode()), delimiter=",", skiprows=1, ndmin=2))


def files(task: str, observation: int) -> dict[str, torch.Tensor]:
    """``observation`` ``(1, E)``, ``true_parameters`` ``(1, D)`` and ``reference_samples`` ``(10000, D)``
    (float64) of sbibm's observation number ``observation`` (1..10) of ``task``."""
    if not 1 <= observation <= 10:
        raise ValueError(f"Expected an observation number in 1..10, but got {observation!r}.")
    folder = f"sbibm/tasks/{task}/files/num_observation_{observation}/"
    with zipfile.ZipFile(wheel_path()) as archive:
        if folder + "observation.csv" not in archive.namelist():
            raise ValueError(f"Expected a task of sbibm 1.1.0, but {task!r} has no files in the wheel.")
        return {"observation": _csv(archive, folder + "observation.csv"),
                "true_parameters": _csv(archive, folder + "true_parameters.csv"),
                "reference_samples": _csv(archive, folder + "reference_posterior_samples.csv.bz2")}
