"""Stage 03 and `cai eval`: base and trained model on the same raw instructions.

One copy of the base weights (the system this replaces held two 8-bit 32B models at once).
The base arms run first; the trained arm then decodes the same weights with the run's
LoRA adapter, either attached unmerged (PEFT's layers, switched off for the base arms) or
merged into the weights (`adapter_plan`: on unquantized weights on an accelerator, where
the trained arm then decodes through the base model's own compiled graph instead of
compiling an adapter graph). Base and trained get the identical prompt list, in the same
order, so the generator forms identical batches for both — left padding and bf16 kernels
can nudge greedy outputs with batch composition, and this keeps the comparison fair.
Greedy decoding, no stop strings: ending the answer is part of the task.

A third arm (cai_lib.arms) runs the base model on the same items with the data stage's
few-shot frame — the base model at its best — so stage 04 can say whether training beat,
matched or lost to in-context prompting on the same items.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import NamedTuple

from . import manifest, scoring
from .guard import guard_report
from .errors import CaiError
from .items import load_items
from .jsonl import write_json, write_jsonl


def load_checked(cfg, paths):
    """(loaded base model, adapter folder): the run's adapter is checked against the base
    (its cai_adapter.json identity) but not attached. Refuses an adapter trained on another base."""
    from .adapters import check_adapter_matches, read_adapter_meta
    from .models import load_configured
    adapter_dir = Path(paths.adapter)
    meta = read_adapter_meta(adapter_dir)  # before the (slow) model load: a missing adapter fails at once
    loaded = load_configured(cfg)
    check_adapter_matches(adapter_dir, loaded, meta)
    return loaded, adapter_dir


def load_models(cfg, paths):
    """The base model with the run's adapter attached unmerged (toggled per pass)."""
    from .adapters import load_adapter
    loaded, adapter_dir = load_checked(cfg, paths)
    return loaded, load_adapter(loaded.model, adapter_dir)


def adapter_plan(cfg, model) -> dict:
    """How the trained arm carries the adapter: {"adapter": "merged"|"unmerged", "why"}.

    auto merges on unquantized weights on an accelerator. Measured on an H200 (issue 13,
    Gemma 3 270M shape, torch 2.11): the adapter-enabled graph is a second compiled graph,
    which cost ~32 s in a gpu-small run's stage 03 on top of the base graph, and PEFT's
    disabled-adapter graph is a third, different from the plain model stages 00 and 01
    compiled; merged, base and trained decode through the one graph of the plain model
    (compiled once per process, found in torch's on-disk cache across stages). Merging
    rounds W + BA to the weights' dtype once: the trained arm's weights are that rounding.
    Quantized (4/8-bit) weights stay unmerged: merging would re-quantize them. CPU stays
    unmerged: nothing is compiled there, and it is the path the CPU results were measured on.
    """
    from .kv_cache import _device_type, _quantized
    want = cfg.eval_adapter
    quant = _quantized(model)
    if want == "merged":
        if quant:
            raise CaiError(f"eval_adapter: merged needs unquantized generation weights, these are {quant} — "
                           "set gen_quantization: none, or eval_adapter: unmerged or auto")
        return {"adapter": "merged", "why": "requested"}
    if want == "unmerged":
        return {"adapter": "unmerged", "why": "requested"}
    if quant:
        return {"adapter": "unmerged", "why": f"auto: {quant} weights (merging would re-quantize them)"}
    if _device_type(model) == "cpu":
        return {"adapter": "unmerged", "why": "auto: CPU (no compiled graph to share)"}
    return {"adapter": "merged", "why": "auto: unquantized weights on an accelerator — the trained arm decodes "
                                        "through the base model's compiled graph"}


class Arms(NamedTuple):
    """The three evaluation arms (scored records, same items in the same order), their timing,
    and the model the trained arm decoded with (the certificate decodes with it too)."""
    base: list
    fewshot: list
    trained: list
    timing: dict
    trained_model: object


