"""Synthetic logistic-regression data shaped like the coreset papers' benchmark sets.

The public sets used by MSSW'18 / MOW'21 / DDK'24 (Covertype, KDD Cup '99, Webspam) cannot
be downloaded here, so :func:`make_coreset_data` generates data with their shape and the
features that make them easy or hard for coresets:

* ``"covertype"``: d = 54 (10 continuous, skewed + 44 one-hot indicator columns, as in
  Covertype's wilderness/soil encodings), balanced classes, moderate label noise.
* ``"kdd"``: d = 33 like the reference code's KDD Cup '99 (33 standardised continuous
  columns + intercept): a minority class ("normal", ~20 %) against two huge clusters of
  near-identical attack rows, heavy-tailed byte/duration counts, and rare-event counters
  that are non-zero on a handful to a few thousand rows (10-300 standard deviations out
  after scaling) with mixed labels: uniform sampling misses those high-leverage rows,
  sensitivity sampling does not.
* ``"webspam"``: d = 128, nonnegative sparse-ish frequency features in [0, 1], ~60 % positives.
* ``"ddk"``: the DDK'24 μ experiment: Gaussian features (n = 1e4, d = 100 in the paper) with
  labels from a noisy linear model, so μ is finite and moderate.

Every set includes an intercept column (all ones) as its first column.

References:
  Munteanu et al. arXiv 1805.08571 (Covertype/KDD/Webspam experiments);
  Dexter, Drineas, Khanna arXiv 2412.02639 (synthetic μ experiment).
"""
from __future__ import annotations

import numpy as np

from jaxeff._core import check_choice
from jaxeff._core.validation import check_int

__all__ = ["make_coreset_data"]

KINDS = ("covertype", "kdd", "webspam", "ddk")


def _labels(rng, logits, noise):
    p = 0.5 * (1.0 + np.tanh(0.5 * logits / noise))  # sigmoid, overflow-free
    return np.where(rng.random(logits.shape[0]) < p, 1.0, -1.0)


# KDD Cup '99 (10 % set, 494,021 connections), as preprocessed by the MSSW/MOW reference code:
# label +1 = attack, -1 = "normal." (19.7 %), the 33 continuous columns standardised. Its
# shape: two huge clusters of near-identical attack rows (smurf 56.8 %, neptune 21.7 %),
# heavy-tailed byte/duration counts, and "rare event" counters (root_shell, su_attempted,
# num_failed_logins, urgent, ...) that are non-zero on a handful to a few thousand rows.
# After standardisation those rows sit 20-300 standard deviations out: they are the
# high-leverage rows that decide those features' coefficients, and a uniform sample of a
# few percent of the rows catches only a few of them (or none).
_KDD_RARE = (  # (rows per 494,021 with the counter non-zero, share of attacks among them, Pareto tail)
    (4, 0.75, 3.0), (12, 0.1, 3.0), (51, 0.9, 2.0), (55, 0.8, 2.0), (63, 0.95, 2.0),
    (700, 0.05, 1.5), (1000, 0.1, 1.5), (1200, 1.0, 3.0), (2500, 0.05, 1.2), (3200, 0.1, 1.2),
)


