"""Every run parameter, documented once (like TRL's DPOConfig).

A profile (`notebooks/params/<name>.yaml`) is a flat mapping of some of these fields.
`cai run` passes each notebook the profile keys it declares in its `parameters` cell and
writes the full resolved config to `<run_dir>/config.json`; a notebook rebuilds its
`RunConfig` from that file plus its own parameters (its parameters win). Dataclass
defaults are the `cpu-quick` values, so a notebook opened in JupyterLab runs as is.

Defaults that differ from the upstream libraries' are marked "(differs: …)".
"""

from __future__ import annotations

import dataclasses

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import yaml

from .errors import CaiError
from .jsonl import read_json
from .constants import BACKENDS, QUANTIZATIONS

PROFILE_DIR = Path(__file__).resolve().parent.parent / "notebooks" / "params"


@dataclass
class RunConfig:
    # ---- model --------------------------------------------------------------------------
    model: str = "embedded:gemma-3-270m"  # local folder, hub id, *.gguf file, or embedded:gemma-3-270m
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16 (auto: bf16 on CUDA, fp32 on CPU)
    quantization: str = "none"  # none | 8bit | 4bit (bitsandbytes; CUDA only)
    backend: str = "auto"  # auto | transformers | unsloth (auto: unsloth when CUDA and unsloth import)
    trust_remote_code: bool = False  # never run a model repo's code unless asked
    allow_instruct_model: bool = False  # refuse *-Instruct/-it/chat models as "base" unless True
    seed: int = 0  # one seed for sampling items, few-shot rotation, training and bootstrap

    # ---- 00 baseline --------------------------------------------------------------------
    baseline_items: str = ""  # item JSONL; "" = the shipped starter items
    baseline_n_items: int = 32  # items per format (sampled per type, seeded); 0 = all
    baseline_formats: list = field(default_factory=lambda: ["raw", "instruction_response", "qa", "few_shot"])
    baseline_max_new_tokens: int = 48  # greedy; no stop strings (stopping is part of obeying)
    gen_batch_size: int = 16  # generation batch (left padding); halved on CUDA OOM
    determinism_sample: int = 8  # items compared batched vs batch-1

    # ---- 01 data ------------------------------------------------------------------------
    n_train_items: int = 160  # train instructions sampled from the train pool (balanced by type)
    n_eval_items: int = 120  # held-out eval instructions (balanced by type)
    pair_strategy: str = "format_distillation"  # format_distillation | critique_revision
    data_max_new_tokens: int = 48  # per generation while producing pairs
    n_fewshot: int = 3  # few-shot examples per data-generation prompt
    # Keep pairs whose rejected already passes strict? Off: such a pair has no verifiable
    # preference, and on a 270M model critique_revision's "revisions" of correct answers
    # mostly restyle or pad them (dropped as "rejected_passes_strict", counted).
    pair_keep_if_rejected_passes: bool = False

    # ---- 02 train -----------------------------------------------------------------------
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0  # (differs: PEFT 0.0 too; TRL examples use 0.05)
    lora_target_modules: list = field(default_factory=lambda: ["all-linear"])
    beta: float = 0.1
    loss_type: list = field(default_factory=lambda: ["sigmoid", "sft"])  # (differs: TRL "sigmoid")
    loss_weights: list = field(default_factory=lambda: [1.0, 1.0])
    # False: completion = "\n" + answer (next line); True: " " + answer. Prompt = raw instruction
    # either way (cai_lib/train.py). 2x2 ablation on the embedded model (benchmarks/results/
    # ablation_loss_cpu.json): the SFT term decides whether the model stops (EOS 0-10% -> 100%);
    # the separator did not separate (strict 17/60 newline vs 22/60 space, Fisher p = 0.44).
    chosen_leading_space: bool = False
    learning_rate: float = 1e-4  # (differs: TRL 1e-6 — LoRA needs a larger step)
    num_epochs: float = 3.0
    max_steps: int = -1  # > 0 overrides num_epochs
    per_device_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    max_length: int = 256  # prompt + completion tokens; longer pairs are dropped and counted
    max_prompt_length: int = 128
    warmup_ratio: float = 0.1
    save_steps: int = 10
    save_total_limit: int = 2  # newest checkpoints kept (two: the newest may be cut by a kill mid-save)
    precompute_ref_log_probs: bool = True  # (differs: TRL False) reference pass once: ~40% faster steps
    gradient_checkpointing: bool = False
    # Unsloth's torch.compile: on an H100 it cost ~83 s once at the first step and saved
    # ~0.18 s per later step (270M shape), paying off only after ~450 steps.
    unsloth_compile: bool = False

    # ---- 03 evaluate --------------------------------------------------------------------
    eval_max_new_tokens: int = 48
    dry_run: bool = False  # load models, validate eval set, print plan, generate nothing

    # ---- 04 report ----------------------------------------------------------------------
    gate_target: float = 0.95  # trained strict success needed
    gate_alpha: float = 0.01  # McNemar p-value needed
    gate_field: str = "strict"  # strict | loose
    spot_check_n: int = 20
    n_bootstrap: int = 2000

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], source: str = "config") -> "RunConfig":
        """Build from a mapping; unknown keys are an error (papermill would only warn)."""
        known = cls.field_names()
        unknown = sorted(k for k in values if k not in known)
        if unknown:
            raise CaiError(f"{source}: unknown key {unknown[0]!r} — valid keys are the RunConfig fields in cai_lib/config.py")
        cfg = cls(**dict(values))
        cfg.validate(source)
        return cfg

    def validate(self, source: str = "config") -> None:
        choices = {
            "dtype": {"auto", "float32", "bfloat16", "float16"},
            "quantization": set(QUANTIZATIONS),
            "backend": set(BACKENDS),
            "pair_strategy": {"format_distillation", "critique_revision"},
            "gate_field": {"strict", "loose"},
        }
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value not in allowed:
                raise CaiError(f"{source}: {name}={value!r} is not one of {sorted(allowed)}")
        if not 0 < self.gate_target <= 1:
            raise CaiError(f"{source}: gate_target must be in (0, 1], got {self.gate_target}")
        if len(self.loss_weights) != len(self.loss_type):
            raise CaiError(f"{source}: loss_weights needs one weight per loss_type entry ({len(self.loss_type)})")


