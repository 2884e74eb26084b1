# %% [markdown]
# # Logistic-regression coresets and the exact complexity measure μ
#
# Replicates two experiments with `jaxeff.coreset`:
#
# 1. **MSSW'18 / MOW'21 ratio curves** (Munteanu et al., arXiv 1805.08571): fit logistic regression
#    on a weighted sample of m rows and report the loss ratio f(β̃)/f(β*) on all data, for uniform,
#    √leverage, ℓ1-Lewis, ℓ2-augmented sensitivity sampling and the oblivious multilevel sketch.
#    *Claim*: sensitivity-style sampling beats uniform, by a lot on data with a rare class and heavy
#    tails (anchor, KDD m=16k: uniform 3.28 vs √lev 1.020), and √lev reaches ~1.005 on Covertype.
# 2. **DDK'24** (Dexter, Drineas, Khanna, arXiv 2412.02639): μ_y(X) is *not* hard to compute; one LP
#    gives it exactly. *Claim*: the earlier approximate bounds (MSSW Thm. 3, from an ℓ1
#    well-conditioned basis) are loose by large factors, while the LP is exact.
#
# Data: the public sets cannot be downloaded here, so `make_coreset_data` generates data with
# their shape (Covertype: d=54 balanced; KDD: d=33, a 20 % "normal" minority against two huge
# clusters of near-identical attack rows, heavy-tailed counts and rare-event counters that are
# non-zero on a handful of rows; DDK: Gaussian). The oblivious sketch follows MOW'21 and the
# authors' experiments: 3 hashing levels + a uniform block, and a sketched loss that keeps the
# largest quarter of each level's bucket losses (`fit_oblivious_sketch`).

# %%
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import jaxeff.coreset as C

cfg = {
    "test": dict(n=4000, sizes=[300], reps=3, mu_n=600, mu_d=5, mu_sizes=[128, 256]),
    "small": dict(n=50_000, sizes=[500, 1000, 2000, 4000], reps=11, mu_n=4000, mu_d=20,
                  mu_sizes=[256, 512, 1024, 2048]),
    "full": dict(n=None, sizes=[1000, 2000, 4000, 8000, 16000], reps=21, mu_n=10_000, mu_d=100,
                 mu_sizes=[512, 1024, 2048, 4096, 8192]),
}[SIZE]
print(SIZE, cfg)

# %% [markdown]
# ## Quick start
# A sampler returns `(indices, weights)`; the weighted rows are a coreset: `fit_logistic` fits on
# them, and the weights make the coreset loss an unbiased estimate of the full loss.

# %%
X, y = C.make_coreset_data("covertype", cfg["n"] or 581_012, seed=0)
X, y = jnp.asarray(X), jnp.asarray(y)
full = C.fit_logistic(X, y)
print("full fit:", full.status.name, "loss/row", float(full.loss) / X.shape[0])
idx, w = C.sqrt_leverage(jax.random.key(0), X, y, cfg["sizes"][-1])
core = C.take_coreset(X, y, idx, w)
beta = C.fit_logistic(*core).beta
print("coreset of", idx.shape[0], "rows: loss ratio", float(C.logistic_loss(beta, X, y) / full.loss))

# %% [markdown]
# ## 1. Ratio curves per sampler
# Each point: median (and quartiles) over the repetitions of f(β̃)/f(β*). The repetitions run
# inside one jit-compiled `lax.map` per (sampler, m).

# %%
NAMES = list(C.CORESET_SAMPLERS) + ["oblivious"]


def ratio_fn(name, m):
    def one(key, X, y, fstar):
        if name == "oblivious":
            beta = C.fit_oblivious_sketch(C.oblivious_sketch(key, X, y, m)).beta
        else:
            i, w = C.CORESET_SAMPLERS[name](key, X, y, m)
            beta = C.fit_logistic(X[i], y[i], w).beta
        return C.logistic_loss(beta, X, y) / fstar

    return jax.jit(lambda X, y, f, keys: jax.lax.map(lambda k: one(k, X, y, f), keys))


curves = {}
for ds, n_full in [("covertype", 581_012), ("kdd", 494_021)]:
    Xd, yd = C.make_coreset_data(ds, cfg["n"] or n_full, seed=0)
    Xd, yd = jnp.asarray(Xd), jnp.asarray(yd)
    fstar = C.fit_logistic(Xd, yd).loss
    keys = jax.random.split(jax.random.key(1), cfg["reps"])
    for name in NAMES:
        rows = []
        for m in cfg["sizes"]:
            r = np.asarray(ratio_fn(name, m)(Xd, yd, fstar, keys), np.float64)
            r = np.where(np.isfinite(r), r, np.inf)
            rows.append(np.quantile(r, [0.25, 0.5, 0.75]))
        curves[(ds, name)] = np.array(rows)
        print(ds, f"{name:22s}", "medians", np.round(curves[(ds, name)][:, 1], 4))

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for ax, ds in zip(axes, ["covertype", "kdd"]):
    for name in NAMES:
        q = curves[(ds, name)]
        ax.plot(cfg["sizes"], q[:, 1], marker="o", label=name)
        ax.fill_between(cfg["sizes"], q[:, 0], q[:, 2], alpha=0.15)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("coreset size m")
    ax.set_ylabel("f(β̃) / f(β*)  (median, IQR)")
    ax.set_title(f"{ds}-like, n = {cfg['n'] or 'paper'}")
    ax.legend(fontsize=7)
