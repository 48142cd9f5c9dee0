"""Run an exported distformer update with torch alone: no distformer import.

Usage: ``python examples/standalone/run_exported.py UPDATE``, where UPDATE is a TorchScript program
(``model.export("update.pt")``) or an AOTInductor package (``model.export("update.pt2", format="aoti")``); its
``.json`` contract beside it says which. ``examples/export_for_realtime.py`` writes both and runs this.
"""

import json
import sys
import time
import warnings

import torch

path = sys.argv[1]
contract = json.load(open(path + ".json"))
K, D, N = contract["num_components"], contract["dim"], contract["max_observations"]
if contract["format"] == "aoti":
    package = torch._inductor.aoti_load_package(path)

    def update(*inputs):  # loader.run skips the package's per-call parsing of its input specification
        return package.loader.run([t.contiguous() for t in inputs])  # it reads inputs as contiguous, unchecked
else:
    with warnings.catch_warnings():  # torch 2.13 marks TorchScript deprecated (it still loads and runs)
        warnings.simplefilter("ignore", DeprecationWarning)
        update = torch.jit.load(path)

# a 4-component prior and 7 readings of z = x + N(0, I), padded to N with a mask
log_weights = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]]))
loc = torch.tensor([[[0.0, 0.0], [3.0, 1.0], [-2.0, 1.0], [1.0, -2.0]]])
scale_tril = torch.eye(D).expand(1, K, D, D).contiguous()
z = torch.zeros(1, N, D)
z[0, :7] = torch.tensor([2.5, 1.0]) + torch.randn(7, D, generator=torch.Generator().manual_seed(0))
mask = torch.zeros(1, N, dtype=torch.bool)
mask[0, :7] = True

with torch.inference_mode():
    post_log_w, post_loc, post_tril = update(log_weights, loc, scale_tril, z, mask)
    times = []
    for _ in range(200):
        start = time.perf_counter()
        update(log_weights, loc, scale_tril, z, mask)
        times.append(time.perf_counter() - start)
mean = (post_log_w.exp().unsqueeze(-1) * post_loc).sum(-2)
print("posterior weights:", [round(w, 3) for w in post_log_w.exp()[0].tolist()])
print("posterior mean:", [round(m, 3) for m in mean[0].tolist()])
print(f"{contract['format']}: {1e3 * sorted(times)[100]:.2f} ms per update (median of 200, "
      f"{torch.get_num_threads()} threads); distformer imported: {'distformer' in sys.modules}")
assert "distformer" not in sys.modules
