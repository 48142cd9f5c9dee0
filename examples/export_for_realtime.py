"""Export the update for a real-time system, then run it in a separate Python process that never imports distformer.

Three formats: a TorchScript program (no compiler needed); an AOTInductor package compiled ahead of time (the
fastest batch-1 update; exporting it takes about a minute and needs a C++ compiler, running it does not); and an
ONNX graph run by ONNX Runtime without torch (extra ``onnx``: ``pip install 'distformer[onnx]'``).

Run: ``python examples/export_for_realtime.py``
"""

import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import distformer as dfm
from distformer.nn.export import cpp_compiler

model = dfm.pretrained("linear-gaussian-2d")
standalone = Path(__file__).parent / "standalone"
formats = {"torchscript": "update.pt"}
if cpp_compiler():
    formats["aoti"] = "update.pt2"
else:
    print("no C++ compiler on PATH: skipping format='aoti'")
if all(importlib.util.find_spec(name) for name in ("onnx", "onnxscript", "onnxruntime")):
    formats["onnx"] = "update.onnx"
else:
    print("onnx, onnxscript or onnxruntime not installed: skipping format='onnx'")
with tempfile.TemporaryDirectory() as tmp:
    for format, name in formats.items():
        print(f"exporting format={format!r} ...", flush=True)
        # autotune=False keeps this example to about a minute; the default (True) tunes each matrix product for
        # about 2 minutes more and gives a faster update (benchmarks/speed.md measures it)
        path = model.export(Path(tmp) / name, format=format, num_components=4, max_observations=20, autotune=False)
        print("exported", path.name, "and", path.name + ".json (the input contract)", flush=True)
        runner = standalone / ("run_exported_onnx.py" if format == "onnx" else "run_exported.py")
        subprocess.run([sys.executable, str(runner), str(path)], check=True)
