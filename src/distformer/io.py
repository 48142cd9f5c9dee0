"""Files that a crash cannot half-write: every write goes to a temporary name in the same folder, is flushed to
disk and moved into place with ``os.replace``, so readers see either the old file or the whole new one. Shared by
model files (``nn/serialization.py``), training checkpoints (``training/checkpoint.py``), exports and model
cards."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def contiguous_cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of ``state``, detached, on the CPU and contiguous, as safetensors writes them."""
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}
