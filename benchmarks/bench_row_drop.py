"""Dropping finished rows (cai_lib.row_drop) on and off, on a finished run's three evaluation arms.

Loads a run's base model and trained adapter the way stage 03 does, takes its first --n held-out
items, and generates each arm (base raw, trained raw, base few-shot) with row dropping off and
on, interleaved, same process, same batches. Reports wall and CPU seconds per arm, row-steps
paid, and whether every record (text, finish reason, token count) is identical.

    python benchmarks/bench_row_drop.py --run-dir RUN_DIR --n 48 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run-dir", required=True, help="a run with stages 01 and 02 done (config.json, adapter)")
    p.add_argument("--n", type=int, default=48)
    p.add_argument("--json", default="bench_row_drop.json")
    a = p.parse_args(argv)

    import torch
    import transformers

    from cai_lib import arms, generate as gen
    from cai_lib.adapters import adapter_disabled
    from cai_lib.config import resolve
    from cai_lib.evaluate import load_models
    from cai_lib.items import load_items
    from cai_lib.runs import run_paths

    paths = run_paths(Path(a.run_dir))
    cfg = resolve(Path(a.run_dir), {})
    items = load_items(paths.eval_instructions)[: a.n]
    loaded, model = load_models(cfg, paths)
    tok = loaded.tokenizer
    real_rule = gen.drops_finished_rows
    prompts = [it["instruction"] for it in items]
    kw = dict(max_new_tokens=cfg.eval_max_new_tokens, batch_size=cfg.gen_batch_size, progress=False,
              cache="dynamic")

    def arm(name, info):
        call = partial(gen.generate, info=info, cache="dynamic")
        if name == "base raw":
            with adapter_disabled(model):
                return gen.generate(model, tok, prompts, info=info, **kw)
        if name == "trained raw":
            return gen.generate(model, tok, prompts, info=info, **kw)
        # base few-shot: the data stage's frame and its stop strings (adapter disabled inside)
        return arms.generate_fewshot(model, tok, items, cfg, progress=False, generate_fn=call)[0]

    rows = []
    for name in ("base raw", "trained raw", "base few-shot"):
        out = {}
        for drop in (False, True):
            gen.drops_finished_rows = (lambda m, c: real_rule(m, c)) if drop else (lambda m, c: False)
            info: dict = {}
            t0, c0 = time.perf_counter(), time.process_time()
            recs = arm(name, info)
            out[drop] = {"wall_s": round(time.perf_counter() - t0, 2), "cpu_s": round(time.process_time() - c0, 2),
                         "row_steps": info.get("row_steps"), "new_tokens": info.get("new_tokens"),
                         "records": [{k: r[k] for k in ("response", "finish_reason", "new_tokens")} for r in recs]}
        gen.drops_finished_rows = real_rule
        same = sum(x == y for x, y in zip(out[False]["records"], out[True]["records"]))
        row = {"arm": name, "n": len(items), "identical": same,
               **{f"{k}_{'drop' if d else 'plain'}": out[d][k] for d in (False, True)
                  for k in ("wall_s", "cpu_s", "row_steps", "new_tokens")}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    res = {"run_dir": Path(a.run_dir).name, "model": cfg.model, "batch_size": cfg.gen_batch_size,
           "max_new_tokens": cfg.eval_max_new_tokens, "torch": torch.__version__,
           "transformers": transformers.__version__, "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
           "load_average": os.getloadavg()[0], "rows": rows}
    Path(a.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
