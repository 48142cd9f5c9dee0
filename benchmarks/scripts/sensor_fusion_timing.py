"""Repeat timing of the sensor-fusion model filter against the 20,000-particle filter, interleaved.

`distformer bench sensor-fusion` times each filter once; on a machine whose speed drifts, this script checks the
ratio that decides the particle-filter match. Same series as the bench (100 series of 50 steps, its seed), two
threads, the model filter with `check=False`; four interleaved runs of each, medians.

    .venv/bin/python benchmarks/scripts/sensor_fusion_timing.py > benchmarks/sensor-fusion-timing.txt
"""

import statistics
import time

import torch

import distformer
from distformer.bench.sensor_fusion import SEED, particle_filter
from distformer.bench.timing import machine
from distformer.filtering import Filter, LinearGaussianMotion
from distformer.problems.sensor_fusion import SensorFusion

PARTICLES, REPEATS, STEPS = 20_000, 4, 50


def main() -> None:
    torch.set_num_threads(2)
    problem = SensorFusion()
    data = problem.simulate_series(100, STEPS, torch.Generator().manual_seed(SEED))
    model_filter = Filter(distformer.pretrained("sensor-fusion"),
                          LinearGaussianMotion(problem.A.float(), None, problem.Q.float()), check=False)
    pf = particle_filter(problem, PARTICLES)
    prior, obs = data.prior.to(torch.float32), data.observations.to(torch.float32)
    model_ms, pf_ms = [], []
    print(f"# {machine()}, 2 threads; ms per step for the batch of 100 series")
    with torch.inference_mode():
        for _ in range(REPEATS):
            start = time.perf_counter()
            model_filter.run(prior, obs)
            model_ms.append((time.perf_counter() - start) / STEPS * 1e3)
            start = time.perf_counter()
            pf.run(prior, obs, generator=torch.Generator().manual_seed(SEED + 1))
            pf_ms.append((time.perf_counter() - start) / STEPS * 1e3)
            print(f"model {model_ms[-1]:.2f} ms, particle filter ({PARTICLES:,}) {pf_ms[-1]:.1f} ms, "
                  f"ratio {pf_ms[-1] / model_ms[-1]:.1f}")
    m, p = statistics.median(model_ms), statistics.median(pf_ms)
    print(f"medians: model {m:.2f} ms, particle filter {p:.1f} ms, ratio {p / m:.1f}")


if __name__ == "__main__":
    main()
