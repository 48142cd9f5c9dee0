"""Write the table of 8-component mixture fits to the standardised log of an inverse-gamma variable, for 181 values
of alpha log-spaced on [0.05, 10^4] (``distformer/distributions/log_inverse_gamma.py``; about 16 min on one thread).

Run: ``python scripts/fit_log_inverse_gamma.py [OUT]`` (default: the shipped table's path).
"""

import json
import math
import sys
import time

import torch

from distformer.distributions.log_inverse_gamma import TABLE_FILE, build_table
from distformer.io import atomic_write

torch.set_num_threads(1)
out = sys.argv[1] if len(sys.argv) > 1 else TABLE_FILE
start = time.perf_counter()


def progress(i: int, alpha: float, kl: float) -> None:
    if i % 20 == 0:
        print(f"alpha {alpha:9.4g}: KL {kl:.2e}  ({time.perf_counter() - start:.0f} s)", flush=True)


table = build_table(torch.logspace(math.log10(0.05), 4.0, 181, dtype=torch.float64), components=8, progress=progress)
table["seconds"] = round(time.perf_counter() - start, 1)
atomic_write(out, json.dumps(table).encode())
print(f"wrote {out}: largest KL {max(table['kl']):.2e}, {table['seconds']:.0f} s")
