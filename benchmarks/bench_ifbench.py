"""The IFBench route end to end on a real model: the embedded Gemma 3 270M on a sample of IFBench.

    python benchmarks/bench_ifbench.py --limit 24 --max-new-tokens 64          # the embedded base
    python benchmarks/bench_ifbench.py --run runs/r1 --limit 24                 # a run's base vs trained

Without --run, the "trained" side is the base with a freshly initialised LoRA adapter (PEFT's
default: B = 0, so the adapter adds nothing): both sides must then write identical responses —
a check that the toggled pairing is exact — and the figure is the embedded base's IFBench score.
Writes benchmarks/results/ifbench_<name>.json (summary, timing, machine).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cai_lib import ifbench  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=None, help="a finished run (adapter/); default: embedded base + zero adapter")
    ap.add_argument("--limit", type=int, default=24, help="first N IFBench test prompts")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", default=None, help="result JSON (default: benchmarks/results/ifbench_<name>.json)")
    a = ap.parse_args()
    records = ifbench.load_records(limit=a.limit)
    t0 = time.time()
    if a.run:
        from cai_lib import config
        from cai_lib.evaluate import load_models
        from cai_lib.runs import run_paths
        cfg = config.resolve(Path(a.run), {})
        loaded, model = load_models(cfg, run_paths(Path(a.run)))
        name = Path(a.run).name
    else:
        from peft import LoraConfig, get_peft_model

        from cai_lib.models import load_base
        loaded = load_base("embedded:gemma-3-270m")
        model = get_peft_model(loaded.model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
        model.eval()
        name = "embedded_base"
    load_s = time.time() - t0
    result = ifbench.compare(model, loaded.tokenizer, records, max_new_tokens=a.max_new_tokens,
                             batch_size=a.batch_size, progress=False)
    s = result["summary"]
    identical = sum(b["response"] == t["response"] for b, t in zip(result["base"], result["trained"]))
    out = {"model": "embedded:gemma-3-270m" if not a.run else a.run, "records": len(records),
           "max_new_tokens": a.max_new_tokens, "load_seconds": round(load_s, 1), "summary": s,
           "identical_responses": identical, "examples": [
               {k: r[k] for k in ("id", "instruction_id_list", "response", "strict", "loose") if k in r}
               for r in result["base"][:3]],
           "machine": {"platform": platform.platform(), "python": platform.python_version()}}
    path = Path(a.out) if a.out else ROOT / "benchmarks" / "results" / f"ifbench_{name}.json"
    path.write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(ifbench.headline(s))
    print(f"identical base/trained responses: {identical}/{len(records)}; "
          f"instruction-level strict base {s['instruction_level']['base']['strict']}; "
          f"generation {s['timing']['base_seconds']} s + {s['timing']['trained_seconds']} s; written {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
