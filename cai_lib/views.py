"""What a reader of the rendered reports sees: headers, warnings, verdict, readable tables.

`report` computes; this module only formats. Every view returns an object the notebook
displays as its cell's result (IPython HTML or a pandas Styler without the index), so
the rendered HTML — which `cai run` writes without code cells or stderr — reads as a
report: what ran, what it found, and the warnings that matter, near the top.
"""

from __future__ import annotations

import html
import math

WARN_AGREEMENT = 0.95  # batched vs batch-1 greedy agreement below this is worth a reader's attention
WARN_CHOSEN_SHORTER = 0.8  # share of pairs whose chosen answer is shorter: a length confound above this

COLORS = {"PASS": "#1a7f37", "FAIL": "#cf222e", "NO_GAP": "#9a6700"}


def _HTML(text: str):
    from IPython.display import HTML
    return HTML(text)


def _esc(x) -> str:
    return html.escape(str(x))


def rate(r, ci=None, digits: int = 2) -> str:
    """0.38 [0.33, 0.44]."""
    if r is None or (isinstance(r, float) and math.isnan(r)):
        return "—"
    text = f"{r:.{digits}f}"
    if ci:
        text += f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
    return text


def pvalue(p) -> str:
    """Readable p-value: three decimals when it matters, scientific below 0.001."""
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "—"
    if p >= 0.001:
        return f"{p:.3f}"
    return f"{p:.1e}"


def table(rows: list[dict]):
    """A list of dicts as a table without pandas' index column."""
    import pandas as pd
    df = pd.DataFrame(rows)
    if not len(df):
        return df
    return (df.style.hide(axis="index").set_properties(**{"text-align": "left"})
            .set_table_styles([{"selector": "th", "props": [("text-align", "left")]}]))


# ---- every stage ---------------------------------------------------------------------------

def run_header(run_dir, cfg, stage_key: str):
    """Which run, which model, which settings this stage used — the first thing on each page."""
    from . import manifest
    from .stages import records as stages
    m = manifest.load(run_dir)
    run = m.get("run", {})
    st = stages.stage(stage_key)
    try:
        params = stages.stage_params(st, cfg)
    except Exception:  # a notebook outside the package tree: show the run, not the settings
        params = {}
    shown = {k: v for k, v in params.items() if k not in ("model",)}
    settings = " · ".join(f"{_esc(k)}={_esc(v)}" for k, v in shown.items())
    return _HTML(
        f'<div style="font-size:0.95em;border-left:4px solid #888;padding:4px 10px;margin:4px 0">'
        f'<b>run</b> {_esc(run.get("run_id", run_dir.name))} · <b>profile</b> {_esc(run.get("profile", "—"))} · '
        f'<b>model</b> {_esc(cfg.model)} · <b>commit</b> {_esc((m.get("git") or {}).get("commit") or "—")[:10]}'
        f'<details><summary>settings this stage used ({len(shown)})</summary>'
        f'<div style="font-family:monospace;font-size:0.85em">{settings}</div></details></div>')


def guard_table(loaded, guard: dict):
    """What the contamination guard did to the tokenizer this stage uses."""
    rows = [
        {"check": "loaded with", "result": f"{loaded.backend} ({loaded.spec})"},
        {"check": "chat template", "result": "removed" if guard.get("chat_template_removed") else
            ("none present" if not guard.get("had_chat_template") else "STILL PRESENT")},
        {"check": "chat template now", "result": "none" if not guard.get("chat_template_now") else "PRESENT"},
        {"check": "BOS policy", "result": f"{guard.get('bos_policy')}"
                                          + (f" ({guard['bos_token']})" if guard.get("bos_token") else "")},
        {"check": "chat markers checked in every prompt", "result": len(guard.get("chat_markers_checked") or [])},
    ]
    ic = guard.get("instruct_check") or {}
    if ic:
        rows.append({"check": "instruct-model check", "result": ", ".join(f"{k}: {v}" for k, v in ic.items())})
    return table(rows)


def split_table(train_items, eval_items, overlap: dict):
    rows = [
        {"measure": "train instructions", "value": len(train_items)},
        {"measure": "held-out eval instructions", "value": len(eval_items)},
        {"measure": "leaks flagged (eval vs train and few-shot bank)", "value": overlap.get("n_flagged")},
        {"measure": "method", "value": overlap.get("method", "—")},
    ]
    return table(rows)


