"""Several processes on CPU (gloo): sharded generation equals one process, DDP training
equals one device with the same global batch, and every rank ends with the same adapter.

The multi-process tests launch two real processes through `accelerate launch` (the
launcher the README documents), so most of their time is two Python interpreters
importing torch/transformers/TRL on a small machine.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from cai_lib import distributed as D
from cai_lib import train_launch as TL
from cai_lib.config import RunConfig
from cai_lib.errors import CaiError
from cai_lib.jsonl import read_json, read_jsonl, write_json, write_jsonl

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent

# Prompts of many lengths, so the longest-first batches are not the input order.
PROMPTS = [
    "Answer this question: What is the capital of France?",
    "Q: What is two plus two?",
    "List three colors.",
    "Complete this sentence: The sky is",
    "Respond with yes or no: Is water wet?",
    "Write one sentence about cats.",
    "The quick brown fox",
    "Instruction: List three colors.\nResponse:",
    "What is 7 plus 7?",
    "Cats",
    "Answer this question: What is two plus two? Answer with a number.",
]
ITEMS = [{"id": f"it-{i:02d}", "type": "qa", "instruction": p} for i, p in enumerate(PROMPTS)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env() -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    return env


def run_checked(cmd, timeout=240):
    proc = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, f"{cmd}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-6000:]}"
    return proc


def load_tiny(path):
    from cai_lib.models import load_base
    return load_base(str(path))


# ---------------------------------------------------------------------------------------
# sharding plan
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("world", [1, 2, 3, 5])
@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_shards_partition_the_items(world, batch_size):
    lengths = [5, 9, 1, 9, 3, 7, 7, 2, 8, 4, 6]
    plans = [D.shard_indices(len(lengths), r, world, lengths=lengths, batch_size=batch_size) for r in range(world)]
    flat = sorted(i for p in plans for i in p)
    assert flat == list(range(len(lengths)))  # every item exactly once
    assert plans == [D.shard_indices(len(lengths), r, world, lengths=lengths, batch_size=batch_size) for r in range(world)]
    plain = [D.shard_indices(len(lengths), r, world) for r in range(world)]
    assert sorted(i for p in plain for i in p) == list(range(len(lengths)))


def test_batch_aligned_plan_deals_whole_longest_first_batches():
    lengths = [5, 9, 1, 9, 3, 7]
    # longest-first order (ties by index): 1, 3, 5, 0, 4, 2 → batches [1,3] [5,0] [4,2]
    assert D.shard_indices(6, 0, 2, lengths=lengths, batch_size=2) == [1, 3, 4, 2]
    assert D.shard_indices(6, 1, 2, lengths=lengths, batch_size=2) == [5, 0]
    assert D.shard_items(list("abcdef"), 1, 2, lengths=lengths, batch_size=2) == ["f", "a"]
    assert D.shard_indices(5, 1, 2) == [1, 3]
    assert D.shard_indices(5, 1, 2, batch_size=2) == [2, 3]  # consecutive batches of the given order
    with pytest.raises(CaiError):
        D.shard_indices(3, 2, 2)


def test_dist_info_reads_the_launcher_env(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    info = D.dist_info()
    assert (info.rank, info.world, info.local_rank, info.is_main) == (1, 4, 1, False)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(CaiError, match="outside WORLD_SIZE"):
        D.dist_info()
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k)
    assert D.dist_info() == D.DistInfo(0, 1, 0) and D.is_main_process()


# ---------------------------------------------------------------------------------------
# sharded generation in one process (ranks simulated one after another)
# ---------------------------------------------------------------------------------------

def _recording(batches):
    from cai_lib.generate import generate

    def gen(model, tok, prompts, **kw):
        inner = model.generate

        def spy(*a, **k):
            batches.append(tuple(map(tuple, k["input_ids"].tolist())))
            return inner(*a, **k)
        model.generate = spy
        try:
            return generate(model, tok, prompts, **kw)
        finally:
            del model.generate
    return gen


def test_shards_reproduce_single_process_batches_and_outputs(tiny_model_dir, tmp_path):
    loaded = load_tiny(tiny_model_dir)
    m, tok = loaded.model, loaded.tokenizer
    kw = dict(max_new_tokens=6, batch_size=3, progress=False)
    single_batches, shard_batches = [], []
    single = _recording(single_batches)(m, tok, PROMPTS, **kw)
    items = [{"id": it["id"], "prompt": it["instruction"]} for it in ITEMS]
    paths = [D.generate_sharded(m, tok, items, shard_dir=tmp_path / "sh", rank=r, world=2,
                                generate_fn=_recording(shard_batches), **kw) for r in range(2)]
    merged = D.merge_shards(paths, tmp_path / "merged.jsonl")
    # The same batches (as token rows) were decoded, only spread over two "processes".
    assert sorted(single_batches) == sorted(shard_batches)
    assert len(single_batches) == 4  # 11 prompts / 3 → the plan is not trivial
    assert [r["id"] for r in merged] == [it["id"] for it in ITEMS]  # original order
    strip = lambda r: {k: r[k] for k in ("response", "finish_reason", "prompt_tokens", "new_tokens")}
    assert [strip(r) for r in merged] == [strip(r) for r in single]
    assert read_jsonl(tmp_path / "merged.jsonl") == merged

    # A rerun keeps complete shards instead of regenerating them.
    calls = []
    D.generate_sharded(m, tok, items, shard_dir=tmp_path / "sh", rank=0, world=2,
                       generate_fn=lambda *a, **k: calls.append(1), **kw)
    assert calls == []

    # The drop-in generate() replacement returns generate()'s records in input order.
    dropin = D.ShardedGenerate(tmp_path / "calls", rank=0, world=1)(m, tok, PROMPTS, **kw)
    assert [strip(r) for r in dropin] == [strip(r) for r in single]


def test_as_given_batches_reproduce_a_caller_that_cuts_its_own_chunks(tiny_model_dir, tmp_path):
    """Stage 01 sorts its requests itself and calls generate() once per chunk of batch_size;
    handing ShardedGenerate chunks of world × batch_size must decode the same batches."""
    loaded = load_tiny(tiny_model_dir)
    m, tok = loaded.model, loaded.tokenizer
    bs, world = 2, 2
    order = sorted(PROMPTS, key=lambda p: (-len(p), p))  # the caller's own (character) order
    kw = dict(max_new_tokens=5, batch_size=bs, progress=False)
    single_batches, single = [], []
    for j in range(0, len(order), bs):
        single += _recording(single_batches)(m, tok, order[j:j + bs], **kw)
    shard_batches, per_rank = [], {r: [] for r in range(world)}
    for r in range(world):  # simulate the ranks one after another; call k = chunk k
        sg = D.ShardedGenerate(tmp_path / "sg", rank=r, world=world, generate_fn=_recording(shard_batches),
                               batch_order="as_given")
        for j in range(0, len(order), bs * world):
            items = [{"_i": i, "_prompt": p} for i, p in enumerate(order[j:j + bs * world])]
            D.generate_sharded(m, tok, items, shard_dir=sg.shard_dir / f"{j:04d}", rank=r, world=world,
                               prompt_key="_prompt", id_key="_i", generate_fn=sg.generate_fn,
                               batch_order="as_given", **kw)
    assert sorted(single_batches) == sorted(shard_batches)
    merged = []
    for j in range(0, len(order), bs * world):
        d = tmp_path / "sg" / f"{j:04d}"
        merged += D.merge_shards([D.shard_path(d, r, world) for r in range(world)])
    assert [r["response"] for r in merged] == [r["response"] for r in single]
    assert [r["_prompt"] for r in merged] == order


def _fake_gen(model, tok, prompts, **kw):
    return [{"response": p[::-1], "finish_reason": "eos", "prompt_tokens": len(p), "new_tokens": 1, "seconds": 0.0}
            for p in prompts]


def test_merge_refuses_incomplete_or_mixed_shards(tiny_tok, tmp_path):
    items = [{"id": f"x{i}", "prompt": p} for i, p in enumerate(PROMPTS[:7])]
    kw = dict(max_new_tokens=4, batch_size=2, generate_fn=_fake_gen, progress=False)
    p0 = D.generate_sharded(None, tiny_tok, items, shard_dir=tmp_path / "a", rank=0, world=2, **kw)
    p1 = D.generate_sharded(None, tiny_tok, items, shard_dir=tmp_path / "a", rank=1, world=2, **kw)
    merged = D.merge_shards([p1, p0])
    assert [r["id"] for r in merged] == [it["id"] for it in items]
    assert merged[3]["response"] == items[3]["prompt"][::-1]

    with pytest.raises(CaiError, match="missing rank"):
        D.merge_shards([p0])
    with pytest.raises(CaiError, match="given twice"):
        D.merge_shards([p0, p0])
    # shards of different inputs
    q1 = D.generate_sharded(None, tiny_tok, items[:6], shard_dir=tmp_path / "b", rank=1, world=2, **kw)
    with pytest.raises(CaiError, match="disagree on n_total"):
        D.merge_shards([p0, q1])
    # a row lost from a shard file
    rows = read_jsonl(p1)
    write_jsonl(p1, rows[:-1])
    with pytest.raises(CaiError, match="rows but its meta"):
        D.merge_shards([p0, p1])
    # a duplicated id (row of rank 0 copied into rank 1's shard in place of its own)
    write_jsonl(p1, [read_jsonl(p0)[0]] + rows[1:])
    with pytest.raises(CaiError, match="planned"):
        D.merge_shards([p0, p1])
    # a shard without its completion marker
    (tmp_path / "a" / "shard-00001-of-00002.meta.json").unlink()
    with pytest.raises(CaiError, match="incomplete"):
        D.merge_shards([p0, p1])
    with pytest.raises(CaiError, match="duplicate item id"):
        D.generate_sharded(None, tiny_tok, items + items[:1], shard_dir=tmp_path / "c", rank=0, world=1, **kw)


# ---------------------------------------------------------------------------------------
# launcher helpers
# ---------------------------------------------------------------------------------------

def test_adapt_batch_keeps_the_global_batch():
    cfg = RunConfig(per_device_batch_size=4, gradient_accumulation_steps=4)
    assert TL.adapt_batch(cfg, 1) is cfg
    c2 = TL.adapt_batch(cfg, 2)
    assert (c2.per_device_batch_size, c2.gradient_accumulation_steps) == (4, 2)
    c4 = TL.adapt_batch(RunConfig(per_device_batch_size=4, gradient_accumulation_steps=1), 4)
    assert (c4.per_device_batch_size, c4.gradient_accumulation_steps) == (1, 1)
    with pytest.raises(CaiError, match="cannot keep the global batch"):
        TL.adapt_batch(RunConfig(per_device_batch_size=3, gradient_accumulation_steps=1), 2)
    assert TL.adapt_batch(RunConfig(per_device_batch_size=3), 2, "per-device").per_device_batch_size == 3


def test_backend_for_several_processes():
    assert TL.distributed_backend(RunConfig(backend="auto"), 2).backend == "transformers"
    assert TL.distributed_backend(RunConfig(backend="unsloth"), 1).backend == "unsloth"
    with pytest.raises(CaiError, match="one GPU only"):
        TL.distributed_backend(RunConfig(backend="unsloth"), 2)


def test_lora_fingerprint_ignores_adapter_name_and_sees_values():
    a = {"m.q_proj.lora_A.default.weight": torch.ones(2, 2), "m.q_proj.base_layer.weight": torch.zeros(2)}
    b = {"m.q_proj.lora_A.weight": torch.ones(2, 2)}
    assert TL.lora_fingerprint(a.items()) == TL.lora_fingerprint(b.items())
    b["m.q_proj.lora_A.weight"][0, 0] = 1.0 + 1e-7
    assert TL.lora_fingerprint(a.items()) != TL.lora_fingerprint(b.items())
    with pytest.raises(CaiError):
        TL.lora_fingerprint({"w": torch.ones(1)}.items())


def test_launch_command_and_cli_errors(tmp_path):
    cfg = ROOT / "configs" / "accelerate" / "ddp.yaml"
    cmd = TL.launch_command(tmp_path, accelerate_config=cfg, num_processes=4, main_process_port=29555)
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("--config_file") + 1] == str(cfg) and cmd[cmd.index("--num_processes") + 1] == "4"
    assert cmd[-4:] == ["-m", "cai_lib.train_launch", "--run-dir", str(tmp_path)]
    with pytest.raises(CaiError, match="accelerate config not found"):
        TL.launch_command(tmp_path, accelerate_config=tmp_path / "nope.yaml")
    from cai_lib.cli import main
    assert main(["train", "--run", str(tmp_path / "missing")]) == 1  # no config.json: one-line error


def test_set_overrides_parse_json_and_refuse_unknown_fields(tmp_path):
    assert TL._overrides(["max_steps=3", "loss_type=[\"sigmoid\"]", "model=embedded:gemma-3-270m"]) == \
        {"max_steps": 3, "loss_type": ["sigmoid"], "model": "embedded:gemma-3-270m"}
    with pytest.raises(CaiError, match="KEY=VALUE"):
        TL._overrides(["max_steps"])
    write_json(tmp_path / "config.json", RunConfig().to_dict())
    with pytest.raises(CaiError, match="not a RunConfig field"):
        TL.run(["--run-dir", str(tmp_path), "--set", "max_stepz=3"])


@pytest.mark.parametrize("name", ["ddp.yaml", "fsdp_qlora.yaml", "deepspeed_zero3.yaml"])
def test_accelerate_configs_parse_as_accelerate_configs(name):
    from accelerate.commands.config.config_args import load_config_from_file
    cfg = load_config_from_file(str(ROOT / "configs" / "accelerate" / name))
    want = {"ddp.yaml": "MULTI_GPU", "fsdp_qlora.yaml": "FSDP", "deepspeed_zero3.yaml": "DEEPSPEED"}[name]
    assert str(cfg.distributed_type).endswith(want)
    if name == "deepspeed_zero3.yaml":
        assert cfg.deepspeed_config["zero_stage"] == 3 and cfg.deepspeed_config["zero3_init_flag"]


# ---------------------------------------------------------------------------------------
# two real processes (gloo)
# ---------------------------------------------------------------------------------------

WORKER = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    from pathlib import Path
    from cai_lib.distributed import init_distributed, run_sharded, ShardedGenerate
    from cai_lib.generate import generate
    from cai_lib.jsonl import read_jsonl, write_jsonl
    from cai_lib.models import load_base

    model_dir, items_path, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    info = init_distributed()
    assert info.world == 2, info
    loaded = load_base(model_dir)
    items = read_jsonl(items_path)
    kw = dict(max_new_tokens=6, batch_size=3, progress=False)
    run_sharded(loaded.model, loaded.tokenizer, items, shard_dir=out / "shards", out=out / "merged.jsonl",
                prompt_key="instruction", **kw)
    dropin = ShardedGenerate(out / "calls")(loaded.model, loaded.tokenizer, [i["instruction"] for i in items], **kw)
    # A caller that cuts its own batches (stage 01): chunks of world × batch_size, in its order.
    order = sorted((i["instruction"] for i in items), key=lambda p: (-len(p), p))
    sg = ShardedGenerate(out / "given", batch_order="as_given")
    given = [r for j in range(0, len(order), 6) for r in sg(loaded.model, loaded.tokenizer, order[j:j + 6], **kw)]
    if info.is_main:
        write_jsonl(out / "dropin.jsonl", dropin)
        write_jsonl(out / "given.jsonl", given)
""")


