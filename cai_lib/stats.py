"""Paired statistics for base vs trained pass/fail on the same eval items.

Both models answer the *same* items, so every figure here is paired: the evidence for
a lift is in the discordant items (base pass / trained fail = `b`, base fail /
trained pass = `c`), not in two independent rates. Methods and why:

* Wilson 95% interval per model (scipy's `binomtest(...).proportion_ci("wilson")`):
  keeps coverage near 95% at rates close to 0 or 1, where a 270M base model and a
  good trained model both sit and the Wald interval collapses to zero width.
* McNemar's exact test, two-sided: `binomtest(b, b + c, 0.5)` — conditional on the
  discordant count, `c` is Binomial(b + c, 1/2) under "no difference". Exact because
  eval sets are small and discordant counts smaller still. p = 1 when b + c = 0.
* Cohen's h = 2·asin√p_trained − 2·asin√p_base: an effect size on the arcsine
  scale, so a lift from 0.90 to 0.99 counts as larger than one from 0.40 to 0.49.
* Paired difference (trained − base) 95% interval two ways: Newcombe (1998, Stat Med
  17:2635, method 10: Wilson limits of each marginal combined with the phi correlation,
  phi corrected as in the paper), and a seeded percentile bootstrap over items.
  The first is closed-form and well calibrated; the second makes no model assumption
  and is a cross-check a reader can reproduce with the same seed.
* Benjamini–Hochberg adjusted McNemar p-values across item types
  (`scipy.stats.false_discovery_control`): four types means four tests, and the
  per-type table should not read as four independent discoveries.
* Power: eval items needed for McNemar at alpha (default 0.01, two-sided) with 80%
  power to detect the *observed* difference, by Connor (1987, Biometrics 43:207)
  normal approximation with the observed discordant proportions:
      n = (z_{1-alpha/2}·√ψ + z_{1-beta}·√(ψ − δ²))² / δ²,
      ψ = (b + c)/n (discordant proportion), δ = (c − b)/n (the lift).
  It says whether an eval set of this size could have shown the lift at all.

Every returned number is a plain Python float/int (JSON-serialisable).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

import numpy as np
from scipy import stats as _sps

from .errors import CaiError

# Items per bootstrap chunk row block: bounds memory at n_items x this many int64s.
_BOOT_CHUNK = 250


def _f(x) -> float:
    return float(x)


def wilson(k: int, n: int, conf: float = 0.95) -> list[float]:
    """Wilson score interval for k successes out of n (scipy's implementation)."""
    if n <= 0:
        raise CaiError("wilson interval needs at least one item (n = 0) — the eval set is empty")
    ci = _sps.binomtest(int(k), int(n)).proportion_ci(confidence_level=conf, method="wilson")
    return [_f(ci.low), _f(ci.high)]


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact (conditional binomial) McNemar p-value on the discordant pairs."""
    if b + c == 0:
        return 1.0  # no discordant item: no evidence of any difference
    return _f(_sps.binomtest(int(c), int(b + c), 0.5, alternative="two-sided").pvalue)


def cohens_h(p_base: float, p_trained: float) -> float:
    """Cohen's h for trained vs base (positive when trained is higher)."""
    return _f(2 * math.asin(math.sqrt(p_trained)) - 2 * math.asin(math.sqrt(p_base)))


def newcombe_diff_ci(n11: int, n12: int, n21: int, n22: int, conf: float = 0.95) -> list[float]:
    """Newcombe (1998) method 10 interval for p1 − p2 from a paired 2x2 table.

    Rows are the first measurement (pass, fail), columns the second: p1 = (n11+n12)/N,
    p2 = (n11+n21)/N. Each marginal gets its Wilson interval; the two half-widths are
    combined allowing for the correlation phi between the paired measurements, with
    Newcombe's correction (AD − BC shrunk by N/2 towards 0 when positive, 0 when the
    marginals leave phi undefined).
    """
    N = n11 + n12 + n21 + n22
    if N <= 0:
        raise CaiError("paired difference interval needs at least one item — the eval set is empty")
    p1, p2 = (n11 + n12) / N, (n11 + n21) / N
    l1, u1 = wilson(n11 + n12, N, conf)
    l2, u2 = wilson(n11 + n21, N, conf)
    marg = (n11 + n12) * (n21 + n22) * (n11 + n21) * (n12 + n22)
    A = n11 * n22 - n12 * n21
    if marg == 0 or 0 <= A <= N / 2:
        phi = 0.0
    elif A > N / 2:
        phi = (A - N / 2) / math.sqrt(marg)
    else:
        phi = A / math.sqrt(marg)
    theta = p1 - p2
    # max(0, .) guards against a -1e-17 from rounding when the terms nearly cancel.
    delta = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    eps = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return [_f(max(-1.0, theta - delta)), _f(min(1.0, theta + eps))]


def bootstrap_diff_ci(base_pass: Sequence[bool], trained_pass: Sequence[bool], *, seed: int = 0,
                      n_bootstrap: int = 2000, conf: float = 0.95) -> list[float]:
    """Percentile bootstrap interval for trained − base rate, resampling items (pairs kept).

    Seeded with numpy's default_rng(seed): the same inputs and seed give the same interval.
    """
    d = np.asarray(trained_pass, dtype=np.int8) - np.asarray(base_pass, dtype=np.int8)
    n = d.size
    if n == 0:
        raise CaiError("bootstrap interval needs at least one item — the eval set is empty")
    if n_bootstrap < 1:
        raise CaiError(f"n_bootstrap must be >= 1, got {n_bootstrap}")
    rng = np.random.default_rng(seed)
    means = np.empty(n_bootstrap, dtype=np.float64)
    for start in range(0, n_bootstrap, _BOOT_CHUNK):
        k = min(_BOOT_CHUNK, n_bootstrap - start)
        idx = rng.integers(0, n, size=(k, n))
        means[start:start + k] = d[idx].mean(axis=1)
    tail = (1 - conf) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return [_f(lo), _f(hi)]


def bh_adjust(pvalues: Sequence[float]) -> list[float]:
    """Benjamini–Hochberg adjusted p-values, in the input order."""
    if len(pvalues) == 0:
        return []
    return [_f(p) for p in _sps.false_discovery_control(np.asarray(pvalues, dtype=float), method="bh")]


def power_n(b: int, c: int, n: int, *, alpha: float = 0.01, power: float = 0.8) -> tuple[int | None, str]:
    """Items needed for McNemar (two-sided alpha) to detect the observed difference.

    Connor (1987) normal approximation with the observed discordant proportions.
    Returns (n_items or None, a sentence saying what was computed or why not).
    """
    if n <= 0:
        return None, "no items"
    psi, delta = (b + c) / n, (c - b) / n
    if delta == 0:
        return None, ("no observed difference between base and trained (b == c), so there is "
                      "no lift to power a test for")
    za, zb = _sps.norm.ppf(1 - alpha / 2), _sps.norm.ppf(power)
    need = (za * math.sqrt(psi) + zb * math.sqrt(max(0.0, psi - delta ** 2))) ** 2 / delta ** 2
    need = int(math.ceil(need - 1e-9))
    direction = "lift" if delta > 0 else "drop (trained below base)"
    return need, (f"{need} items give {power:.0%} power to detect the observed {direction} of "
                  f"{delta:+.3f} with discordant proportion {psi:.3f} by McNemar at two-sided "
                  f"alpha {alpha:g} (Connor 1987 normal approximation); this eval set has {n}")


def _as_bools(xs, name: str) -> list[bool]:
    out = []
    for i, x in enumerate(xs):
        if isinstance(x, (bool, np.bool_)) or x in (0, 1):
            out.append(bool(x))
        else:
            raise CaiError(f"{name}[{i}] = {x!r} is not a pass/fail value — use true/false or 1/0")
    return out


def paired_stats(base_pass: Sequence[bool], trained_pass: Sequence[bool], *, seed: int = 0,
                 n_bootstrap: int = 2000, alpha: float = 0.01) -> dict:
    """Every paired figure for one set of items (base_pass[i] and trained_pass[i] are item i)."""
    base = _as_bools(base_pass, "base_pass")
    trained = _as_bools(trained_pass, "trained_pass")
    if len(base) != len(trained):
        raise CaiError(f"base and trained have {len(base)} and {len(trained)} items — they must be paired")
    n = len(base)
    if n == 0:
        raise CaiError("no items to compare — the eval set is empty")
    both = sum(1 for x, y in zip(base, trained) if x and y)
    b = sum(1 for x, y in zip(base, trained) if x and not y)
    c = sum(1 for x, y in zip(base, trained) if y and not x)
    neither = n - both - b - c
    kb, kt = both + b, both + c
    pb, pt = kb / n, kt / n
    pn, note = power_n(b, c, n, alpha=alpha)
    return {
        "n": n,
        "base_pass": kb,
        "trained_pass": kt,
        "base_rate": _f(pb),
        "trained_rate": _f(pt),
        "base_ci": wilson(kb, n),
        "trained_ci": wilson(kt, n),
        "both_pass": both,
        "b": b,
        "c": c,
        "both_fail": neither,
        "mcnemar_p": mcnemar_exact(b, c),
        "cohens_h": cohens_h(pb, pt),
        "diff": _f((c - b) / n),
        # Table oriented trained-first so the interval is for trained − base.
        "diff_ci": newcombe_diff_ci(both, c, b, neither),
        "diff_ci_bootstrap": bootstrap_diff_ci(base, trained, seed=seed, n_bootstrap=n_bootstrap),
        "power_n": pn,
        "power_note": note,
    }


METHODS = {
    "base_ci/trained_ci": "Wilson score 95% (scipy binomtest.proportion_ci)",
    "mcnemar_p": "exact conditional McNemar, two-sided: binomtest(c, b+c, 0.5); 1 when b+c = 0",
    "cohens_h": "2*asin(sqrt(trained_rate)) - 2*asin(sqrt(base_rate))",
    "diff_ci": "Newcombe (1998) method 10 paired score interval, 95%, for trained_rate - base_rate",
    "diff_ci_bootstrap": "percentile bootstrap over items, 95%, numpy default_rng(seed)",
    "mcnemar_p_bh": "Benjamini-Hochberg across types (scipy false_discovery_control)",
    "power_n": "Connor (1987) items for McNemar at alpha, 80% power, observed discordant proportions",
}


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _index(records: Sequence[dict], field: str, name: str) -> dict:
    out: dict = {}
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise CaiError(f"{name}: record {i + 1} is {type(r).__name__}, not an object — pass scored records")
        if "id" not in r:
            raise CaiError(f"{name}: record {i + 1} has no 'id' — score the eval responses with `cai score`")
        # Ids pair the two files, so they must be plain values: a list cannot be looked
        # up and null would pair unrelated records.
        if not (isinstance(r["id"], str) and r["id"].strip()) and not _is_int(r["id"]):
            raise CaiError(f"{name}: record {i + 1} field 'id' is {r['id']!r} — ids must be non-empty strings "
                           f"(the eval item ids)")
        if field not in r:
            raise CaiError(f"{name}: record {r['id']!r} has no {field!r} field — score it with `cai score` first")
        v = r[field]
        if not (isinstance(v, bool) or v in (0, 1)):
            raise CaiError(f"{name}: record {r['id']!r} field {field!r} is {v!r}, expected true/false")
        if r["id"] in out:
            raise CaiError(f"{name}: id {r['id']!r} appears twice — each eval item must be scored once")
        out[r["id"]] = r
    return out


def stats_records(base_scored: Sequence[dict], trained_scored: Sequence[dict], field: str = "strict", *,
                  seed: int = 0, n_bootstrap: int = 2000, alpha: float = 0.01,
                  base_name: str = "base", trained_name: str = "trained") -> dict:
    """The `cai stats` summary: overall paired stats plus `by_type` with BH-adjusted p-values."""
    bi = _index(base_scored, field, base_name)
    ti = _index(trained_scored, field, trained_name)
    if not bi and not ti:
        raise CaiError(f"{base_name} and {trained_name} hold no records — the eval set is empty; "
                       "run the evaluation stage first")
    only_b = sorted(set(bi) - set(ti), key=str)
    only_t = sorted(set(ti) - set(bi), key=str)
    if only_b or only_t:
        parts = []
        if only_b:
            parts.append(f"{len(only_b)} only in {base_name} (e.g. {', '.join(map(str, only_b[:3]))})")
        if only_t:
            parts.append(f"{len(only_t)} only in {trained_name} (e.g. {', '.join(map(str, only_t[:3]))})")
        raise CaiError(f"ids do not pair up: {'; '.join(parts)} — both files must come from the same "
                       "eval set (rerun the evaluation for both models on the same items)")
    ids = list(bi)  # base file order: stable, so the bootstrap is reproducible
    for i in ids:
        for key in ("type", "instruction"):
            if key in bi[i] and key in ti[i] and bi[i][key] != ti[i][key]:
                raise CaiError(f"id {i!r} has a different {key!r} in {base_name} and {trained_name} — "
                               "both files must come from the same eval set")
    base = [bool(bi[i][field]) for i in ids]
    trained = [bool(ti[i][field]) for i in ids]
    out = {"field": field, "alpha": _f(alpha), "seed": int(seed), "n_bootstrap": int(n_bootstrap)}
    out.update(paired_stats(base, trained, seed=seed, n_bootstrap=n_bootstrap, alpha=alpha))
    types = Counter(str(bi[i].get("type", "untyped")) for i in ids)
    by_type = {}
    for t in sorted(types):
        sel = [k for k, i in enumerate(ids) if str(bi[i].get("type", "untyped")) == t]
        by_type[t] = paired_stats([base[k] for k in sel], [trained[k] for k in sel],
                                  seed=seed, n_bootstrap=n_bootstrap, alpha=alpha)
    adj = bh_adjust([by_type[t]["mcnemar_p"] for t in by_type])
    for t, p in zip(by_type, adj):
        by_type[t]["mcnemar_p_bh"] = p
    out["by_type"] = by_type
    out["methods"] = dict(METHODS)
    return out


def stats_files(base_path, trained_path, field: str = "strict", *, seed: int = 0,
                n_bootstrap: int = 2000, alpha: float = 0.01) -> dict:
    """Read two scored JSONL files and return `stats_records` (what `cai stats` prints)."""
    from .jsonl import read_jsonl
    base = read_jsonl(base_path, required=("id", field))
    trained = read_jsonl(trained_path, required=("id", field))
    if not base:
        raise CaiError(f"{base_path}: no scored records — the eval set is empty; run the evaluation first")
    if not trained:
        raise CaiError(f"{trained_path}: no scored records — the eval set is empty; run the evaluation first")
    return stats_records(base, trained, field, seed=seed, n_bootstrap=n_bootstrap, alpha=alpha,
                         base_name=str(base_path), trained_name=str(trained_path))
