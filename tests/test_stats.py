"""Every statistic against an independent computation on fixed tables.

References used: closed-form formulas computed here by hand (Wilson, Cohen's h,
McNemar as a binomial tail sum, Connor's sample size, BH step-up), and published
values from Fagerland, Lydersen & Laake, *Statistical Analysis of Contingency Tables*
(2017), ch. 8, for the Cavo et al. (2012) paired table [[59, 6], [16, 80]]:
McNemar exact conditional P = 0.052479, Newcombe square-and-add interval for
delta = -0.0621: (-0.1186, -0.0046).
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from cai_lib import stats as S
from cai_lib.cli import main
from cai_lib.errors import CaiError

Z = 1.959963984540054


def table(both, b, c, neither):
    """Base/trained pass lists for a paired table: b = base-only passes, c = trained-only."""
    base = [1] * both + [1] * b + [0] * c + [0] * neither
    trained = [1] * both + [0] * b + [1] * c + [0] * neither
    return base, trained


def hand_wilson(k, n, z=Z):
    p = k / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (47, 120), (1, 1), (199, 200)])
def test_wilson_matches_closed_form(k, n):
    lo, hi = S.wilson(k, n)
    hlo, hhi = hand_wilson(k, n)
    assert lo == pytest.approx(hlo, abs=1e-12)
    assert hi == pytest.approx(hhi, abs=1e-12)


def test_wilson_empty_is_caierror():
    with pytest.raises(CaiError):
        S.wilson(0, 0)


def hand_mcnemar(b, c):
    m = b + c
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, k) for k in range(min(b, c) + 1)) / 2 ** m
    return min(1.0, 2 * tail)


@pytest.mark.parametrize("b,c", [(0, 0), (2, 8), (8, 2), (5, 5), (0, 7), (6, 16), (13, 31), (1, 0)])
def test_mcnemar_matches_binomial_tail(b, c):
    p = S.mcnemar_exact(b, c)
    assert p == pytest.approx(hand_mcnemar(b, c), rel=1e-12)
    if b + c:
        assert p == pytest.approx(min(1.0, 2 * sps.binom.cdf(min(b, c), b + c, 0.5)), rel=1e-12)


def test_mcnemar_hand_table_and_published_value():
    # b=2, c=8: 2 * (C(10,0)+C(10,1)+C(10,2)) / 2^10 = 2 * 56 / 1024
    assert S.mcnemar_exact(2, 8) == pytest.approx(112 / 1024, rel=1e-12)
    # Cavo et al. 2012 (Fagerland et al. 2017, ch. 8): P = 0.052479
    assert S.mcnemar_exact(6, 16) == pytest.approx(0.052479, abs=5e-7)
    assert S.mcnemar_exact(0, 0) == 1.0


def test_cohens_h():
    assert S.cohens_h(0.5, 0.8) == pytest.approx(2 * math.asin(math.sqrt(0.8)) - math.pi / 2, abs=1e-12)
    assert S.cohens_h(0.5, 0.8) == pytest.approx(0.6435011, abs=1e-6)
    assert S.cohens_h(0.0, 1.0) == pytest.approx(math.pi)
    assert S.cohens_h(1.0, 0.0) == pytest.approx(-math.pi)
    assert S.cohens_h(0.3, 0.3) == 0.0


def test_newcombe_published_example():
    # Fagerland, Lydersen & Laake (2017) ch. 8, Cavo et al. 2012: -0.0621 (-0.1186 to -0.0046)
    lo, hi = S.newcombe_diff_ci(59, 6, 16, 80)
    assert round(lo, 4) == -0.1186
    assert round(hi, 4) == -0.0046
    assert lo < (6 - 16) / 161 < hi


def hand_newcombe(n11, n12, n21, n22):
    """Independent transcription of Newcombe (1998) method 10 (delta/epsilon form)."""
    N = n11 + n12 + n21 + n22
    A, B, C, D = n11, n12, n21, n22
    p1, p2 = (A + B) / N, (A + C) / N
    l1, u1 = hand_wilson(A + B, N)
    l2, u2 = hand_wilson(A + C, N)
    e, f, g, h = A + B, C + D, A + C, B + D
    num = A * D - B * C
    if e * f * g * h == 0:
        phi = 0.0
    elif num > N / 2:
        phi = (num - N / 2) / math.sqrt(e * f * g * h)
    elif num >= 0:
        phi = 0.0
    else:
        phi = num / math.sqrt(e * f * g * h)
    dl = math.sqrt((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2)
    du = math.sqrt((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2)
    return p1 - p2 - dl, p1 - p2 + du


@pytest.mark.parametrize("t", [(59, 6, 16, 80), (12, 2, 9, 7), (0, 3, 1, 20), (5, 0, 0, 5),
                               (3, 9, 1, 2), (1, 1, 7, 12)])
def test_newcombe_matches_independent_transcription(t):
    lo, hi = S.newcombe_diff_ci(*t)
    hlo, hhi = hand_newcombe(*t)
    assert lo == pytest.approx(hlo, abs=1e-12)
    assert hi == pytest.approx(hhi, abs=1e-12)


def test_newcombe_without_correlation_is_square_and_add():
    # All items in one marginal class -> phi = 0: plain Newcombe square-and-add of Wilson widths.
    lo, hi = S.newcombe_diff_ci(0, 0, 4, 16)  # p1 = 0, p2 = 0.2
    l2, u2 = hand_wilson(4, 20)
    l1, u1 = hand_wilson(0, 20)
    assert lo == pytest.approx(-0.2 - math.hypot(0 - l1, u2 - 0.2), abs=1e-12)
    assert hi == pytest.approx(-0.2 + math.hypot(u1 - 0, 0.2 - l2), abs=1e-12)


def test_paired_stats_orientation_and_figures():
    base, trained = table(25, 5, 60, 10)  # n = 100
    s = S.paired_stats(base, trained, seed=1, n_bootstrap=500)
    assert (s["n"], s["b"], s["c"], s["both_pass"], s["both_fail"]) == (100, 5, 60, 25, 10)
    assert s["base_rate"] == 0.30 and s["trained_rate"] == 0.85
    assert s["diff"] == pytest.approx(0.55)
    assert s["base_ci"] == pytest.approx(list(hand_wilson(30, 100)), abs=1e-12)
    assert s["trained_ci"] == pytest.approx(list(hand_wilson(85, 100)), abs=1e-12)
    assert s["mcnemar_p"] == pytest.approx(hand_mcnemar(5, 60), rel=1e-9)
    # trained - base: table oriented trained-first (n12 = trained-only passes = c).
    assert s["diff_ci"] == pytest.approx(list(hand_newcombe(25, 60, 5, 10)), abs=1e-12)
    assert s["diff_ci"][0] < 0.55 < s["diff_ci"][1]
    assert s["cohens_h"] == pytest.approx(2 * math.asin(math.sqrt(0.85)) - 2 * math.asin(math.sqrt(0.3)))


def _plain(x):
    if isinstance(x, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in x.items())
    if isinstance(x, list):
        return all(_plain(v) for v in x)
    return x is None or type(x) in (int, float, str, bool)


def test_outputs_are_plain_json_types():
    base, trained = table(3, 2, 7, 8)
    s = S.paired_stats(base, trained, n_bootstrap=200)
    assert _plain(s)
    json.dumps(s)


def test_bootstrap_reproducible_contains_estimate_and_matches_normal_approx():
    base, trained = table(150, 30, 90, 130)  # n = 400, diff = 0.15
    a = S.bootstrap_diff_ci(base, trained, seed=7, n_bootstrap=2000)
    b = S.bootstrap_diff_ci(base, trained, seed=7, n_bootstrap=2000)
    c = S.bootstrap_diff_ci(base, trained, seed=8, n_bootstrap=2000)
    assert a == b
    assert a != c
    assert a[0] < 0.15 < a[1]
    # Independent check: the paired Wald interval diff ± z·sd(d_i)/√n, d_i ∈ {-1, 0, 1}.
    n, psi, d = 400, 120 / 400, 0.15
    half = Z * math.sqrt(psi - d * d) / math.sqrt(n)
    assert a[0] == pytest.approx(d - half, abs=0.012)
    assert a[1] == pytest.approx(d + half, abs=0.012)


def test_bootstrap_degenerate_tables():
    assert S.bootstrap_diff_ci([1] * 9, [1] * 9, n_bootstrap=100) == [0.0, 0.0]
    assert S.bootstrap_diff_ci([0] * 9, [1] * 9, n_bootstrap=100) == [1.0, 1.0]


def hand_bh(ps):
    m = len(ps)
    order = sorted(range(m), key=lambda i: ps[i])
    adj = [0.0] * m
    running = 1.0
    for rank in range(m, 0, -1):  # step-up: cumulative min from the largest p down
        i = order[rank - 1]
        running = min(running, ps[i] * m / rank)
        adj[i] = running
    return adj


@pytest.mark.parametrize("ps", [[0.01, 0.04, 0.03, 0.2], [0.5], [1.0, 1.0, 0.001], [0.02, 0.02, 0.9, 0.04, 0.0001]])
def test_bh_matches_independent_step_up(ps):
    assert S.bh_adjust(ps) == pytest.approx(hand_bh(ps), abs=1e-12)
    assert S.bh_adjust([]) == []


def test_power_matches_connor_formula_by_hand():
    # b = 5, c = 20, n = 100: psi = 0.25, delta = 0.15
    za, zb = 2.5758293035489, 0.8416212335729
    expect = math.ceil((za * math.sqrt(0.25) + zb * math.sqrt(0.25 - 0.15 ** 2)) ** 2 / 0.15 ** 2)
    n, note = S.power_n(5, 20, 100, alpha=0.01)
    assert n == expect == 127  # 1.68935**2 / 0.0225 = 126.8
    assert "Connor" in note and "127" in note


def test_power_roughly_delivers_80_percent_by_simulation():
    # Simulate McNemar (exact) at the recommended n with the same cell probabilities.
    b, c, n0 = 6, 24, 100
    n, _ = S.power_n(b, c, n0, alpha=0.01)
    rng = np.random.default_rng(0)
    cells = rng.multinomial(n, [b / n0, c / n0, 1 - (b + c) / n0], size=4000)
    bb, cc = cells[:, 0], cells[:, 1]
    m = bb + cc
    p = np.minimum(1.0, 2 * sps.binom.cdf(np.minimum(bb, cc), m, 0.5))
    p[m == 0] = 1.0
    power = np.mean((p < 0.01) & (cc > bb))
    # Exact McNemar is conservative next to the normal approximation: allow 0.70-0.90.
    assert 0.70 <= power <= 0.90


def test_power_zero_lift_is_none_with_reason():
    n, note = S.power_n(4, 4, 50)
    assert n is None and "no observed difference" in note
    s = S.paired_stats(*table(10, 0, 0, 10), n_bootstrap=50)
    assert s["power_n"] is None and s["power_note"]


def test_edge_all_pass_all_fail_and_no_discordant():
    for both, neither in ((20, 0), (0, 20), (7, 13)):
        s = S.paired_stats(*table(both, 0, 0, neither), n_bootstrap=100)
        assert s["b"] == s["c"] == 0
        assert s["mcnemar_p"] == 1.0
        assert s["cohens_h"] == 0.0 and s["diff"] == 0.0
        assert s["diff_ci"][0] < 0 < s["diff_ci"][1]
        assert s["diff_ci_bootstrap"] == [0.0, 0.0]
    s = S.paired_stats(*table(20, 0, 0, 0), n_bootstrap=100)
    assert s["base_ci"][1] == 1.0 and s["base_ci"][0] == pytest.approx(hand_wilson(20, 20)[0])
    s = S.paired_stats(*table(0, 0, 0, 20), n_bootstrap=100)
    assert s["trained_ci"][0] == 0.0
    # Base fails everything, trained passes everything: maximal effect.
    s = S.paired_stats(*table(0, 0, 12, 0), n_bootstrap=100)
    assert s["mcnemar_p"] == pytest.approx(2 * 0.5 ** 12)
    assert s["cohens_h"] == pytest.approx(math.pi)
    assert s["diff"] == 1.0 and s["diff_ci"][1] == pytest.approx(1.0)


def test_paired_stats_rejects_bad_input():
    with pytest.raises(CaiError):
        S.paired_stats([], [])
    with pytest.raises(CaiError):
        S.paired_stats([1, 0], [1])
    with pytest.raises(CaiError):
        S.paired_stats(["yes"], [True])


def recs(pairs, field="strict"):
    return [{"id": i, "type": t, "instruction": f"do {i}", field: v} for i, t, v in pairs]


def _scored_tables():
    base, trained = [], []
    spec = {"qa": (10, 2, 12, 6), "completion": (5, 1, 3, 11), "generation": (0, 0, 0, 8)}
    for t, (both, b, c, neither) in spec.items():
        bl, tl = table(both, b, c, neither)
        for k, (x, y) in enumerate(zip(bl, tl)):
            base.append({"id": f"{t}-{k}", "type": t, "instruction": f"{t} {k}", "strict": bool(x)})
            trained.append({"id": f"{t}-{k}", "type": t, "instruction": f"{t} {k}", "strict": bool(y)})
    return base, trained, spec


def test_stats_records_pairs_by_id_and_adjusts_by_type():
    base, trained, spec = _scored_tables()
    s = S.stats_records(base, list(reversed(trained)), "strict", seed=3, n_bootstrap=300)
    assert s["n"] == sum(sum(v) for v in spec.values())
    assert s["b"] == 3 and s["c"] == 15
    assert set(s["by_type"]) == set(spec)
    for t, (both, b, c, neither) in spec.items():
        assert (s["by_type"][t]["b"], s["by_type"][t]["c"]) == (b, c)
        assert s["by_type"][t]["mcnemar_p"] == pytest.approx(hand_mcnemar(b, c))
    ts = list(s["by_type"])
    adj = hand_bh([s["by_type"][t]["mcnemar_p"] for t in ts])
    for t, a in zip(ts, adj):
        assert s["by_type"][t]["mcnemar_p_bh"] == pytest.approx(a)
    assert _plain(s)
    # Order of the trained file does not matter; seed makes the bootstrap reproducible.
    s2 = S.stats_records(base, trained, "strict", seed=3, n_bootstrap=300)
    assert s2["diff_ci_bootstrap"] == s["diff_ci_bootstrap"]


def test_stats_records_bad_input():
    base, trained, _ = _scored_tables()
    with pytest.raises(CaiError, match="same eval set"):
        S.stats_records(base, trained[:-2])
    with pytest.raises(CaiError, match="empty"):
        S.stats_records([], [])
    with pytest.raises(CaiError, match="twice"):
        S.stats_records(base + base[:1], trained)
    with pytest.raises(CaiError, match="loose"):
        S.stats_records(base, trained, "loose")
    bad = [dict(r) for r in trained]
    bad[0]["instruction"] = "something else"
    with pytest.raises(CaiError, match="same eval set"):
        S.stats_records(base, bad)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_cli_stats_prints_contract_json(tmp_path, capsys):
    base, trained, _ = _scored_tables()
    a, b = _write(tmp_path / "b.jsonl", base), _write(tmp_path / "t.jsonl", trained)
    assert main(["stats", a, b]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("n", "base_rate", "trained_rate", "base_ci", "trained_ci", "b", "c", "mcnemar_p",
                "cohens_h", "diff_ci", "by_type"):
        assert key in out
    assert out["by_type"]["qa"]["mcnemar_p_bh"] >= out["by_type"]["qa"]["mcnemar_p"]
    assert out == S.stats_files(a, b)


@pytest.mark.parametrize("case", ["unpaired", "empty", "missing_field"])
def test_cli_stats_bad_input_one_line(tmp_path, capsys, case):
    base, trained, _ = _scored_tables()
    if case == "unpaired":
        trained = trained[:-1] + [dict(trained[-1], id="other-1")]
    elif case == "empty":
        base, trained = [], []
    else:
        trained = [{k: v for k, v in r.items() if k != "strict"} for r in trained]
    a, b = _write(tmp_path / "b.jsonl", base), _write(tmp_path / "t.jsonl", trained)
    assert main(["stats", a, b]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("cai stats: error:") and "\n" not in err
    if case == "unpaired":
        assert "same eval set" in err and "other-1" in err


def test_modules_do_not_import_torch():
    code = ("import sys, cai_lib.stats, cai_lib.gate, cai_lib.spot_check; "
            "print('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[1], check=True)
    assert r.stdout.strip() == "False"
