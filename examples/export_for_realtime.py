"""Export the update for a real-time system, then run it in a separate Python process that never imports distformer.

Run: ``python examples/export_for_realtime.py``
"""

import subprocess
import sys
import tempfile
from pathlib import Path

import distformer as dfm

model = dfm.pretrained("linear-gaussian-2d")
with tempfile.TemporaryDirectory() as tmp:
    path = model.export(Path(tmp) / "update.pt", num_components=4, max_observations=20)
    print("exported", path.name, "and", path.name + ".json (the input contract)")
    runner = Path(__file__).parent / "standalone" / "run_exported.py"
    subprocess.run([sys.executable, str(runner), str(path)], check=True)
