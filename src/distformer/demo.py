"""``distformer demo``: one data set, three priors, the shipped 2-D model against the exact posterior.

For each prior (unimodal, bimodal, far from the data) it prints KL(exact ‖ model), the time of the model's
update and of the exact update (median of repeated calls, one thread), and draws prior, exact posterior and model
posterior contours side by side.
"""

from __future__ import annotations

import torch

from .timing import interleaved_median_seconds
from .diagnostics import kl_divergence
from .distributions.gmm import GaussianMixture
from .problems import get


def demo_priors() -> dict[str, GaussianMixture]:
    """Three 4-component priors over R^2, all inside the training meta-prior's support.

    The far prior puts the data about 3.5 of its standard deviations away from its mean. Much further (a
    prior-data conflict the training data never shows) the error grows: see ``benchmarks/linear-gaussian.md``.
    """
    def gm(w, mu, stds, angles):
        w = torch.tensor(w, dtype=torch.float64)
        mu = torch.tensor(mu, dtype=torch.float64)
        s = torch.tensor(stds, dtype=torch.float64)
        a = torch.tensor(angles, dtype=torch.float64)
        rot = torch.stack([torch.stack([a.cos(), -a.sin()], -1), torch.stack([a.sin(), a.cos()], -1)], -2)
        cov = rot @ torch.diag_embed(s**2) @ rot.transpose(-1, -2)
        return GaussianMixture(w, mu, covariance_matrix=0.5 * (cov + cov.transpose(-1, -2)))

    return {
        "unimodal": gm([0.4, 0.3, 0.2, 0.1], [[0.0, 0.0], [0.3, 0.2], [-0.2, 0.3], [0.1, -0.3]],
                       [[1.5, 1.0], [1.2, 0.8], [1.0, 1.4], [1.8, 1.1]], [0.3, -0.4, 0.8, 0.0]),
        "bimodal": gm([0.45, 0.05, 0.45, 0.05], [[-2.5, 1.5], [-2.0, 2.0], [2.5, -1.5], [2.0, -2.0]],
                      [[0.6, 0.4], [1.0, 0.5], [0.6, 0.4], [1.0, 0.5]], [0.5, 0.0, 0.5, 0.0]),
        "far from the data": gm([0.25, 0.25, 0.25, 0.25], [[4.0, 3.5], [4.5, 4.0], [3.5, 4.5], [4.0, 4.0]],
                                [[1.5, 1.2], [1.3, 1.3], [1.2, 1.6], [1.8, 1.4]], [0.2, 0.0, -0.5, 1.0]),
    }


def prior_distance(prior: GaussianMixture, z: torch.Tensor) -> float:
    """Distance of the data mean from the prior mean in prior standard deviations (per-axis, Euclidean)."""
    sd = prior.covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt()
    return float(((z.mean(-2) - prior.mean) / sd).norm(dim=-1).max())


def run_demo(model_name: str = "linear-gaussian-2d", out: str | None = "demo.png", seed: int = 0) -> list[dict]:
    """Run the demo; returns one result dict per prior and writes the figure to ``out`` (if given)."""
    import distformer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = distformer.pretrained(model_name)
        problem = get("linear-gaussian", **model.card["problem"]["options"])
        g = torch.Generator().manual_seed(seed)
        x_true = torch.tensor([1.0, -0.5], dtype=torch.float64)
        z = (x_true + torch.randn(1, 10, 2, generator=g, dtype=torch.float64))  # one data set, 10 points
        print(f"model {model_name}: {model.num_parameters() / 1e3:.0f}k parameters; data: 10 points "
              f"z = x + N(0, I), true x = {x_true.tolist()}")
        print(f"{'prior':>18s}  {'data from prior':>15s}  {'KL(exact||model)':>16s}  {'model ms':>9s}  {'exact ms':>9s}")
        results = []
        for name, prior in demo_priors().items():
            prior = prior.expand((1,))
            model_post = model.posterior(prior, z)
            exact_post = problem.exact_posterior(prior, z)
            kl = float(kl_divergence(exact_post, model_post, 4096, generator=g).mean())
            times = interleaved_median_seconds({"model": lambda: model.posterior(prior, z),
                                                "exact": lambda: problem.exact_posterior(prior, z)}, 200, 20)
            t_model, t_exact = 1e3 * times["model"], 1e3 * times["exact"]
            print(f"{name:>18s}  {prior_distance(prior, z):12.1f} sd  {kl:16.4f}  {t_model:9.3f}  {t_exact:9.3f}")
            results.append({"prior": name, "kl": kl, "model_ms": t_model, "exact_ms": t_exact,
                            "distributions": (prior[0], exact_post[0], model_post[0])})
    finally:
        torch.set_num_threads(threads)
    if out:
        plot_demo(results, z[0], x_true, out)
        print(f"wrote {out}")
    return results


def plot_demo(results: list[dict], z: torch.Tensor, x_true: torch.Tensor, out: str) -> None:
    """One panel per prior: prior (grey), exact posterior (black), model posterior (orange, dashed)."""
    from .plotting import pyplot

    plt = pyplot()

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4.6))
    for ax, r in zip(axes, results):
        prior, exact, approx = r["distributions"]
        lo = torch.minimum(z.min(0).values, prior.mean) - 2.5
        hi = torch.maximum(z.max(0).values, prior.mean) + 2.5
        xs = torch.linspace(float(lo.min()), float(hi.max()), 220, dtype=torch.float64)
        X, Y = torch.meshgrid(xs, xs, indexing="xy")
        grid = torch.stack([X, Y], -1)
        for dist, color, style, label in ((prior, "0.6", "solid", "prior"), (exact, "black", "solid", "exact"),
                                          (approx, "tab:orange", "dashed", "model")):
            dens = dist.log_prob(grid).exp()
            levels = torch.quantile(dens.flatten(), torch.tensor([0.9, 0.97, 0.995], dtype=torch.float64))
            ax.contour(X, Y, dens, levels=sorted(set(levels.tolist())), colors=color, linestyles=style)
            ax.plot([], [], color=color, linestyle=style, label=label)
        ax.scatter(z[:, 0], z[:, 1], s=10, c="tab:blue", label="data")
        ax.scatter([x_true[0]], [x_true[1]], marker="*", s=120, c="tab:red", label="true x")
        ax.set_title(f"{r['prior']}: KL={r['kl']:.4f}, {r['model_ms']:.2f} ms")
        ax.set_aspect("equal")
        ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