def generate_three(model, tokenizer, items: list[dict], cfg, *, progress: bool = True, generate_fn=None,
                   rotate_fn=None, merge_from=None) -> Arms:
    """base raw, base few-shot, then trained raw, on the same items in the same order.

    merge_from: None when `model` carries the run's adapter unmerged (switched off for the
    base arms); else the adapter folder, merged into `model` (the plain base) after the two
    base arms — the base arms can never see merged weights (adapters.base_view refuses them)."""
    from .adapters import base_view, load_adapter
    from .arms import check_paired, generate_fewshot
    from .generate import generate as _generate
    generate = generate_fn or partial(_generate, cache=cfg.gen_cache)
    prompts = [it["instruction"] for it in items]  # raw instruction, identical for both models
    kw = dict(max_new_tokens=cfg.eval_max_new_tokens, batch_size=cfg.gen_batch_size, progress=progress)
    t0 = time.time()
    with base_view(model):
        base_out = generate(model, tokenizer, prompts, desc="base", **kw)
    t1 = time.time()
    fewshot, t_fs = generate_fewshot(model, tokenizer, items, cfg, progress=progress, generate_fn=generate_fn,
                                     rotate_fn=rotate_fn)
    t2 = time.time()
    trained_model = load_adapter(model, merge_from, merge=True) if merge_from is not None else model
    t3 = time.time()
    trained_out = generate(trained_model, tokenizer, prompts, desc="trained", **kw)
    t4 = time.time()
    base = scoring.score_records([{**it, **o, "model": "base"} for it, o in zip(items, base_out)])
    trained = scoring.score_records([{**it, **o, "model": "trained"} for it, o in zip(items, trained_out)])
    check_paired(base, fewshot, trained)
    timing = {"base_seconds": round(t1 - t0, 2), "trained_seconds": round(t4 - t3, 2),
              "base_new_tokens": sum(o["new_tokens"] for o in base_out),
              "trained_new_tokens": sum(o["new_tokens"] for o in trained_out), **t_fs}
    if merge_from is not None:
        timing["merge_seconds"] = round(t3 - t2, 2)
    return Arms(base, fewshot, trained, timing, trained_model)


def load_for_arms(cfg, paths):
    """(loaded, model for generate_three, merge_from, adapter plan): the base model, with the
    adapter attached unmerged now or left to generate_three to merge after the base arms."""
    from .adapters import load_adapter
    loaded, adapter_dir = load_checked(cfg, paths)
    plan = adapter_plan(cfg, loaded.model)
    if plan["adapter"] == "merged":
        return loaded, loaded.model, adapter_dir, plan
    return loaded, load_adapter(loaded.model, adapter_dir), None, plan


def run_evaluation(cfg, paths, *, progress: bool = True, generate_fn=None) -> dict:
    """Stage 03's work: the three arms generated, scored and written; returns the summary."""
    return evaluate_arms(cfg, paths, progress=progress, generate_fn=generate_fn)[0]


