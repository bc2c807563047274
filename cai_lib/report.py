"""Tables and figures for the stage notebooks (display only: stage entries in
`cai_lib/stages/` write and record; stage 04's judgement is `gate.run_gate`).

Notebooks stay thin: each table or figure is one call here. Intervals are Wilson 95%
(cai_lib.stats.wilson); the same function feeds `cai stats`, so a number in the report
and on the command line cannot disagree.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from .jsonl import read_json, read_jsonl
from .stats import wilson

FIELDS = ("strict", "loose", "form")


def _pd():
    import pandas as pd
    return pd


def _plt():
    import matplotlib
    matplotlib.use("Agg") if not _in_notebook() else None
    import matplotlib.pyplot as plt
    return plt


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
        return get_ipython() is not None
    except ImportError:
        return False


def _rate_ci(records: list[dict], field: str) -> tuple[float, float, float]:
    """(rate, Wilson low, Wilson high) of a success field over non-empty records."""
    k = sum(bool(r.get(field)) for r in records)
    lo, hi = wilson(k, len(records))
    return k / len(records), lo, hi


def rates_frame(records: list[dict], by: list[str] | None = None, fields=FIELDS):
    """n, rate and Wilson CI of each success field, overall or per group."""
    pd = _pd()
    groups: dict = {}
    for r in records:
        key = tuple(r.get(b) for b in by) if by else ("all",)
        groups.setdefault(key, []).append(r)
    rows = []
    for key, rs in sorted(groups.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        row = dict(zip(by or ["group"], key))
        row["n"] = len(rs)
        for f in fields:
            row[f], lo, hi = _rate_ci(rs, f)
            row[f"{f}_ci"] = f"[{lo:.2f}, {hi:.2f}]"
            row[f"_{f}_lo"], row[f"_{f}_hi"] = lo, hi
        rows.append(row)
    df = pd.DataFrame(rows)
    return df


def bar_chart(df, group: str, fields=FIELDS, title: str = ""):
    """Grouped bars with Wilson error bars; `df` from rates_frame."""
    plt = _plt()
    import numpy as np
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(df)), 3.6))
    x = np.arange(len(df))
    width = 0.8 / len(fields)
    for i, f in enumerate(fields):
        rate = df[f].to_numpy()
        err = np.vstack([rate - df[f"_{f}_lo"].to_numpy(), df[f"_{f}_hi"].to_numpy() - rate])
        ax.bar(x + i * width - 0.4 + width / 2, rate, width, yerr=err, capsize=3, label=f)
    ax.set_xticks(x, [str(v) for v in df[group]])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success rate")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


def failure_counts(records: list[dict], by: str | None = None):
    """How often each check/detector failed (strict), overall or per group."""
    pd = _pd()
    counts: dict = {}
    for r in records:
        g = r.get(by) if by else "all"
        for name in r.get("failures", []):
            counts.setdefault(name, Counter())[g] += 1
    df = pd.DataFrame({k: dict(v) for k, v in counts.items()}).T.fillna(0).astype(int)
    return df.sort_index()


def sample_frame(records: list[dict], n: int = 8, seed: int = 0, cols=("id", "type", "instruction", "response",
                                                                          "finish_reason", "strict", "loose", "form")):
    pd = _pd()
    rs = list(records)
    random.Random(seed).shuffle(rs)
    return pd.DataFrame([{c: r.get(c) for c in cols} for r in rs[:n]])


def pair_length_chart(pairs: list[dict]):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ch = [len(p["chosen"].split()) for p in pairs]
    rj = [len(p["rejected"].split()) for p in pairs]
    if ch:
        bins = range(0, max(ch + rj) + 5, 4)
        ax.hist(rj, bins=bins, alpha=0.6, label="rejected")
        ax.hist(ch, bins=bins, alpha=0.6, label="chosen")
    ax.set_xlabel("words")
    ax.set_ylabel("pairs")
    ax.set_title("Chosen vs rejected length")
    ax.legend()
    fig.tight_layout()
    return fig


def pairs_frame(pairs: list[dict], n: int = 6, seed: int = 0):
    return sample_frame(pairs, n, seed, cols=("item_id", "type", "prompt", "chosen", "rejected"))


def training_curves(training_log):
    """Loss and reward margin against step: results/training_log.json's content, or its path."""
    plt = _plt()
    log = training_log if isinstance(training_log, dict) else read_json(training_log)
    steps = [s for s in log.get("steps", []) if s.get("loss") is not None]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    x = [s["step"] for s in steps]
    axes[0].plot(x, [s["loss"] for s in steps], marker=".")
    axes[0].set_title("DPO loss")
    axes[1].plot(x, [s.get("reward_margin") for s in steps], marker=".", color="tab:green")
    axes[1].set_title("reward margin (chosen − rejected)")
    for ax in axes:
        ax.set_xlabel("step")
    fig.tight_layout()
    return fig


# ---- stage 03 / 04 ------------------------------------------------------------------------

def models_rates_frame(by_model: dict):
    """Rates and Wilson CIs per model, overall (type "all") and per item type."""
    pd = _pd()
    frames = []
    for name, recs in by_model.items():
        df = rates_frame(recs)
        df["type"] = "all"
        df = df.drop(columns=["group"])
        both = pd.concat([df, rates_frame(recs, by=["type"])], ignore_index=True)
        both.insert(0, "model", name)
        frames.append(both)
    rates = pd.concat(frames, ignore_index=True)
    return rates[["model", "type"] + [c for c in rates.columns if c not in ("model", "type")]]


