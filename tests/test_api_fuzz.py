"""API fuzz: every public callable gets one valid call and bad-input probes (issue 17, "Bad input").

Each public name of ``jaxeff.__all__`` and of every family's ``__all__`` needs a factory in
tests/_fuzz_factories.py (or an entry in its ``EXEMPT`` list with the reason); the probes are
derived from the factory's argument wrappers (tests/_fuzz_engine.py) and classified clear /
obscure / silent. The test asserts: every valid call works, no probe is silent outside the
documented ``SILENT_ALLOWED`` list, and the fraction of good probes (clear error, or NaN
propagated for NaN data, or an int/bool/list version of valid data giving the same result)
meets the thresholds below.

Run ``python tests/test_api_fuzz.py`` for the per-family table and every non-clear probe.
"""
from __future__ import annotations

import collections
import contextlib
import pathlib
import functools
import sys
import tempfile
import warnings

import pytest

import jaxeff
from _fuzz_engine import CLEAR, GOOD, OBSCURE, SILENT, STATUSES, Result, call, make_probes, run_probe
from _fuzz_factories import EXEMPT, FACTORIES

# (function, 'probe (argument)') -> reason. Silent acceptance that is the documented contract.
SILENT_ALLOWED: dict[tuple[str, str], str] = {
    ('QuantRule', 'None (weight_fmt)'): 'documented: weight_fmt=None leaves the matched layers float',
    ('TensorBasis', 'degree=zero (degree)'): 'documented: degree 0 is the constant-only basis',
    ('apply_masks', 'None (masks)'): "package convention: a None mask means 'leaf not pruned'",
    ('augmented_sensitivity', 'None (jl_dim)'): 'documented: jl_dim=None is the exact computation',
    ('coreset_probabilities', 'None (jl_dim)'): 'documented: jl_dim=None is the exact computation',
    ('default_prunable', 'None (leaf)'): 'package convention: a None leaf is not prunable',
    ('default_prunable', 'None (path)'): "the predicate's signature takes a path it does not need (user predicates use it)",
    ('dictionary_from_sketches', 'n_iter=zero (n_iter)'): 'n_iter=0 returns the initial dictionary',
    ('dictionary_learning', 'n_iter=zero (n_iter)'): 'n_iter=0 returns the initial dictionary',
    ('expert_optimal_fraction', 'rank-1 (states)'): 'documented: for a 1-D basis, states [n] are n states',
    ('fit_sketched_features', 'k=above range (k)'): 'documented: k may go up to the next power of two of d',
    ('fwht', 'rank+1 (a)'): 'documented: transform along the last axis, any leading shape',
    ('fwht', 'rank-1 (a)'): 'documented: transform along the last axis, any leading shape',
    ('irl_sample_complexity_curve', 'constant=nan (constant)'): 'documented: a NaN constant (no margin crossed 50%) gives a NaN curve',
    ('layer_hessian', 'rank+1 (x)'): 'documented: x is [..., d_in], flattened into rows',
    ('layer_hessian', 'rank-1 (x)'): 'documented: x is [..., d_in] (one row)',
    ('least_squares_refit', 'rank+1 (x)'): 'documented: x is [..., d_in], flattened into rows',
    ('lewis_weights', 'None (jl_dim)'): 'documented: jl_dim=None is the exact computation',
    ('lipschitz_bound', 'rank+1 (F)'): '(1, k, k) is the normal [A-1, k, k] output of expert_advantage_operators',
    ('mask_sparsity', 'None (masks)'): "package convention: a None mask means 'leaf not pruned'",
    ('mountain_car_energy_policy', 'rank+1 (s)'): 'one state [2] or a batch [..., 2] are both valid',
    ('mountain_car_energy_policy', 'rank-1 (s)'): 'one state [2] or a batch [..., 2] are both valid',
    ('nm_mask', 'None (scores)'): "package convention: None scores (e.g. magnitude_scores of a bias) mean 'not pruned'",
    ('osscar', 'rank+1 (x)'): 'documented: x is [..., d_in], flattened into rows',
    ('osscar_heads', 'rank+1 (x)'): 'documented: x is [..., d_in], flattened into rows',
    ('project_features', 'k=above range (k)'): 'documented: k may go up to the next power of two of d',
    ('q_values_in_basis', 'rank-1 (states)'): 'documented: for a 1-D basis, states [n] are n states',
    ('quantized_dot_general', 'empty (lhs)'): 'an empty batch is a well-defined product (matches lax.dot_general)',
    ('reward_margins', 'rank-1 (states)'): 'documented: for a 1-D basis, states [n] are n states',
    ('sketch_apply', 'mismatch(axis=0) (A)'): 'documented block contract: any block with offset + b <= n is valid',
    ('sketched_dictionary_learning', 'n_iter=zero (n_iter)'): 'n_iter=0 returns the initial dictionary',
    ('smoothquant', 'None (act_fmt)'): 'documented: act_fmt=None is weight-only',
    ('sparsegpt', 'rank+1 (x_or_hessian)'): 'documented: x is [..., d_in], flattened into rows',
    ('sqrt_leverage', 'None (jl_dim)'): 'documented: jl_dim=None is the exact computation',
    ('sr_optimizer', 'int key (key)'): 'documented: key is a jax.random.key or an int seed',
    ('structured_mask', 'None (scores)'): "package convention: None scores mean 'not pruned'",
    ('structured_reconstruction_error', 'rank+1 (x)'): 'documented: x is [..., d_in], flattened into rows',
    ('unstructured_mask', 'None (scores)'): "package convention: None scores mean 'not pruned'",
    ('wanda', 'rank+1 (x)'): 'documented: x is [..., d_in], flattened into rows',
}