def evaluate_arms(cfg, paths, *, progress: bool = True, generate_fn=None) -> tuple[dict, dict | None]:
    """`run_evaluation`, returning (summary, {"base", "base_fewshot", "trained": scored records})
    so stage 03 shows the records it wrote without reading them back (None on a dry run)."""
    from .arms import decoding_plan
    from .split import verify_eval_set
    verify_eval_set(paths)  # train file present, hashes match, no leaks — else a one-line refusal
    items = load_items(paths.eval_instructions)
    if not items:
        raise CaiError(f"{paths.eval_instructions}: empty eval set — rerun stage 01 with n_eval_items > 0")
    mem_start = manifest.memory_now()
    t_load = time.time()
    loaded, model, merge_from, adapter = load_for_arms(cfg, paths)
    load_seconds = round(time.time() - t_load, 2)
    plan = {"n_items": len(items), "by_type": _count_types(items), "model": cfg.model,
            "backend": loaded.backend, "adapter": str(paths.adapter),
            "decoding": {"do_sample": False, "max_new_tokens": cfg.eval_max_new_tokens,
                         "batch_size": cfg.gen_batch_size, "stop_strings": None},
            "fewshot_arm": decoding_plan(cfg), "trained_weights": adapter,
            "memory_start": mem_start, "memory_loaded": manifest.memory_now(), "guard": guard_report(loaded)}
    if cfg.dry_run:
        plan["dry_run"] = True
        print(f"dry run: would evaluate {len(items)} items × 3 arms (base raw, base few-shot, trained raw); "
              "nothing generated")
        return plan, None
    base, fewshot, trained, timing, trained_model = generate_three(
        model, loaded.tokenizer, items, cfg, progress=progress, generate_fn=generate_fn, merge_from=merge_from)
    write_jsonl(paths.eval_base, base)
    write_jsonl(paths.eval_fewshot, fewshot)
    write_jsonl(paths.eval_trained, trained)
    # The comparability certificate (issue 13): the trained model's batched decoding, as the arms
    # ran it (same weights, cache kind, batch size), against batch-1 decoding on a sample of the
    # eval items - identical strings, and whether the strict/loose/form *rates* move.
    from .generate import comparability_certificate
    sample = items[: cfg.determinism_sample]
    t_cert = time.time()
    certificate = comparability_certificate(trained_model, loaded.tokenizer, sample, max_new_tokens=cfg.eval_max_new_tokens,
                                            batch_size=cfg.gen_batch_size, cache=cfg.gen_cache) if sample else None
    determinism = None if certificate is None else {
        "n": certificate["n"], "agree": certificate["identical"], "rate": certificate["identical_rate"],
        "batch_size": cfg.gen_batch_size, "max_new_tokens": cfg.eval_max_new_tokens, "cache": certificate["cache"],
        "mismatches": certificate["mismatches"]}
    # where stage 03's time goes (issue 13): load, each arm, the certificate's two passes
    timing = {**timing, "load_seconds": load_seconds, "certificate_seconds": round(time.time() - t_cert, 2)}
    summary = {**plan, "timing": timing, "determinism": determinism, "certificate": certificate,
               "memory_end": manifest.memory_now(),
               "base": scoring.summarize(base), "base_fewshot": scoring.summarize(fewshot),
               "trained": scoring.summarize(trained), "answer_skew": _skew(fewshot, trained, cfg)}
    write_json(paths.eval_summary, summary)
    return summary, {"base": base, "base_fewshot": fewshot, "trained": trained}


def _skew(fewshot, trained, cfg) -> dict:
    from .diagnostics import eval_skew
    return eval_skew({"base_fewshot": fewshot, "trained": trained}, threshold=cfg.skew_threshold)


def _count_types(items):
    out: dict = {}
    for it in items:
        out[it["type"]] = out.get(it["type"], 0) + 1
    return out


PROTECTED = ("results", "data", "adapter", "checkpoints")  # a run's own stage outputs
EVAL_FILES = ("eval_base.jsonl", "eval_base_fewshot.jsonl", "eval_trained.jsonl", "stats.json")


