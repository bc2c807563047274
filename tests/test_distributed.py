"""Several processes on CPU (gloo): DDP training equals one device with the same global
batch, and every rank ends with the same adapter.

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
from pathlib import Path

import pytest
import torch

from cai_lib import distributed as D
from cai_lib import train_launch as TL
from cai_lib.config import RunConfig
from cai_lib.errors import CaiError
from cai_lib.jsonl import read_json, write_json, write_jsonl

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent

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


# ---------------------------------------------------------------------------------------
# rank / world
# ---------------------------------------------------------------------------------------

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


@pytest.mark.slow  # two accelerate-launched processes: mostly torch/TRL imports, ~25 s
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