def callouts(messages: list[str], ok: str = "No warnings."):
    """Warnings as boxes a reader cannot miss (or one quiet line when there are none)."""
    if not messages:
        return _HTML(f'<div style="color:#1a7f37">✓ {_esc(ok)}</div>')
    items = "".join(f"<li>{_esc(m)}</li>" for m in messages)
    return _HTML(f'<div style="border:2px solid #9a6700;background:#fff8c5;padding:6px 12px;margin:6px 0">'
                 f'<b>⚠ {len(messages)} warning{"s" if len(messages) > 1 else ""}</b><ul style="margin:4px 0">'
                 f'{items}</ul></div>')


def determinism_warnings(det: dict | None, where: str) -> list[str]:
    if not det or not det.get("n"):
        return []
    r = det["agree"] / det["n"]
    if r >= WARN_AGREEMENT:
        return []
    return [f"{where}: batched and batch-1 greedy decoding agree on only {det['agree']}/{det['n']} sampled "
            f"prompts ({r:.0%}). Base and trained see identical batches, so their comparison stays fair, but "
            "single outputs depend on batch composition (bf16/4-bit kernels)."]


def certificate_warnings(cert: dict | None, where: str) -> list[str]:
    """The comparability certificate's finding for the verdict box: only when batching changed
    more than its limit of the sampled outputs (generate.DISAGREE_LIMIT)."""
    if not cert or not cert.get("n") or not cert.get("flagged"):
        return []
    n, same = cert["n"], cert["identical"]
    moved = ", ".join(f"{f} {cert['batch1'][f]:.2f} -> {cert['batched'][f]:.2f} ({cert['flips'][f]} flipped)"
                      for f in ("strict", "loose", "form"))
    return [f"{where}: batched and batch-1 greedy decoding differ on {n - same}/{n} sampled eval items "
            f"({(n - same) / n:.0%}, more than the {cert['disagree_limit']:.0%} limit); on that sample batch-1 vs "
            f"batched rates: {moved}. Base and trained were decoded in identical batches, so their comparison "
            "stays fair, but single outputs depend on batch composition."]


def time_text(tim: dict, compiled: bool | None = None) -> str:
    """A stage's generation time by part (stage 00: baseline, sentinels, batch-1 check; stage 03:
    each arm, certificate, load); older summaries lack the parts they did not time."""
    if "baseline_seconds" in tim:
        return (f"baseline {tim['baseline_seconds']} s, sentinels {tim.get('sentinels_seconds')} s, "
                f"batched vs batch-1 check {tim.get('determinism_seconds')} s")
    parts = [f"base {tim.get('base_seconds')} s ({tim.get('base_new_tokens')} new tokens)",
             f"trained {tim.get('trained_seconds')} s ({tim.get('trained_new_tokens')} new tokens)"]
    if "base_fewshot_seconds" in tim:
        parts.append(f"base few-shot {tim['base_fewshot_seconds']} s")
    if "merge_seconds" in tim:
        parts.append(f"adapter merge {tim['merge_seconds']} s")
    if "certificate_seconds" in tim:
        parts.append(f"certificate {tim['certificate_seconds']} s")
    if "load_seconds" in tim:
        parts.append(f"model load {tim['load_seconds']} s")
    text = ", ".join(parts)
    if compiled:  # the first call at each shape compiles; an unmerged adapter is its own graph
        text += " — each first call at a new shape includes compiling the decoding step"
    return text