def check_output_dir(out: Path, run_dir: Path, force: bool = False) -> Path:
    """Where `cai eval` may write: never into a run's stage folders, never over earlier
    results unless `force`; created (and so proven writable) before any generation."""
    from .runs import runs_root
    out = Path(out).resolve()
    roots = {Path(run_dir).resolve()}
    if runs_root().exists():
        roots |= {p.resolve() for p in runs_root().iterdir() if p.is_dir()}
    for root in roots:
        for sub in PROTECTED:
            guarded = root / sub
            if out == guarded or guarded in out.parents:
                raise CaiError(f"-o {out}: inside a run's {sub}/ folder, which holds that run's own stage outputs "
                               f"— choose another folder (default: {Path(run_dir) / 'evals'}/<items name>)")
    if out.exists() and not out.is_dir():
        raise CaiError(f"-o {out}: is an existing file — pass a folder (it will hold eval_base.jsonl, "
                       "eval_base_fewshot.jsonl, eval_trained.jsonl and stats.json)")
    taken = [n for n in EVAL_FILES if (out / n).exists()]
    if taken and not force:
        raise CaiError(f"-o {out}: already holds {', '.join(taken)} from an earlier evaluation — pass --force to "
                       "replace them, or choose another folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".cai-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise CaiError(f"-o {out}: cannot write there ({exc.strerror}) — choose a writable folder") from None
    return out


def eval_cli(run_dir, items, out_dir=None, force: bool = False) -> int:
    """`cai eval --run RUN_DIR --items ITEMS.jsonl [-o OUT_DIR] [--force]`."""
    import json

    from . import config
    from .fewshot import all_fewshot_instructions
    from .split import find_leaks
    from .runs import run_paths
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CaiError(f"{run_dir}: run directory not found — pass a folder under $CAI_BASE_DIR/runs")
    paths = run_paths(run_dir)
    if not paths.config.exists():
        raise CaiError(f"{run_dir}: no config.json — pass a run directory made by `cai run`")
    if not paths.train_instructions.exists():
        raise CaiError(f"{paths.train_instructions}: missing — run stage 01 for this run (the leakage check needs it)")
    cfg = config.resolve(run_dir, {})
    eval_items = load_items(items)
    if not eval_items:
        raise CaiError(f"{items}: no items — the eval set is empty")
    out = check_output_dir(Path(out_dir) if out_dir else run_dir / "evals" / Path(items).stem, run_dir, force)
    leaks = find_leaks(load_items(paths.train_instructions), eval_items, all_fewshot_instructions())
    if leaks:
        first = leaks[0]
        raise CaiError(f"{items}: {len(leaks)} item(s) leak into the training data or few-shot examples "
                       f"(first: {first.get('eval_id')}) — remove them and rerun", exit_code=2)
    loaded, model, merge_from, adapter = load_for_arms(cfg, paths)
    base, fewshot, trained, timing, _ = generate_three(model, loaded.tokenizer, eval_items, cfg, merge_from=merge_from)
    write_jsonl(out / "eval_base.jsonl", base)
    write_jsonl(out / "eval_base_fewshot.jsonl", fewshot)
    write_jsonl(out / "eval_trained.jsonl", trained)
    stats = cli_stats(base, fewshot, trained, cfg)
    write_json(out / "stats.json", {**stats, "items_file": str(items), "timing": timing, "trained_weights": adapter})
    print(json.dumps({k: v for k, v in stats.items() if k not in ("in_context", "answer_skew")}, indent=2))
    print(stats["in_context_verdict"]["sentence"])
    print(f"scored records and stats in {out}")
    return 0


def cli_stats(base, fewshot, trained, cfg) -> dict:
    """`cai eval`'s stats.json: base vs trained (as before) plus the in-context arm and answer skew."""
    from .arms import check_paired, in_context_stats, verdict
    from .diagnostics import eval_skew
    from .stats import stats_records
    check_paired(base, fewshot, trained)
    stats = stats_records(base, trained, field=cfg.gate_field, seed=cfg.seed, n_bootstrap=cfg.n_bootstrap,
                          alpha=cfg.gate_alpha)
    ic = in_context_stats(fewshot, trained, cfg, fields=(cfg.gate_field,))
    return {**stats, "in_context": ic[cfg.gate_field],
            "in_context_verdict": verdict(ic[cfg.gate_field], cfg.gate_alpha),
            "answer_skew": eval_skew({"base_fewshot": fewshot, "trained": trained}, threshold=cfg.skew_threshold)}
