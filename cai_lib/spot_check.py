"""Human spot-check of the scorer: sample responses to a CSV, read labels back, agreement.

The scorer is a set of regex-level checks; a human reading a seeded sample of
responses tells whether its verdicts can be trusted. Cohen's kappa (not raw
agreement) is reported because most responses of a weak model fail, and a scorer
that says "fail" to everything would agree often by chance alone. Below kappa 0.7
the report warns that the scorer's rates should not be taken at face value.

A filled-in CSV is human work: writing the spot check again keeps every labelled row
exactly as it was labelled (response and scorer verdicts included, so the label still
describes the text next to it) and only adds newly sampled rows for other responses.
"""

from __future__ import annotations

import csv
import io
import random
from pathlib import Path
from typing import Sequence

from .errors import CaiError
from .jsonl import write_text

COLUMNS = ["id", "model", "type", "instruction", "response",
           "scorer_strict", "scorer_loose", "scorer_form", "human"]
_TRUE = {"pass", "1", "yes", "true"}
_FALSE = {"fail", "0", "no", "false"}
ALLOWED = "pass/fail, yes/no, 1/0, true/false (any case) or empty"


def _label(v) -> str:
    if v is None:
        return ""
    return "pass" if bool(v) else "fail"


def _parse(value: str, path, row: int, rid: str, col: str):
    s = (value or "").strip().lower()
    if s == "":
        return None
    if s in _TRUE:
        return True
    if s in _FALSE:
        return False
    raise CaiError(f"{path}: row {row} (id {rid!r}) column {col!r} has {value!r} — allowed labels: {ALLOWED}")


def read_spot_check(path) -> list[dict]:
    """Read and validate a spot-check CSV; scorer and human columns become True/False/None."""
    path = Path(path)
    if not path.exists():
        raise CaiError(f"{path}: file not found — the report writes it (results/spot_check.csv)")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        missing = [c for c in ("id", "model", "human") if c not in header]
        if missing:
            raise CaiError(f"{path}: missing column {missing[0]!r} — expected columns {COLUMNS}")
        rows = []
        for k, r in enumerate(reader, start=1):
            rid = r.get("id") or ""
            out = dict(r)
            for col in ("scorer_strict", "scorer_loose", "scorer_form", "human"):
                if col in r:
                    out[col] = _parse(r[col], path, k, rid, col)
            rows.append(out)
    return rows


def _atomic_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    write_text(path, buf.getvalue())


def _row(rec: dict, model: str) -> dict:
    return {
        "id": rec.get("id", ""), "model": model, "type": rec.get("type", ""),
        "instruction": rec.get("instruction", ""), "response": rec.get("response", ""),
        "scorer_strict": _label(rec.get("strict")), "scorer_loose": _label(rec.get("loose")),
        "scorer_form": _label(rec.get("form")), "human": "",
    }


def write_spot_check(scored_base: Sequence[dict], scored_trained: Sequence[dict], path, n: int,
                     seed: int = 0) -> dict:
    """Sample `n` responses (seeded, from both models pooled) into a CSV with an empty `human` column.

    Rows already labelled in an existing file are kept unchanged; their (id, model) is not
    sampled again. Returns {path, rows, kept_labelled, sampled}.
    """
    if n < 1:
        raise CaiError(f"spot check size must be >= 1, got {n} — set spot_check_n in the profile")
    path = Path(path)
    kept: list[dict] = []
    if path.exists():
        kept = [r for r in read_spot_check(path) if r.get("human") is not None]
    kept_keys = {(str(r["id"]), r["model"]) for r in kept}
    pool = [(rec, "base") for rec in scored_base] + [(rec, "trained") for rec in scored_trained]
    pool = [(rec, m) for rec, m in pool if (str(rec.get("id", "")), m) not in kept_keys]
    want = max(0, n - len(kept))
    picked = random.Random(seed).sample(range(len(pool)), min(want, len(pool)))
    new_rows = [_row(*pool[i]) for i in sorted(picked)]
    # Labelled rows go back as they were read (booleans rendered as labels again).
    old_rows = [{k: (_label(v) if k.startswith("scorer_") or k == "human" else v) for k, v in r.items()}
                for r in kept]
    _atomic_csv(path, old_rows + new_rows)
    return {"path": str(path), "rows": len(old_rows) + len(new_rows), "kept_labelled": len(old_rows),
            "sampled": len(new_rows)}


def cohens_kappa(pairs: Sequence[tuple[bool, bool]]) -> float | None:
    """Cohen's kappa for two binary raters; None when chance agreement is 1 (kappa undefined)."""
    n = len(pairs)
    if n == 0:
        return None
    po = sum(1 for a, b in pairs if a == b) / n
    pa = sum(1 for a, _ in pairs if a) / n
    pb = sum(1 for _, b in pairs if b) / n
    pe = pa * pb + (1 - pa) * (1 - pb)
    if pe >= 1:
        return None
    return float((po - pe) / (1 - pe))


def spot_check_agreement(path, field: str = "strict", *, min_kappa: float = 0.7) -> dict:
    """Agreement and Cohen's kappa between the scorer's `field` verdict and the human labels."""
    col = f"scorer_{field}"
    rows = read_spot_check(path)
    if rows and col not in rows[0]:
        raise CaiError(f"{path}: no column {col!r} — expected columns {COLUMNS}")
    pairs = []
    for k, r in enumerate(rows, start=1):
        if r["human"] is None:
            continue
        if r[col] is None:
            raise CaiError(f"{path}: row {k} (id {r['id']!r}) is labelled but {col!r} is empty — "
                           "regenerate the spot check")
        pairs.append((r[col], r["human"]))
    out = {"path": str(path), "field": field, "rows": len(rows), "n_labelled": len(pairs),
           "agreement": None, "kappa": None, "warning": None,
           "confusion": {"scorer_pass_human_pass": 0, "scorer_pass_human_fail": 0,
                         "scorer_fail_human_pass": 0, "scorer_fail_human_fail": 0}}
    if not pairs:
        out["warning"] = "no human labels yet — fill the 'human' column with pass/fail"
        return out
    for s, h in pairs:
        out["confusion"][f"scorer_{'pass' if s else 'fail'}_human_{'pass' if h else 'fail'}"] += 1
    out["agreement"] = sum(1 for s, h in pairs if s == h) / len(pairs)
    out["kappa"] = cohens_kappa(pairs)
    if out["kappa"] is None:
        out["warning"] = ("kappa undefined: scorer and human each gave a single verdict to every "
                          "labelled row — label a sample with both passes and failures")
    elif out["kappa"] < min_kappa:
        out["warning"] = (f"kappa {out['kappa']:.2f} < {min_kappa:g}: the scorer disagrees with the "
                          "human labels too often to trust its rates")
    return out