def decoding_table(summary: dict):
    d = summary.get("decoding") or {}
    det = summary.get("determinism") or {}
    thr = summary.get("throughput") or {}
    rows = [{"setting": "decoding", "value": f"greedy, max {d.get('max_new_tokens')} new tokens, batch "
                                              f"{d.get('batch_size')}, stop strings: {d.get('stop_strings') or 'none'}"}]
    for k in ("cache", "cache_implementation", "quantization"):
        if k in d:
            rows.append({"setting": k, "value": d[k]})
    tw = summary.get("trained_weights") or {}
    if tw:
        rows.append({"setting": "trained arm's adapter", "value": f"{tw.get('adapter')} ({tw.get('why')})"})
    cert = summary.get("certificate") or {}
    if cert:
        rates = ", ".join(f"{f} {cert['batch1'][f]:.2f} vs {cert['batched'][f]:.2f}" for f in ("strict", "loose", "form"))
        rows.append({"setting": "comparability certificate",
                     "value": f"{cert['identical']}/{cert['n']} sampled eval items identical at batch 1 and batch "
                              f"{cert['batch_size']} ({cert['cache']} cache); rates batch-1 vs batched: {rates}"})
    elif det:
        rows.append({"setting": "batched = batch-1", "value": f"{det.get('agree')}/{det.get('n')} prompts identical"})
    tim = summary.get("timing") or {}
    if tim:
        rows.append({"setting": "time", "value": time_text(tim, cert.get("compiled"))})
    mem = summary.get("memory_end") or {}
    if mem:
        gpu = f", GPU peak {mem['gpu_peak_gib']} GiB" if "gpu_peak_gib" in mem else ""
        rows.append({"setting": "memory", "value": f"peak RSS {mem.get('peak_rss_gib')} GiB{gpu}"})
    if thr:
        tps = thr.get("tokens_per_s", thr.get("tokens_per_second"))  # the key the stages write
        rows.append({"setting": "throughput", "value": f"{thr.get('new_tokens', '—')} new tokens in "
                                                        f"{thr.get('seconds', '—')} s"
                                                        + (f" ({tps:.0f} tok/s)" if isinstance(tps, (int, float)) else "")})
    return table(rows)


# ---- 01 data ------------------------------------------------------------------------------

def pair_warnings(stats: dict) -> list[str]:
    out = []
    share = stats.get("share_chosen_shorter")
    if share is not None and share >= WARN_CHOSEN_SHORTER:
        cw = (stats.get("length_words") or {}).get("chosen", {})
        rw = (stats.get("length_words") or {}).get("rejected", {})
        out.append(f"Length confound: the chosen answer is shorter in {share:.0%} of pairs (median "
                   f"{cw.get('median', '—')} vs {rw.get('median', '—')} words). Training learns 'shorter wins' as "
                   "much as 'right wins'.")
    lo = (stats.get("length_only") or {}).get("share")
    if lo:
        out.append(f"{lo:.0%} of pairs differ only by length (one text is a run of the other's words).")
    if stats.get("n_kept") == 0:
        out.append("No pairs were kept: stage 02 has nothing to train on.")
    return out


def pair_summary_table(stats: dict):
    lw = stats.get("length_words") or {}
    rows = [
        {"measure": "pairs kept / candidates", "value": f"{stats.get('n_kept')} / {stats.get('n_candidates')} "
                                                        f"({(stats.get('keep_rate') or 0):.0%})"},
        {"measure": "dropped, by first reason", "value": ", ".join(f"{k} {v}" for k, v in
                                                                    (stats.get("dropped_by_reason") or {}).items()) or "—"},
        {"measure": "chosen words (median)", "value": (lw.get("chosen") or {}).get("median", "—")},
        {"measure": "rejected words (median)", "value": (lw.get("rejected") or {}).get("median", "—")},
        {"measure": "share chosen shorter", "value": rate(stats.get("share_chosen_shorter"))},
        {"measure": "rejected already passes strict", "value":
            (stats.get("rejected_passes_strict") or {}).get("n", "—")},
    ]
    return table(rows)


# ---- 02 train -----------------------------------------------------------------------------

def _train_time(summary: dict) -> str:
    """Training seconds, with the trainer's own runtime and the stage's model load when recorded."""
    text = f"{summary.get('train_seconds') or 0:.0f} s"
    runtime = summary.get("train_runtime_trainer")
    if runtime is not None:
        text += f" (the trainer's own runtime {runtime:.1f} s)"
    load = (summary.get("timing") or {}).get("load_seconds")
    if load is not None:
        text += f"; model load {load:.1f} s"
    return text