# OPEN DEFECTS, not a contract: silent / obscure probes not fixed yet (empty since 2026-12-08:
# every silent probe left is a documented contract in SILENT_ALLOWED above). The test fails
# on any silent probe not listed here, and on a listed silent probe that now passes (so the
# list only shrinks: remove fixed entries). Regenerate with
# ``python tests/test_api_fuzz.py --write-known tests/_fuzz_known.txt`` only after fixing.
KNOWN_FILE = pathlib.Path(__file__).with_name("_fuzz_known.txt")


def _known() -> set[tuple[str, str, str]]:
    out = set()
    if KNOWN_FILE.exists():
        for line in KNOWN_FILE.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                f, probe, st = (x.strip() for x in line.split(" | ")[:3])
                out.add((f, probe, st))
    return out


KNOWN = _known()

# Minimum fraction of good probes (clear error, NaN propagated, or the same result), overall and
# per family; the documented SILENT_ALLOWED contracts do not count as good. Measured 0.988 overall
# on 2026-12-08; the family floors are the measured values rounded down, so a regression fails.
GOAL = 0.97  # issue 17
OVERALL_MIN = GOAL
FAMILY_MIN: dict[str, float] = {  # measured good fractions on 2026-12-08, rounded down
    "core": 0.99, "coreset": 0.98, "distill": 0.99, "irl": 0.98, "prune": 0.96, "quant": 0.98,
    "rounding": 0.99, "sam": 0.99, "sketch": 0.98, "stability": 0.99,
}


def public_names() -> dict[str, tuple[str, object]]:
    out = {}
    for fam, mod in jaxeff.FAMILIES.items():
        for n in mod.__all__:
            out[n] = (fam, getattr(mod, n))
    for n in jaxeff.__all__:
        if n not in out:
            out[n] = ("core", getattr(jaxeff, n))
    return out


PUBLIC = public_names()
FUZZED = sorted(n for n in PUBLIC if n not in EXEMPT and n not in jaxeff.FAMILIES)


def test_every_public_name_has_a_factory_or_exemption():
    missing = [n for n in PUBLIC if n not in FACTORIES and n not in EXEMPT and n not in jaxeff.FAMILIES]
    assert not missing, f"no factory for {missing} in tests/_fuzz_factories.py (or add to EXEMPT with a reason)"
    stale = [n for n in list(FACTORIES) + list(EXEMPT) if n not in PUBLIC]
    assert not stale, f"factories/exemptions for names that are not public: {stale}"
    both = [n for n in FACTORIES if n in EXEMPT]
    assert not both, f"both a factory and an exemption: {both}"