def eval_rates_frame(arms: dict):
    """Stage 03's base and trained records (its result's "arms") as a models_rates_frame."""
    return models_rates_frame({"base": arms["base"], "trained": arms["trained"]})


def run_warnings(run_dir) -> list[str]:
    """Warnings a reader of the verdict must see, gathered from the stages' own records."""
    from . import manifest, views
    from .runs import run_paths
    stages_rec = manifest.load(run_dir).get("stages", {})
    out = []
    paths = run_paths(run_dir)
    cert = read_json(paths.eval_summary).get("certificate") if paths.eval_summary.exists() else None
    for key, where in (("00", "stage 00 (base model, baseline prompts)"), ("03", "stage 03 (evaluation)")):
        if key == "03" and cert:  # the certificate speaks for stage 03: the same sample, plus the rates
            out += views.certificate_warnings(cert, where)
            continue
        out += views.determinism_warnings((stages_rec.get(key) or {}).get("determinism"), where)
    pair_stats = paths.pair_stats
    if pair_stats.exists():
        out += views.pair_warnings(read_json(pair_stats))
    return out


def model_bar_chart(rates_df):
    """Base vs trained, per success field, with Wilson bars (rates_df from models_rates_frame)."""
    plt = _plt()
    import numpy as np
    overall = rates_df[rates_df["type"] == "all"] if "type" in rates_df else rates_df
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    x = np.arange(len(FIELDS))
    for i, (_, row) in enumerate(overall.iterrows()):
        rate = np.array([row[f] for f in FIELDS])
        lo = np.array([row[f"_{f}_lo"] for f in FIELDS])
        hi = np.array([row[f"_{f}_hi"] for f in FIELDS])
        ax.bar(x + (i - 0.5) * 0.38, rate, 0.38, yerr=[rate - lo, hi - rate], capsize=4, label=row["model"])
    ax.set_xticks(x, FIELDS)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success rate")
    ax.set_title("Base vs trained on the same raw instructions (Wilson 95% CI)")
    ax.legend()
    fig.tight_layout()
    return fig


def report_frames(paths, cfg, base: list[dict], trained: list[dict], judged: dict, spot_check) -> dict:
    """What stage 04 shows, from its inputs and `gate.run_gate`'s judgement (nothing written):
    the keys `views.verdict_box`, `examples_frame` and the notebook read."""
    pd = _pd()
    trained_by_id = {r["id"]: r for r in trained}
    paired = [(b, trained_by_id[b["id"]]) for b in base if b["id"] in trained_by_id]
    failures = pd.concat({"base": failure_counts(base).sum(axis=1) if base else pd.Series(dtype=int),
                          "trained": failure_counts(trained).sum(axis=1) if trained else pd.Series(dtype=int)},
                         axis=1).fillna(0).astype(int)
    return {"stats": judged["all_stats"][cfg.gate_field], "all_stats": judged["all_stats"], "gate": judged["gate"],
            "rates": models_rates_frame({"base": base, "trained": trained}),
            "paired": paired, "field": cfg.gate_field, "failures": failures,
            "vs_baseline": vs_baseline_frame(paths, trained, cfg.gate_field),
            "spot_check": spot_check, "seed": cfg.seed, "in_context": judged["in_context"]}


def vs_baseline_frame(paths, trained: list[dict], field: str):
    """Trained model on raw instructions next to the base model in each baseline format,
    for every success measure: does training beat the best *formatted* base prompt?"""
    pd = _pd()
    groups = []
    if paths.baseline.exists():
        bl = read_jsonl(paths.baseline)
        for fmt in sorted({r["format"] for r in bl}):
            groups.append((f"base · {fmt}", "starter items", [r for r in bl if r["format"] == fmt]))
    groups.append(("trained · raw", "held-out eval set", trained))
    rows = []
    for name, items, rs in groups:
        row = {"model": name, "items": items, "n": len(rs)}
        for f in FIELDS:
            if rs:
                rate, lo, hi = _rate_ci(rs, f)
                row[f] = f"{rate:.2f} [{lo:.2f}, {hi:.2f}]"
            else:
                row[f] = "—"
        rows.append(row)
    df = pd.DataFrame(rows)
    df.attrs["gate_field"] = field
    return df


def examples_frame(result: dict, kind: str, n: int = 5):
    """Side-by-side base and trained answers: win (base fail, trained pass), loss, both_fail."""
    pd = _pd()
    f = result["field"]
    want = {"win": (False, True), "loss": (True, False), "both_fail": (False, False)}[kind]
    rows = [(b, t) for b, t in result["paired"] if (bool(b.get(f)), bool(t.get(f))) == want]
    random.Random(result.get("seed", 0)).shuffle(rows)
    return pd.DataFrame([{"id": b["id"], "instruction": b["instruction"], "base": b.get("response"),
                          "trained": t.get("response"), "base_failures": ", ".join(b.get("failures", [])),
                          "trained_failures": ", ".join(t.get("failures", []))} for b, t in rows[:n]])