def train_summary_table(summary: dict):
    pairs = summary.get("pairs") or {}
    final = summary.get("final") or {}
    peak = summary.get("peak_memory_bytes")
    rows = [
        {"measure": "backend", "value": summary.get("backend")},
        {"measure": "optimizer steps", "value": f"{summary.get('steps')} of {summary.get('max_steps')}"
                                                + (" (resumed from step %s)" % summary["resumed_from"]
                                                   if summary.get("resumed_from") else "")},
        {"measure": "pairs used / total", "value": f"{pairs.get('used')} / {pairs.get('total')}"},
        {"measure": "tokens seen", "value": summary.get("tokens_seen")},
        {"measure": "training time", "value": _train_time(summary)},
        {"measure": "peak memory", "value": f"{peak / 2**30:.2f} GiB ({summary.get('peak_memory_kind')})"
            if peak else "—"},
        {"measure": "final loss", "value": f"{final['loss']:.3f}" if final.get("loss") is not None else "—"},
        {"measure": "final reward margin", "value": f"{final['reward_margin']:.2f}"
            if final.get("reward_margin") is not None else "—"},
        {"measure": "final preference accuracy", "value": rate(final.get("accuracy"))},
    ]
    return table(rows)


# ---- 03 / 04 ------------------------------------------------------------------------------

def rates_table(rates_df, fields=("strict", "loose", "form")):
    """report.rates_frame output as 'rate [Wilson CI]' strings, one row per model (and type)."""
    rows = []
    for _, r in rates_df.iterrows():
        row = {k: r[k] for k in ("model", "type", "format") if k in r and r[k] is not None}
        row["n"] = int(r["n"])
        for f in fields:
            row[f] = rate(r[f], (r[f"_{f}_lo"], r[f"_{f}_hi"]))
        rows.append(row)
    return table(rows)


def three_arm_table(frame, fields=("strict", "loose", "form")):
    """arms.three_arm_rates_frame as 'rate [Wilson CI]' strings, like rates_table (no index column)."""
    rows = []
    for _, r in frame.iterrows():
        row = {"arm": r["arm"], "type": r["type"], "n": int(r["n"])}
        for f in fields:
            row[f] = f"{r[f]:.2f} {r[f + '_ci']}"
        rows.append(row)
    return table(rows)


def in_context_table(frame):
    """arms.in_context_frame with readable headers and p-values (no index column)."""
    rows = []
    for _, r in frame.iterrows():
        rows.append({
            "type": r["type"], "n": int(r["n"]), "base few-shot": f"{r['few_shot']:.2f}",
            "trained raw": f"{r['trained_raw']:.2f}",
            "difference [Newcombe 95%]": f"{r['diff']:+.2f} {r['diff_ci']}",
            "[bootstrap 95%]": r["diff_ci_bootstrap"],
            "few-shot only / trained only": f"{int(r['b_fewshot_only'])} / {int(r['c_trained_only'])}",
            "McNemar p": pvalue(r["mcnemar_p"]),
            "p (BH-adjusted)": pvalue(r["mcnemar_p_bh"]),
            "Cohen's h": f"{r['cohens_h']:.2f}"})
    return table(rows)


def paired_stats_table(s: dict, field: str):
    rows = [
        {"statistic": "items (paired)", "value": s["n"]},
        {"statistic": f"base {field} rate [Wilson 95%]", "value": rate(s["base_rate"], s.get("base_ci"), 3)},
        {"statistic": f"trained {field} rate [Wilson 95%]", "value": rate(s["trained_rate"], s.get("trained_ci"), 3)},
        {"statistic": "difference trained − base [Newcombe 95%]", "value": rate(s.get("diff"), s.get("diff_ci"), 3)},
        {"statistic": "difference [bootstrap 95%]", "value": rate(s.get("diff"), s.get("diff_ci_bootstrap"), 3)},
        {"statistic": "only base passes (b) / only trained passes (c)", "value": f"{s['b']} / {s['c']}"},
        {"statistic": "McNemar exact p (two-sided)", "value": pvalue(s["mcnemar_p"])},
        {"statistic": "Cohen's h", "value": f"{s['cohens_h']:.2f}" if s.get("cohens_h") is not None else "—"},
    ]
    if s.get("power_n") is not None:
        rows.append({"statistic": "items for 80% power at this effect", "value": s["power_n"]})
    return table(rows)


def by_type_table(s: dict):
    rows = []
    for t, v in sorted((s.get("by_type") or {}).items()):
        rows.append({"type": t, "n": v.get("n"), "base": rate(v.get("base_rate")), "trained": rate(v.get("trained_rate")),
                     "b / c": f"{v.get('b')} / {v.get('c')}", "McNemar p (BH)": pvalue(v.get("mcnemar_p_bh")),
                     "Cohen's h": f"{v['cohens_h']:.2f}" if v.get("cohens_h") is not None else "—"})
    return table(rows)


