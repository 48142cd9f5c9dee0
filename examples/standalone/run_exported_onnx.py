"""Run an exported distformer update with ONNX Runtime and numpy alone: neither torch nor distformer is imported.

Usage: ``python examples/standalone/run_exported_onnx.py UPDATE.onnx``, for a graph written by
``model.export("update.onnx", format="onnx")`` (extra ``onnx``); its ``.json`` contract beside it names the inputs.
``examples/export_for_realtime.py`` writes it and runs this.
"""

import json
import sys
import time

import numpy as np
import onnxruntime

path = sys.argv[1]
contract = json.load(open(path + ".json"))
K, D, N = contract["num_components"], contract["dim"], contract["max_observations"]
options = onnxruntime.SessionOptions()
options.intra_op_num_threads = 1  # one update at a time: a single thread has the lowest latency
session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])

# a 4-component prior and 7 readings of z = x + N(0, I), padded to N with a mask
rng = np.random.default_rng(0)
log_weights = np.log(np.array([[0.4, 0.3, 0.2, 0.1]], dtype=np.float32))
loc = np.array([[[0.0, 0.0], [3.0, 1.0], [-2.0, 1.0], [1.0, -2.0]]], dtype=np.float32)
scale_tril = np.broadcast_to(np.eye(D, dtype=np.float32), (1, K, D, D)).copy()
z = np.zeros((1, N, D), dtype=np.float32)
z[0, :7] = np.array([2.5, 1.0]) + rng.standard_normal((7, D))
mask = np.zeros((1, N), dtype=bool)
mask[0, :7] = True
feeds = dict(zip(contract["input_names"], (log_weights, loc, scale_tril, z, mask)))

post_log_w, post_loc, post_tril = session.run(None, feeds)
times = []
for _ in range(200):
    start = time.perf_counter()
    session.run(None, feeds)
    times.append(time.perf_counter() - start)
weights = np.exp(post_log_w[0])
print("posterior weights:", [round(float(w), 3) for w in weights])
print("posterior mean:", [round(float(m), 3) for m in weights @ post_loc[0]])
print(f"onnx (onnxruntime {onnxruntime.__version__}): {1e3 * sorted(times)[100]:.2f} ms per update (median of 200, "
      f"1 thread); torch imported: {'torch' in sys.modules}, distformer imported: {'distformer' in sys.modules}")
assert "distformer" not in sys.modules and "torch" not in sys.modules