def test_two_processes_generate_what_one_process_generates(tiny_model_dir, tmp_path):
    (tmp_path / "worker.py").write_text(WORKER)
    write_jsonl(tmp_path / "items.jsonl", ITEMS)
    out = tmp_path / "out"
    run_checked([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1",
                 "--num_processes", "2", "--mixed_precision", "no", "--dynamo_backend", "no",
                 "--main_process_port", str(free_port()),
                 str(tmp_path / "worker.py"), str(tiny_model_dir), str(tmp_path / "items.jsonl"), str(out)])
    assert sorted(p.name for p in (out / "shards").glob("shard-*.jsonl")) == \
        ["shard-00000-of-00002.jsonl", "shard-00001-of-00002.jsonl"]
    loaded = load_tiny(tiny_model_dir)
    from cai_lib.generate import generate
    single = generate(
        loaded.model, loaded.tokenizer, PROMPTS, max_new_tokens=6, batch_size=3, progress=False)
    fields = ("response", "finish_reason", "prompt_tokens", "new_tokens")
    merged = read_jsonl(out / "merged.jsonl")
    assert [r["id"] for r in merged] == [it["id"] for it in ITEMS]
    assert [{k: r[k] for k in fields} for r in merged] == [{k: r[k] for k in fields} for r in single]
    dropin = read_jsonl(out / "dropin.jsonl")
    assert [{k: r[k] for k in fields} for r in dropin] == [{k: r[k] for k in fields} for r in single]
    order = sorted(PROMPTS, key=lambda p: (-len(p), p))
    per_chunk = [r for j in range(0, len(order), 3) for r in generate(loaded.model, loaded.tokenizer, order[j:j + 3],
                                                                     max_new_tokens=6, batch_size=3, progress=False)]
    given = read_jsonl(out / "given.jsonl")
    assert [{k: r[k] for k in fields} for r in given] == [{k: r[k] for k in fields} for r in per_chunk]