def verdict_box(result: dict, warnings: list[str] | None = None):
    """The gate verdict with the numbers it rests on, every condition, and the warnings."""
    gate, s, field = result["gate"], result["stats"], result["field"]
    color = COLORS.get(gate["verdict"], "#555")
    sentence = (f"Trained {field} {rate(s['trained_rate'], s.get('trained_ci'))} vs base "
                f"{rate(s['base_rate'], s.get('base_ci'))} on the same {s['n']} held-out raw instructions; "
                f"difference {s['diff']:+.2f} [{s['diff_ci'][0]:+.2f}, {s['diff_ci'][1]:+.2f}], McNemar p = "
                f"{pvalue(s['mcnemar_p'])} (b = {s['b']}, c = {s['c']}).")
    conds = "".join(
        f"<li>{'✓' if c['met'] else '✗'} {_esc(name.replace('_', ' '))}: {_esc(_cond_value(c['value']))} "
        f"(needs {_esc(c['required'])})</li>" for name, c in gate["conditions"].items())
    reasons = "".join(f"<li>{_esc(r)}</li>" for r in gate.get("reasons", []))
    notes = "".join(f"<li>{_esc(r)}</li>" for r in gate.get("notes", []))
    ic = (result.get("in_context") or {}).get("in_context_verdict")
    ic_text = ic.get("sentence") if isinstance(ic, dict) else ic
    warn = "".join(f"<li>{_esc(w)}</li>" for w in warnings or [])
    return _HTML(
        f'<div style="border:3px solid {color};padding:10px 14px;margin:6px 0">'
        f'<h2 style="color:{color};margin:0 0 6px 0">Stage 1 gate: {gate["verdict"]}</h2>'
        f'<p style="margin:4px 0;font-size:1.05em">{_esc(sentence)}</p>'
        + (f'<p style="margin:4px 0"><b>Against in-context prompting:</b> {_esc(ic_text)}</p>' if ic_text else "")
        + (f'<p style="margin:4px 0"><b>Why:</b></p><ul style="margin:2px 0">{reasons}</ul>' if reasons else "")
        + (f'<p style="margin:4px 0"><b>Reported, not required for PASS:</b></p><ul style="margin:2px 0">{notes}</ul>'
           if notes else "")
        + f'<details><summary>all conditions</summary><ul style="margin:2px 0">{conds}</ul></details>'
        + (f'<p style="margin:6px 0 0 0;color:#9a6700"><b>⚠ Warnings</b></p><ul style="margin:2px 0">{warn}</ul>'
           if warn else "")
        + "</div>")


def _cond_value(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return pvalue(v) if v < 0.01 else f"{v:.3f}"
    return str(v)


def manifest_summary(m: dict):
    """The manifest as a reader needs it: what ran, where, with what, and how long each stage took."""
    v = m.get("versions") or {}
    hw = m.get("hardware") or {}
    gpus = ", ".join(f"{g['name']} ({g['memory_gib']} GiB)" for g in hw.get("gpus", [])) or "none"
    rows = [
        {"item": "run", "value": f"{(m.get('run') or {}).get('run_id')} (profile {(m.get('run') or {}).get('profile')})"},
        {"item": "git commit", "value": f"{(m.get('git') or {}).get('commit')}"
                                        + (" (uncommitted changes)" if (m.get("git") or {}).get("dirty") else "")},
        {"item": "hardware", "value": f"{hw.get('cpu_count')} CPU cores, {hw.get('ram_gib', '—')} GiB RAM, GPU: {gpus}"},
        {"item": "libraries", "value": ", ".join(f"{k} {v[k]}" for k in ("python", "torch", "transformers", "trl",
                                                                            "peft", "bitsandbytes", "unsloth")
                                                  if v.get(k))},
        {"item": "approval", "value": f"{(m.get('approval') or {}).get('verdict', '—')}: adapter "
                                      f"{'approved' if (m.get('approval') or {}).get('adapter_approved') else 'not approved'}"},
    ]
    stage_rows = []
    for k, s in sorted((m.get("stages") or {}).items()):
        stage_rows.append({"stage": k, "status": s.get("status"), "seconds": s.get("seconds"),
                           "why it ran or was skipped": s.get("decision", "—")})
    return table(rows), table(stage_rows)
