"""Spot-check CSV: seeded sample, label validation, labels survive a rewrite, kappa."""

import csv

import pytest

from cai_lib.errors import CaiError
from cai_lib.spot_check import (COLUMNS, cohens_kappa, read_spot_check, spot_check_agreement,
                                write_spot_check)


def scored(model, n=30):
    out = []
    for i in range(n):
        strict = (i % 3 == 0) if model == "base" else (i % 4 != 0)
        out.append({"id": f"qa-{i:03d}", "type": "qa", "instruction": f"Question {i}?",
                    "response": f"{model} answer {i},\nsecond line \"quoted\"", "strict": strict,
                    "loose": strict or i % 5 == 0, "form": True})
    return out


def rows_of(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def fill(path, labels):
    """Write `labels` ({row index: label}) into the human column, like a researcher would."""
    rows = rows_of(path)
    for k, v in labels.items():
        rows[k]["human"] = v
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_write_is_seeded_and_complete(tmp_path):
    p1, p2, p3 = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "c.csv"
    info = write_spot_check(scored("base"), scored("trained"), p1, n=12, seed=5)
    write_spot_check(scored("base"), scored("trained"), p2, n=12, seed=5)
    write_spot_check(scored("base"), scored("trained"), p3, n=12, seed=6)
    assert info["rows"] == 12 and info["sampled"] == 12
    assert p1.read_text() == p2.read_text()
    assert p1.read_text() != p3.read_text()
    rows = rows_of(p1)
    assert list(rows[0]) == COLUMNS
    assert all(r["human"] == "" for r in rows)
    assert {r["model"] for r in rows} <= {"base", "trained"}
    assert len({(r["id"], r["model"]) for r in rows}) == 12
    # Multi-line responses with quotes survive the CSV round trip.
    src = {(r["id"], m): r for m in ("base", "trained") for r in scored(m)}
    for r in rows:
        rec = src[(r["id"], r["model"])]
        assert r["response"] == rec["response"]
        assert r["scorer_strict"] == ("pass" if rec["strict"] else "fail")
    assert not [f for f in tmp_path.iterdir() if f.name.endswith(".tmp")]


def test_n_larger_than_pool_takes_everything(tmp_path):
    info = write_spot_check(scored("base", 3), scored("trained", 3), tmp_path / "s.csv", n=50, seed=0)
    assert info["rows"] == 6


def test_rewrite_keeps_human_labels(tmp_path):
    p = tmp_path / "spot.csv"
    write_spot_check(scored("base"), scored("trained"), p, n=10, seed=1)
    fill(p, {0: "PASS", 3: "no", 7: " 1 "})
    before = rows_of(p)
    labelled = {(r["id"], r["model"]): r for r in before if r["human"].strip()}
    # Same sample again: identical rows, labels kept.
    write_spot_check(scored("base"), scored("trained"), p, n=10, seed=1)
    after = rows_of(p)
    got = {(r["id"], r["model"]): r for r in after if r["human"]}
    assert set(got) == set(labelled) and len(after) == 10
    assert {k: (r["response"], r["scorer_strict"]) for k, r in got.items()} == \
           {k: (r["response"], r["scorer_strict"]) for k, r in labelled.items()}
    # A different seed (or changed responses) keeps the labelled rows as they were labelled.
    changed = [dict(r, response="new text", strict=not r["strict"]) for r in scored("trained")]
    info = write_spot_check(scored("base"), changed, p, n=10, seed=99)
    assert info["kept_labelled"] == 3 and info["rows"] == 10
    again = {(r["id"], r["model"]): r for r in rows_of(p) if r["human"]}
    assert {k: r["response"] for k, r in again.items()} == {k: r["response"] for k, r in labelled.items()}
    assert len({(r["id"], r["model"]) for r in rows_of(p)}) == 10


def test_labels_parsed_case_insensitively(tmp_path):
    p = tmp_path / "spot.csv"
    write_spot_check(scored("base"), scored("trained"), p, n=9, seed=2)
    fill(p, {0: "Pass", 1: "FAIL", 2: "yes", 3: "No", 4: "1", 5: "0", 6: "TRUE", 7: "false", 8: ""})
    rows = read_spot_check(p)
    assert [r["human"] for r in rows] == [True, False, True, False, True, False, True, False, None]


def test_unexpected_label_is_one_line_naming_file_row_and_allowed(tmp_path):
    p = tmp_path / "spot.csv"
    write_spot_check(scored("base"), scored("trained"), p, n=5, seed=2)
    fill(p, {2: "maybe"})
    with pytest.raises(CaiError) as e:
        read_spot_check(p)
    msg = str(e.value)
    assert str(p) in msg and "row 3" in msg and "'maybe'" in msg and "pass/fail" in msg
    assert "\n" not in msg
    with pytest.raises(CaiError):
        spot_check_agreement(p)


def test_missing_column_and_missing_file(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("id,model\nqa-1,base\n")
    with pytest.raises(CaiError, match="human"):
        read_spot_check(p)
    with pytest.raises(CaiError, match="not found"):
        read_spot_check(tmp_path / "none.csv")


def test_agreement_without_labels(tmp_path):
    p = tmp_path / "spot.csv"
    write_spot_check(scored("base"), scored("trained"), p, n=6, seed=0)
    a = spot_check_agreement(p)
    assert a["n_labelled"] == 0 and a["kappa"] is None and a["agreement"] is None


def kappa_closed_form(a, b, c, d):
    """kappa = 2(ad - bc) / ((a+b)(b+d) + (a+c)(c+d)) — algebraically independent form."""
    return 2 * (a * d - b * c) / ((a + b) * (b + d) + (a + c) * (c + d))


def test_kappa_textbook_and_closed_form():
    # Textbook 2x2 (both yes 20, A yes/B no 5, A no/B yes 10, both no 15): po .7, pe .5, kappa .4
    pairs = [(True, True)] * 20 + [(True, False)] * 5 + [(False, True)] * 10 + [(False, False)] * 15
    assert cohens_kappa(pairs) == pytest.approx(0.4)
    for a, b, c, d in [(20, 5, 10, 15), (3, 0, 1, 9), (1, 6, 4, 2), (12, 2, 2, 12)]:
        pairs = [(True, True)] * a + [(True, False)] * b + [(False, True)] * c + [(False, False)] * d
        assert cohens_kappa(pairs) == pytest.approx(kappa_closed_form(a, b, c, d), abs=1e-12)
    assert cohens_kappa([(True, True)] * 4) is None  # single class: kappa undefined


def _label_against_scorer(p, flip):
    rows = rows_of(p)
    labels = {}
    for k, r in enumerate(rows):
        s = r["scorer_strict"] == "pass"
        labels[k] = ("pass" if (s != (k in flip)) else "fail")
    fill(p, labels)
    return rows


def test_agreement_kappa_and_warning(tmp_path):
    p = tmp_path / "spot.csv"
    write_spot_check(scored("base"), scored("trained"), p, n=20, seed=4)
    rows = _label_against_scorer(p, flip=set())
    a = spot_check_agreement(p)
    assert a["n_labelled"] == 20 and a["agreement"] == 1.0 and a["kappa"] == pytest.approx(1.0)
    assert a["warning"] is None
    rows = _label_against_scorer(p, flip={0, 1, 2, 3, 4, 5})
    a = spot_check_agreement(p)
    s = [r["scorer_strict"] == "pass" for r in rows]
    h = [si != (k in {0, 1, 2, 3, 4, 5}) for k, si in enumerate(s)]
    cells = [sum(1 for x, y in zip(s, h) if (x, y) == q)
             for q in ((True, True), (True, False), (False, True), (False, False))]
    assert a["agreement"] == pytest.approx(14 / 20)
    assert a["kappa"] == pytest.approx(kappa_closed_form(*cells), abs=1e-12)
    assert a["kappa"] < 0.7 and "kappa" in a["warning"]
    assert sum(a["confusion"].values()) == 20