ANSWERS = ["Paris.", "Four.", "Yes.", "red, green and blue."]
RAMBLE = "Q: What is two plus two?\nA: Four.\nQ: What is the capital"


def _make_run(path, model_dir, precompute=False):
    pairs = [{"prompt": f"Answer this question: What is {i} plus {i}?", "chosen": ANSWERS[i % 4],
              "rejected": RAMBLE} for i in range(8)]
    write_jsonl(path / "data" / "preference_pairs.jsonl", pairs)
    # Global batch 4 = 2 per device × 2 accumulation on one process, 2 × 1 × 2 processes.
    cfg = RunConfig(model=str(model_dir), precompute_ref_log_probs=precompute, lora_r=8, lora_alpha=16, learning_rate=1e-2, max_steps=4, save_steps=2,
                    per_device_batch_size=2, gradient_accumulation_steps=2, warmup_ratio=0.0,
                    max_length=64, max_prompt_length=32, seed=0)
    write_json(path / "config.json", cfg.to_dict())
    return path


def test_ddp_training_on_two_processes_matches_one_device(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    # The profile asks for precomputed reference log-probs (the default); with several
    # processes the launcher turns that off (datasets cache race), which must not change
    # the result against the one-device run that computes them per step.
    multi = _make_run(tmp_path / "multi", tiny_model_dir, precompute=True)
    single = _make_run(tmp_path / "single", tiny_model_dir)
    proc = run_checked([sys.executable, "-m", "cai_lib.cli", "train", "--run", str(multi),
                        "--accelerate-config", str(ROOT / "configs" / "accelerate" / "ddp.yaml"),
                        "--num-processes", "2", "--main-process-port", str(free_port())])
    assert "accelerate.commands.launch" in proc.stderr
    assert "precompute_ref_log_probs is off with several processes" in proc.stdout
    rec = read_json(multi / "results" / "train_launch.json")
    assert rec["world_size"] == 2 and rec["global_batch"] == 4 and rec["gradient_accumulation_steps"] == 1
    assert rec["finished"] and rec["steps"] == 4
    hashes = [r["lora_sha256"] for r in rec["per_rank"]]
    assert len(hashes) == 2 and hashes[0] == hashes[1] and rec["adapters_synchronized"] is True
    assert rec["saved_matches_ranks"] is True  # the saved adapter is the ranks' adapter

    # The single-device reference, in this process: same config, accumulation instead of ranks.
    out = TL.run(["--run-dir", str(single), "--no-progress"])
    assert out["distributed"]["world_size"] == 1 and out["steps"] == 4

    a = load_file(str(multi / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(single / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    moved = max(float((a[k]).abs().max()) for k in a if "lora_B" in k)
    assert moved > 0  # lora_B starts at zero: training changed it
    la, lb = read_json(multi / "results" / "training_log.json"), read_json(single / "results" / "training_log.json")
    assert [s["step"] for s in la["steps"]] == [1, 2, 3, 4]
    for sa, sb in zip(la["steps"], lb["steps"]):
        assert sa["tokens_seen"] == sb["tokens_seen"]  # counted over both ranks
        assert sa["loss"] == pytest.approx(sb["loss"], rel=1e-5)
    assert json.loads((multi / "adapter" / "cai_adapter.json").read_text())["steps"] == 4