plt.tight_layout()
plt.show()

# %%
m_big = cfg["sizes"][-1]
kdd_u = curves[("kdd", "uniform")][-1, 1]
kdd_best = min(curves[("kdd", s)][-1, 1] for s in ("sqrt_leverage", "lewis_weights", "augmented_sensitivity"))
cov_lev = curves[("covertype", "sqrt_leverage")][-1, 1]
print(f"KDD-like, m={m_big}: uniform {kdd_u:.3f} vs best sensitivity sampler {kdd_best:.3f}")
print(f"Covertype-like, m={m_big}: sqrt_leverage {cov_lev:.4f}")
print("claim 'sensitivity sampling clearly beats uniform on KDD-like data' held:", bool(kdd_best < kdd_u))

# %% [markdown]
# ## 2. DDK'24: exact μ by one LP vs the MSSW approximate bounds
# μ is computed on uniform sub-samples ("sketches") of growing size of the DDK synthetic data
# (paper: n = 1e4, d = 100, sketches of 512..8192 rows) with `mu` (the d-row dual LP, HiGHS) and
# bracketed with `mu_bounds_mssw` (ℓ1 Lewis well-conditioned basis + 2d small LPs).

# %%
Xm, ym = C.make_coreset_data("ddk", cfg["mu_n"], seed=2, d=cfg["mu_d"], dtype=np.float64)
rng = np.random.default_rng(0)
rows = []
for s in cfg["mu_sizes"]:
    sel = rng.choice(Xm.shape[0], s, replace=False)
    t0 = time.perf_counter()
    r = C.mu(Xm[sel], ym[sel])
    t_mu = time.perf_counter() - t0
    t0 = time.perf_counter()
    b = C.mu_bounds_mssw(Xm[sel], ym[sel])
    t_b = time.perf_counter() - t0
    rows.append((s, r.value, b.lower, b.upper, t_mu, t_b))
    print(f"m={s:5d}  exact mu={r.value:9.3f} ({t_mu:.2f}s)   MSSW bounds [{b.lower:8.3f}, {b.upper:10.1f}] ({t_b:.1f}s)"
          f"   upper/exact = {b.upper / r.value:7.1f}")
full_mu = C.mu(Xm, ym)
print("mu on all", Xm.shape[0], "rows:", round(full_mu.value, 3), full_mu.status.name)

# %%
arr = np.array(rows)
plt.figure(figsize=(6, 4))
plt.plot(arr[:, 0], arr[:, 1], "o-", label="exact μ (LP)")
plt.fill_between(arr[:, 0], arr[:, 2], arr[:, 3], alpha=0.2, label="MSSW bracket [lower, upper]")
plt.axhline(full_mu.value, ls="--", c="k", lw=0.8, label="exact μ, all rows")
plt.xscale("log")
plt.yscale("log")
plt.xlabel("sketch size (rows)")
plt.ylabel("μ")
plt.legend()
plt.show()
print("claim 'the approximate bounds are loose' held:", bool(np.all(arr[:, 3] / arr[:, 1] > 5)))

# %% [markdown]
# ## What held (benchmark suite `coreset --size full`, 21 repetitions, run 2026-11-25)
# Medians [quartiles] of f(β̃)/f(β*) on the synthetic look-alikes at their paper sizes:
# * Covertype-like (n = 581,012, d = 54), m = 5810 = 1 % of n: uniform 1.009 [1.007, 1.014],
#   √lev 1.007 [1.006, 1.008], ℓ1-Lewis 1.007 [1.007, 1.009], augmented 1.008 [1.007, 1.009],
#   oblivious 1.034 [1.029, 1.037]. The goal "√lev and augmented ≤ 1.02 at m = 1 % of n" held.
#   At m = 8000: uniform 1.006 / √lev 1.005 / oblivious 1.031 (anchors 1.008 / 1.005 / 1.036).
# * KDD-like (n = 494,021, d = 33), m = 16000: uniform 1.069 [1.053, 1.110], √lev 1.013,
#   ℓ1-Lewis 1.005, augmented 1.006, oblivious 1.088 (anchors uniform 3.28, √lev 1.020,
#   oblivious 2.58). Sensitivity sampling is clearly below uniform at every size (m = 2000:
#   uniform 1.48, √lev 1.25, Lewis 1.05, augmented 1.06), so the claim held qualitatively,
#   but the anchor's 3x gap of uniform sampling on the real data is not reproduced by our
#   look-alike.
# * Webspam-like (n = 350,000, d = 128), m = 8000: uniform 1.023, √lev 1.021, oblivious 1.064
#   (anchors 1.092 / 1.035 / 1.175).
# * The oblivious sketch (MOW'21 as in the authors' code: 3 levels + uniform block, top-25 %
#   loss per level) ranks last on every set, as in the anchors; its ratios are within ~0.01 of
#   the Covertype anchor and below the KDD/Webspam anchors.
# * DDK'24 (n = 4000, d = 20, sketches 256..2048, earlier small run): exact μ by the d-row LP in
#   about a second per sketch (μ = 38, 17.6, 17.1, 15.1; 15.5 on all rows), while the MSSW-style
#   upper bound is about 30x the exact value. The claim that the prior bounds are loose held.
#   At n = 1e5, d = 50 `mu` (d-row dual, HiGHS) took 30 s; the n-row primal in plain HiGHS did
#   not finish within its 600 s limit.