def profile_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in {".yaml", ".yml"}:
        if not p.exists():
            raise CaiError(f"{p}: profile file not found — pass an existing YAML or a profile name")
        return p
    cand = PROFILE_DIR / f"{name_or_path}.yaml"
    if not cand.exists():
        names = sorted(x.stem for x in PROFILE_DIR.glob("*.yaml"))
        raise CaiError(f"unknown profile {name_or_path!r} — choose one of {names} or pass a path to a YAML file")
    return cand


def load_profile(name_or_path: str) -> dict:
    """The raw key/value mapping of a profile, validated against RunConfig."""
    path = profile_path(name_or_path)
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise CaiError(f"{path}: not valid YAML ({str(exc).splitlines()[0]}) — fix the file") from None
    if not isinstance(values, dict):
        raise CaiError(f"{path}: a profile must be a mapping of parameter: value")
    RunConfig.from_mapping(values, source=str(path))  # validates keys and values
    return values


def resolve(run_dir: Path | None, params: Mapping[str, Any]) -> RunConfig:
    """Config for a notebook: the run's config.json (if any) overridden by `params`.

    `params` may be a notebook's globals(); only RunConfig field names are taken.
    """
    values: dict = {}
    if run_dir is not None and (Path(run_dir) / "config.json").exists():
        values.update(read_json(Path(run_dir) / "config.json"))  # a corrupt file: one-line CaiError
    known = RunConfig.field_names()
    values.update({k: v for k, v in params.items() if k in known})
    values = {k: v for k, v in values.items() if k in known}
    cfg = RunConfig.from_mapping(values)
    apply_environment(cfg)
    return cfg


def apply_environment(cfg: RunConfig) -> None:
    """Process-wide settings that must exist before a library is imported.

    Unsloth reads UNSLOTH_COMPILE_DISABLE at import; every notebook resolves its config
    before it loads a model, so setting it here covers all stages. An explicit value in
    the environment wins.
    """
    import os
    os.environ.setdefault("UNSLOTH_COMPILE_DISABLE", "0" if cfg.unsloth_compile else "1")

