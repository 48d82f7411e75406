"""Linear-probe accuracy of a latent: how much class information a frozen encoder's latent carries linearly.

RAE reports the ImageNet linear-probe top-1 of each encoder (arXiv 2510.11690, Sec. 3; RAEv2, arXiv 2605.18324,
Table of the K sweep: the probe stays flat as K grows). Here the probe is a multinomial logistic regression
(scikit-learn, L-BFGS, deterministic) on the **token-mean-pooled** latent: ``[N, C, h, w]`` -> the mean over the
h x w grid, ``[N, C]`` (``pooling="flatten"`` uses all C*h*w values instead), standardised with the training
features' mean and standard deviation.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from torch import Tensor


def pool_latents(latents: Tensor, pooling: Literal["mean", "flatten"] = "mean") -> np.ndarray:
    """``[N, C, h, w]`` (or ``[N, D]``) latents -> ``[N, C]`` token means (or ``[N, C*h*w]``), float64 numpy."""
    if pooling not in ("mean", "flatten"):
        raise ValueError(f"pooling must be 'mean' or 'flatten', got {pooling!r}")
    z = latents.detach().cpu().double()
    if z.dim() == 4 and pooling == "mean":
        z = z.mean(dim=(2, 3))
    return z.reshape(z.shape[0], -1).numpy()


def linear_probe_accuracy(
    train_latents: Tensor,
    train_labels: Tensor,
    test_latents: Tensor,
    test_labels: Tensor,
    num_classes: int,
    pooling: Literal["mean", "flatten"] = "mean",
    l2: float = 1.0,
    max_iter: int = 2000,
) -> float:
    """Test accuracy of a logistic-regression probe fitted on the training latents (deterministic).

    Args:
        train_latents: ``[N, C, h, w]`` latents the probe is fitted on.
        train_labels: Their int labels ``[N]`` in ``[0, num_classes)``.
        test_latents: Latents the accuracy is measured on.
        test_labels: Their labels.
        num_classes: Number of classes (labels outside ``[0, num_classes)`` are an error).
        pooling: ``"mean"`` (mean over the token grid) or ``"flatten"``.
        l2: Inverse regularisation strength ``C`` of scikit-learn's ``LogisticRegression``.
        max_iter: L-BFGS iterations.
    """
    from sklearn.linear_model import LogisticRegression

    x_tr, x_te = pool_latents(train_latents, pooling), pool_latents(test_latents, pooling)
    y_tr, y_te = train_labels.cpu().numpy(), test_labels.cpu().numpy()
    if len(x_tr) != len(y_tr) or len(x_te) != len(y_te):
        raise ValueError(f"latents/labels lengths differ: train {len(x_tr)}/{len(y_tr)}, test {len(x_te)}/{len(y_te)}")
    for name, y in (("train_labels", y_tr), ("test_labels", y_te)):
        if len(y) and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f"{name} range [{y.min()}, {y.max()}] is outside [0, num_classes={num_classes})")
    if len(np.unique(y_tr)) < 2:
        raise ValueError("the probe needs at least two classes among train_labels")
    mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-8
    probe = LogisticRegression(C=l2, max_iter=max_iter)
    probe.fit((x_tr - mu) / sd, y_tr)
    return float((probe.predict((x_te - mu) / sd) == y_te).mean())
