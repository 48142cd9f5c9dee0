"""Classifier two-sample test (C2ST) as sbibm scores posteriors: how well a classifier tells two sample sets apart.

Both sets are standardised by the first set's mean and standard deviation; a multilayer perceptron (two hidden
layers of ``10 * D`` ReLU units, Adam, scikit-learn's ``MLPClassifier``) is trained to label them, and the score is
its mean accuracy over 5-fold cross-validation (shuffled folds). 0.5: indistinguishable; 1.0: fully separable.
sbibm uses 10,000 samples from each side.
"""

from __future__ import annotations

import numpy as np
import torch


def c2st(a: torch.Tensor, b: torch.Tensor, seed: int = 1, folds: int = 5) -> float:
    """C2ST accuracy between samples ``a`` ``(n, D)`` and ``b`` ``(m, D)`` (module docstring)."""
    from sklearn.model_selection import KFold, cross_val_score
    from sklearn.neural_network import MLPClassifier

    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"Expected two sample sets (n, D) and (m, D), but got {tuple(a.shape)} and {tuple(b.shape)}.")
    a, b = a.double().numpy(), b.double().numpy()
    mean, sd = a.mean(0), a.std(0)
    x = (np.concatenate([a, b]) - mean) / np.where(sd > 0, sd, 1.0)
    y = np.concatenate([np.zeros(len(a)), np.ones(len(b))])
    dim = a.shape[1]
    clf = MLPClassifier(activation="relu", hidden_layer_sizes=(10 * dim, 10 * dim), max_iter=10000, solver="adam",
                        random_state=seed)
    scores = cross_val_score(clf, x, y, cv=KFold(n_splits=folds, shuffle=True, random_state=seed), scoring="accuracy")
    return float(np.mean(scores))