def _kdd_like(rng, n):
    kind = rng.choice(4, size=n, p=[0.568, 0.217, 0.197, 0.018])  # smurf, neptune, normal, other attack
    smurf, nept, normal, other = (kind == k for k in range(4))
    y = np.where(normal, -1.0, 1.0)
    F = np.zeros((n, 32))
    # duration, src_bytes, dst_bytes: heavy tails for normal traffic and the rare attacks
    nl = normal | other
    F[:, 0] = np.where(nl & (rng.random(n) < 0.08), rng.lognormal(3.0, 2.0, n), 0.0)
    F[:, 1] = np.where(smurf, rng.choice([520.0, 1032.0], n, p=[0.3, 0.7]),
                       np.where(nl, rng.lognormal(5.5, 1.5, n) * (1 + rng.pareto(1.2, n) * (rng.random(n) < 0.01)), 0.0))
    F[:, 2] = np.where(nl & (rng.random(n) < 0.7), rng.lognormal(7.0, 2.0, n), 0.0)
    # rare-event counters: the labels of the few rows that have them are mixed
    for j, (per, attack_share, tail) in enumerate(_KDD_RARE):
        cnt = max(1, int(round(per * n / 494_021)))
        rows = rng.choice(n, cnt, replace=False)
        F[rows, 3 + j] = 1.0 + np.floor(rng.pareto(tail, cnt))
        y[rows] = np.where(rng.random(cnt) < attack_share, 1.0, -1.0)
    # count, srv_count, dst_host_count, dst_host_srv_count
    F[:, 13] = np.where(smurf, 511 - rng.poisson(2, n), np.where(nept, rng.integers(50, 300, n), rng.geometric(0.2, n)))
    F[:, 14] = np.where(smurf, F[:, 13], np.where(nept, rng.integers(1, 25, n), rng.geometric(0.15, n)))
    F[:, 15] = np.where(smurf | nept, 255.0, rng.integers(1, 256, n))
    F[:, 16] = np.where(smurf, 255.0, np.where(nept, rng.integers(1, 25, n), rng.integers(1, 256, n)))
    # 15 rate features in [0, 1]: a fixed pattern per attack cluster, Beta-distributed otherwise
    pat_s = (rng.random(15) < 0.3).astype(float)
    pat_n = (rng.random(15) < 0.5).astype(float)
    base = rng.beta(0.4, 0.6, size=(n, 15))
    jitter = np.clip(0.02 * rng.standard_normal((n, 15)), -0.05, 0.05)
    F[:, 17:] = np.where(smurf[:, None], np.clip(pat_s + jitter, 0, 1),
                         np.where(nept[:, None], np.clip(pat_n + jitter, 0, 1), base))
    F = (F - F.mean(0)) / np.maximum(F.std(0), 1e-12)
    return np.concatenate([np.ones((n, 1)), F], axis=1), y


def make_coreset_data(kind: str, n: int, seed: int = 0, d: int | None = None, dtype=np.float32):
    """Generate ``(X [n, d], y [n] in {-1, +1})`` shaped like a benchmark set (numpy arrays).

    Args:
      kind: "covertype", "kdd", "webspam" or "ddk".
      n: number of rows.
      seed: numpy seed (deterministic output).
      d: number of columns for "ddk" (default 100); fixed for the other kinds.
      dtype: floating dtype of X.

    Returns:
      ``(X, y)``.

    Example:
      >>> X, y = make_coreset_data("kdd", 1000)
      >>> X.shape, float((y < 0).mean()) < 0.3  # the "normal" minority class
      ((1000, 33), True)

    References:
      arXiv 1805.08571; arXiv 2412.02639.
    """
    check_choice("kind", kind, KINDS)
    if not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"`n` must be an int >= 2, got {n!r}.")
    if d is not None:
        check_int("d", d, 1)
    rng = np.random.default_rng(seed)
    if kind == "covertype":
        cont = rng.gamma(2.0, 1.0, size=(n, 10)) * rng.choice([1.0, 3.0], size=(1, 10))
        cont = (cont - cont.mean(0)) / cont.std(0)
        wild = np.eye(4)[rng.integers(0, 4, n)]
        soil = np.eye(40)[np.minimum(rng.geometric(0.12, n) - 1, 39)]
        X = np.concatenate([np.ones((n, 1)), cont[:, :9], wild, soil], axis=1)
        w = np.random.default_rng(1000).normal(0, 1.0, X.shape[1])
        w[0] = 0.0
        logits = X @ w
        logits -= np.median(logits)
        y = _labels(rng, logits, noise=2.5)
    elif kind == "kdd":
        X, y = _kdd_like(rng, n)
    elif kind == "webspam":
        dens = rng.beta(0.3, 3.0, size=(1, 127))
        mask = rng.random((n, 127)) < np.clip(dens * 3, 0.02, 0.9)
        X = np.concatenate([np.ones((n, 1)), mask * rng.beta(1.0, 5.0, size=(n, 127))], axis=1)
        w = np.random.default_rng(1002).normal(0, 4.0, X.shape[1])
        logits = X[:, 1:] @ w[1:]
        logits -= np.quantile(logits, 0.4)
        y = _labels(rng, logits, noise=1.5)
    else:
        dd = 100 if d is None else int(d)
        X = np.concatenate([np.ones((n, 1)), rng.standard_normal((n, dd - 1))], axis=1)
        w = np.random.default_rng(1003).normal(0, 1.0, dd) / np.sqrt(dd)
        y = _labels(rng, X @ w, noise=0.3)
    return X.astype(dtype), y.astype(dtype)