@functools.lru_cache(maxsize=None)
def fuzz(name: str) -> tuple[Result, ...]:
    fam, fn = PUBLIC[name]
    case = FACTORIES[name]()
    # in a scratch directory: a probe like save_quantized(None, ...) may write a file "None"
    with warnings.catch_warnings(), contextlib.chdir(tempfile.mkdtemp(prefix="jaxeff-fuzz-")):
        warnings.simplefilter("ignore")
        call(fn, case)  # the valid call must work (raises otherwise)
        results = []
        for p in make_probes(fn, case):
            st, detail = run_probe(fn, case, p)
            if st == SILENT and (name, f"{p.label} ({p.arg})") in SILENT_ALLOWED:
                st, detail = "allowed", SILENT_ALLOWED[(name, f"{p.label} ({p.arg})")]
            results.append(Result(name, fam, p.label, p.arg, st, detail))
    return tuple(results)


@pytest.mark.parametrize("name", FUZZED)
def test_fuzz_no_silent_probe(name):
    res = fuzz(name)
    silent = [f"{r.probe} ({r.arg}): {r.detail}" for r in res
              if r.status == SILENT and (name, f"{r.probe} ({r.arg})", SILENT) not in KNOWN]
    assert not silent, f"{name}: bad input accepted silently:\n  " + "\n  ".join(silent)
    now = {(name, f"{r.probe} ({r.arg})", r.status) for r in res}
    fixed = [k for k in KNOWN if k[0] == name and k[2] == SILENT and k not in now]
    if fixed:
        warnings.warn(f"{name}: listed as known-silent but no longer silent, remove from {KNOWN_FILE.name}: {fixed}")


def table(results) -> tuple[dict, str]:
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for r in results:
        counts[r.family][r.status] += 1
        counts["ALL"][r.status] += 1
    cols = list(STATUSES) + ["allowed"]
    lines = [f"{'family':10s} " + " ".join(f"{c:>8s}" for c in cols) + "    total  good%"]
    for fam in sorted(counts, key=lambda f: (f == "ALL", f)):
        c = counts[fam]
        tot = sum(c.values())
        good = sum(c[s] for s in GOOD)
        lines.append(f"{fam:10s} " + " ".join(f"{c[s]:8d}" for s in cols) + f" {tot:8d} {100 * good / tot:6.1f}")
    return counts, "\n".join(lines)


def all_results():
    return [r for n in FUZZED for r in fuzz(n)]


def test_fuzz_clear_fraction():
    results = all_results()
    counts, text = table(results)
    bad = [f"{r.func} {r.probe} ({r.arg}): {r.status}: {r.detail}" for r in results
           if r.status in (OBSCURE, SILENT)]
    c = counts["ALL"]
    frac = sum(c[s] for s in GOOD) / sum(c.values())
    assert frac >= OVERALL_MIN, f"good fraction {frac:.3f} < {OVERALL_MIN}\n{text}\n" + "\n".join(bad)
    for fam, lo in FAMILY_MIN.items():
        cf = counts[fam]
        f = sum(cf[s] for s in GOOD) / sum(cf.values())
        assert f >= lo, f"{fam}: good fraction {f:.3f} < {lo}\n{text}\n" + "\n".join(b for b in bad)


if __name__ == "__main__":
    args = sys.argv[1:]
    write = None
    if args[:1] == ["--write-known"]:
        write, args = args[1], args[2:]
    only = args
    names = [n for n in FUZZED if not only or n in only or PUBLIC[n][0] in only]
    res = []
    for n in names:
        try:
            res += fuzz(n)
        except Exception as e:  # noqa: BLE001
            print(f"VALID CALL FAILED {n}: {type(e).__name__}: {str(e)[:300]}")
    print(table(res)[1])
    for r in res:
        if r.status not in GOOD:
            print(f"{r.family:9s} {r.func} | {r.probe} ({r.arg}) | {r.status} | {r.detail}")
    if write:
        with open(write, "w") as fh:
            fh.write("# function | probe | status | detail   (open defects; see tests/test_api_fuzz.py)\n")
            for r in res:
                if r.status in (OBSCURE, SILENT):
                    fh.write(f"{r.func} | {r.probe} ({r.arg}) | {r.status} | {r.family}: {r.detail}\n")
