"""Every run parameter, typed, ranged and documented once (like TRL's DPOConfig).

`RunConfig` is the single source of truth. Each field carries its type, its allowed
range or choice set and its help text; profiles (`notebooks/params/<name>.yaml`),
`cai run --set key=value` and notebook parameters are all checked against it, and a bad
value is one line naming the key, the value and the fix — before anything heavy loads
(this module imports no torch/transformers: `cai run` validates a profile in well under
a second).

Defaults are the `cpu-quick` values and live here only: a profile states what differs.
`cai run` writes the full resolved config to `<run_dir>/config.json`; a notebook takes
that file as it is — its parameters default to None ("take it from the run") — and
says so when a parameter overrides a value.

Coercion is deliberately narrow. YAML 1.1 reads `1e-4` as a *string*; such a string is
turned into a number only when it is unambiguously one. Booleans are never coerced: a
quoted "false" is a non-empty, truthy string, and accepting it is how a profile once ran
a model folder's own Python file (`trust_remote_code: "false"`).

Defaults that differ from the upstream libraries' are marked "(differs: …)".
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from .constants import (BACKENDS, DTYPES, EVAL_ADAPTERS, GATE_FIELDS, GEN_CACHES, GEN_QUANTIZATIONS, PAIR_STRATEGIES,
                        QUANTIZATIONS, REPORT_TO)
from .errors import CaiError

PROFILE_DIR = Path(__file__).resolve().parent.parent / "notebooks" / "params"

BASELINE_FORMATS = ("raw", "instruction_response", "qa", "few_shot")
# TRL's DPOConfig.loss_type values (TRL validates the combination again when training).
LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")


def _p(default, help: str, *, kind: type, lo=None, hi=None, lo_open=False, hi_open=False, choices=None,
       item: type | None = None, nonempty: bool = False):
    """A RunConfig field: default + the rules `validate` enforces + its one-line help."""
    meta = {"help": help, "kind": kind, "lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open,
            "choices": choices, "item": item, "nonempty": nonempty}
    if isinstance(default, list):
        return field(default_factory=lambda d=tuple(default): list(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class RunConfig:
    # ---- model --------------------------------------------------------------------------
    model: str = _p("embedded:gemma-3-270m", "local folder, hub id, *.gguf file, or embedded:gemma-3-270m",
                    kind=str, nonempty=True)
    dtype: str = _p("auto", "auto: bf16 on CUDA, fp32 on CPU", kind=str, choices=DTYPES)
    quantization: str = _p("none", "bitsandbytes weights for training (CUDA only)", kind=str, choices=QUANTIZATIONS)
    backend: str = _p("auto", "auto: unsloth for training when CUDA and unsloth import, else transformers",
                      kind=str, choices=BACKENDS)
    trust_remote_code: bool = _p(False, "never run a model repo's own code unless asked", kind=bool)
    allow_instruct_model: bool = _p(False, "refuse *-Instruct/-it/chat models as 'base' unless true", kind=bool)
    seed: int = _p(0, "one seed for sampling items, few-shot rotation, training and bootstrap", kind=int, lo=0)

    # ---- generation (stages 00, 01, 03) ---------------------------------------------------
    gen_batch_size: int = _p(16, "generation batch (left padding); halved on CUDA OOM", kind=int, lo=1)
    # Evaluation always uses the same weights and decoding path for base and trained (one copy;
    # the adapter toggled, or merged after the base arms: eval_adapter); as_train = the
    # quantization training used.
    gen_quantization: str = _p("as_train", "weights for generation stages: as_train | none | 8bit | 4bit",
                               kind=str, choices=GEN_QUANTIZATIONS)
    gen_cache: str = _p("auto", "KV cache for decoding: auto picks what measured faster on this device",
                        kind=str, choices=GEN_CACHES)
    determinism_sample: int = _p(8, "items compared batched vs batch-1 (0 skips the check)", kind=int, lo=0)

    # ---- 00 baseline --------------------------------------------------------------------
    baseline_items: str = _p("", "item JSONL; empty = the shipped starter items", kind=str)
    baseline_n_items: int = _p(32, "items per format (sampled per type, seeded); 0 = all", kind=int, lo=0)
    baseline_formats: list = _p(list(BASELINE_FORMATS), "prompt formats compared", kind=list, item=str,
                                choices=BASELINE_FORMATS, nonempty=True)
    baseline_max_new_tokens: int = _p(48, "greedy; no stop strings (stopping is part of obeying)", kind=int, lo=1)

    # ---- 01 data ------------------------------------------------------------------------
    n_train_items: int = _p(160, "train instructions sampled from the train pool (balanced by type); 0 = all",
                            kind=int, lo=0)
    n_eval_items: int = _p(120, "held-out eval instructions (balanced by type); 0 = all", kind=int, lo=0)
    pair_strategy: str = _p("format_distillation", "how pairs are made", kind=str, choices=PAIR_STRATEGIES)
    data_max_new_tokens: int = _p(48, "per generation while producing pairs", kind=int, lo=1)
    n_fewshot: int = _p(3, "few-shot examples per data-generation prompt", kind=int, lo=1)
    # Keep pairs whose rejected already passes strict? Off: such a pair has no verifiable
    # preference, and on a 270M model critique_revision's "revisions" of correct answers
    # mostly restyle or pad them (dropped as "rejected_passes_strict", counted).
    pair_keep_if_rejected_passes: bool = _p(False, "keep pairs whose rejected side already passes strict",
                                            kind=bool)
    # Answer balance (issue 12): a 270M model answers "Yes" far more often than it answers
    # "No" correctly, so verified pairs over-represent "yes" items and teach a yes-bias.
    pair_balance: bool = _p(False, "drop pairs so no yes/no or number answer class exceeds its share among the "
                                   "train items by more than pair_balance_tolerance", kind=bool)
    pair_balance_tolerance: float = _p(0.05, "how far above its true share an answer class may sit after "
                                             "balancing", kind=float, lo=0.0, hi=1.0)
    # self_consistency (cai_lib/pairs.py): k sampled few-shot answers per item vote; the
    # verified majority answer is chosen and short, finished, wrong samples become extra
    # rejected answers of similar length (correct-vs-wrong, not short-vs-long).
    pair_sc_k: int = _p(4, "self_consistency: sampled few-shot answers per train item", kind=int, lo=1)
    pair_sc_temperature: float = _p(0.7, "self_consistency: sampling temperature (seeded per item)", kind=float,
                                    lo=0.0, lo_open=True)
    pair_sc_max_wrong: int = _p(1, "self_consistency: extra pairs per item with a verified-wrong sample as "
                                   "rejected (0 = none)", kind=int, lo=0)
    pair_sc_length_tolerance: float = _p(0.3, "self_consistency: a wrong sample is length-matched when its "
                                              "word count is within this share of chosen's", kind=float, lo=0.0)
    skew_threshold: float = _p(0.10, "flag an answer skew when an answer class's share exceeds its true share "
                                     "by more than this (pair_stats.json, stats.json)", kind=float, lo=0.0,
                               hi=1.0, lo_open=True)

    # ---- 02 train -----------------------------------------------------------------------
    lora_r: int = _p(16, "LoRA rank", kind=int, lo=1)
    lora_alpha: int = _p(32, "LoRA scaling numerator", kind=int, lo=1)
    lora_dropout: float = _p(0.0, "(differs: TRL examples use 0.05)", kind=float, lo=0.0, hi=1.0, hi_open=True)
    lora_target_modules: list = _p(["all-linear"], "modules that get adapters", kind=list, item=str, nonempty=True)
    beta: float = _p(0.1, "DPO temperature", kind=float, lo=0.0, lo_open=True)
    loss_type: list = _p(["sigmoid", "sft"], "TRL loss terms (differs: TRL ['sigmoid'])", kind=list, item=str,
                         choices=LOSS_TYPES, nonempty=True)
    loss_weights: list = _p([1.0, 1.0], "one weight per loss_type entry", kind=list, item=float, lo=0.0,
                            nonempty=True)
    # False: completion = "\n" + answer (next line); True: " " + answer. Prompt = raw instruction
    # either way (cai_lib/train.py). 2x2 ablation on the embedded model (benchmarks/results/
    # ablation_loss_cpu.json): the SFT term decides whether the model stops (EOS 0-10% -> 100%);
    # the separator did not separate (strict 17/60 newline vs 22/60 space, Fisher p = 0.44).
    chosen_leading_space: bool = _p(False, "False: the answer starts on the line after the prompt", kind=bool)
    learning_rate: float = _p(1e-4, "peak learning rate (differs: TRL 1e-6 — LoRA needs a larger step)",
                              kind=float, lo=0.0, hi=1.0, lo_open=True)
    num_epochs: float = _p(3.0, "epochs over the pairs (> 0; ignored when max_steps >= 1)", kind=float,
                           lo=0.0, lo_open=True)
    max_steps: int = _p(-1, ">= 1 overrides num_epochs; -1 = use num_epochs", kind=int, lo=-1)
    per_device_batch_size: int = _p(4, "pairs per device per step", kind=int, lo=1)
    gradient_accumulation_steps: int = _p(1, "micro-batches per optimizer step", kind=int, lo=1)
    max_length: int = _p(256, "prompt + completion tokens; longer pairs are dropped and counted", kind=int, lo=2)
    max_prompt_length: int = _p(128, "prompt tokens (< max_length)", kind=int, lo=1)
    warmup_ratio: float = _p(0.1, "share of steps with linear warm-up", kind=float, lo=0.0, hi=1.0, hi_open=True)
    save_steps: int = _p(10, "checkpoint every N steps (resume point)", kind=int, lo=1)
    save_total_limit: int = _p(2, "newest checkpoints kept (two: the newest may be cut by a kill mid-save)",
                               kind=int, lo=1)
    precompute_ref_log_probs: bool = _p(True, "reference pass once: ~40% faster steps (differs: TRL False)",
                                        kind=bool)
    # The reference pass is inference only (no activations kept for backward), so a small model
    # takes far larger batches there than in training; TRL defaults it to the training batch.
    ref_batch_size: int = _p(0, "pairs per batch of the precomputed reference pass; 0 = per_device_batch_size",
                             kind=int, lo=0)
    gradient_checkpointing: bool = _p(False, "trade compute for memory (large models)", kind=bool)
    # Unsloth's torch.compile: on an H100 it cost ~83 s once at the first step and saved
    # ~0.18 s per later step (270M shape), paying off only after ~450 steps.
    unsloth_compile: bool = _p(False, "Unsloth torch.compile; pays off only on long runs", kind=bool)
    # Live curves during a long run, through TRL's own integrations. The curves in the report
    # come from the trainer's log_history either way (results/training_log.json).
    report_to: str = _p("none", "TRL metrics sink: none | tensorboard (<run>/tensorboard, offline) | trackio (local) "
                        "| wandb | mlflow — the package must be installed", kind=str, choices=REPORT_TO)

    # ---- 03 evaluate --------------------------------------------------------------------
    eval_max_new_tokens: int = _p(48, "greedy, no stop strings", kind=int, lo=1)
    eval_adapter: str = _p("auto", "trained arm's adapter: merged into the weights after the base arms, or unmerged; "
                                   "auto merges unquantized weights on a GPU", kind=str, choices=EVAL_ADAPTERS)
    dry_run: bool = _p(False, "load models, validate the eval set, print the plan, generate nothing", kind=bool)

    # ---- 04 report ----------------------------------------------------------------------
    gate_target: float = _p(0.95, "trained success rate needed to PASS", kind=float, lo=0.0, hi=1.0, lo_open=True)
    gate_alpha: float = _p(0.01, "McNemar p-value needed to PASS", kind=float, lo=0.0, hi=1.0, lo_open=True,
                           hi_open=True)
    gate_field: str = _p("strict", "the success measure the gate uses", kind=str, choices=GATE_FIELDS)
    spot_check_n: int = _p(20, "responses sampled for a human spot check", kind=int, lo=0)
    # Reported always; required for PASS only when true (cai_lib/gate.py says why not by default).
    gate_require_in_context: bool = _p(False, "PASS also needs trained raw to beat the base model's few-shot "
                                              "prompt on the same items (McNemar p < gate_alpha)", kind=bool)
    n_bootstrap: int = _p(2000, "bootstrap resamples for the paired-difference interval", kind=int, lo=100)

    def __post_init__(self):
        self.validate()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}

    @classmethod
    def help(cls, name: str) -> str:
        return {f.name: f.metadata["help"] for f in fields(cls)}[name]

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], source: str = "config") -> "RunConfig":
        """Build from a mapping; unknown keys are an error (papermill would only warn)."""
        if not isinstance(values, Mapping):
            raise CaiError(f"{source}: expected a mapping of parameter: value, got {type(values).__name__}")
        known = cls.field_names()
        unknown = sorted(str(k) for k in values if k not in known)
        if unknown:
            close = _closest(unknown[0], known)
            hint = f" (did you mean {close!r}?)" if close else ""
            raise CaiError(f"{source}: unknown key {unknown[0]!r}{hint} — valid keys are the RunConfig fields "
                           "in cai_lib/config.py")
        coerced = {k: coerce(k, v, source) for k, v in values.items()}
        cfg = cls.__new__(cls)
        for f in fields(cls):  # defaults first, then the given values, then one validation pass
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            setattr(cfg, f.name, coerced.get(f.name, default))
        cfg.validate(source)
        return cfg

    def validate(self, source: str = "config") -> None:
        for f in fields(self):
            setattr(self, f.name, coerce(f.name, getattr(self, f.name), source))
        if len(self.loss_weights) != len(self.loss_type):
            raise CaiError(f"{source}: loss_weights={self.loss_weights} needs one weight per loss_type entry "
                           f"({len(self.loss_type)}: {self.loss_type}) — make the two lists the same length")
        if self.max_steps == 0:
            raise CaiError(f"{source}: max_steps=0 would save an untrained adapter — use max_steps >= 1, "
                           "or -1 to train num_epochs epochs")
        if self.max_prompt_length >= self.max_length:
            raise CaiError(f"{source}: max_prompt_length={self.max_prompt_length} must be below "
                           f"max_length={self.max_length} — leave room for the answer")
        gen_quant = self.quantization if self.gen_quantization == "as_train" else self.gen_quantization
        if self.eval_adapter == "merged" and gen_quant != "none":
            raise CaiError(f"{source}: eval_adapter=merged needs unquantized generation weights, these are "
                           f"{gen_quant} (merging would re-quantize them) — set gen_quantization: none, "
                           "or eval_adapter: unmerged or auto")


_FIELDS = {f.name: f for f in fields(RunConfig)}
_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
_INT_RE = re.compile(r"^[-+]?\d{1,18}$")


def _closest(name: str, known) -> str | None:
    import difflib
    hits = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.75)
    return hits[0] if hits else None


def _show(value) -> str:
    """repr() that stays one short line, even for a 5000-digit integer."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"<a {'negative ' if value < 0 else ''}integer of ~{int(value.bit_length() * 0.30103)} digits>"
    text = repr(value) if not isinstance(value, (list, dict)) or len(str(value)) < 200 else f"<{type(value).__name__}>"
    return text if len(text) <= 80 else text[:77] + "..."


def _number(key: str, value, want: type, source: str):
    """An int or float from a YAML value; strings only when unambiguously a number."""
    shown = f"{key}={_show(value)}"
    if isinstance(value, bool):
        raise CaiError(f"{source}: {shown} is a boolean but {key} takes a number — write a number")
    if isinstance(value, str):
        s = value.strip()
        if want is int and _INT_RE.match(s):
            return int(s)
        if want is float and _FLOAT_RE.match(s) and len(s) <= 40:
            value = float(s)
        else:
            kind = "a whole number" if want is int else "a number"
            raise CaiError(f"{source}: {shown} is not {kind} — write e.g. {key}: {_example(want)}")
    if want is int:
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            return int(value)
        if not isinstance(value, int):
            raise CaiError(f"{source}: {shown} is not a whole number — write e.g. {key}: {_example(int)}")
        if abs(value) > 2**63:
            raise CaiError(f"{source}: {shown} is too large — use a number in range")
        return value
    if isinstance(value, int):
        if abs(value) > 2**53:
            raise CaiError(f"{source}: {shown} is too large — use a number in range")
        return float(value)
    if not isinstance(value, float):
        raise CaiError(f"{source}: {shown} is not a number — write e.g. {key}: {_example(float)}")
    if not math.isfinite(value):
        raise CaiError(f"{source}: {shown} is not a finite number — write a finite value")
    return value


def _example(want: type) -> str:
    return "16" if want is int else "0.0001"


def _check_range(key: str, value, meta: dict, source: str) -> None:
    lo, hi = meta["lo"], meta["hi"]
    too_low = lo is not None and (value <= lo if meta["lo_open"] else value < lo)
    too_high = hi is not None and (value >= hi if meta["hi_open"] else value > hi)
    if too_low or too_high:
        parts = []
        if lo is not None:
            parts.append(f"{'>' if meta['lo_open'] else '>='} {lo:g}")
        if hi is not None:
            parts.append(f"{'<' if meta['hi_open'] else '<='} {hi:g}")
        raise CaiError(f"{source}: {key}={_show(value)} is out of range — it must be {' and '.join(parts)}")


def coerce(key: str, value, source: str = "config"):
    """`value` checked against RunConfig's rules for `key`; returns the normalised value."""
    f = _FIELDS.get(key)
    if f is None:
        raise CaiError(f"{source}: unknown key {key!r} — valid keys are the RunConfig fields in cai_lib/config.py")
    meta = f.metadata
    kind = meta["kind"]
    if value is None:
        raise CaiError(f"{source}: {key} is empty (null) — give a value or remove the key to use the default")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in {"true", "false", "yes", "no", "on", "off"}:
            raise CaiError(f"{source}: {key}={_show(value)} is a quoted string, not a boolean — drop the quotes "
                           f"({key}: {value.strip().lower() in {'true', 'yes', 'on'} and 'true' or 'false'})")
        raise CaiError(f"{source}: {key}={_show(value)} is not a boolean — write {key}: true or {key}: false")
    if kind in (int, float):
        v = _number(key, value, kind, source)
        _check_range(key, v, meta, source)
        return v
    if kind is str:
        if not isinstance(value, str):
            raise CaiError(f"{source}: {key}={_show(value)} is not text — write it as a string")
        if meta["nonempty"] and not value.strip():
            raise CaiError(f"{source}: {key} is empty — {meta['help']}")
        if meta["choices"] and value not in meta["choices"]:
            raise CaiError(f"{source}: {key}={_show(value)} is not one of {list(meta['choices'])}")
        return value
    # lists
    if not isinstance(value, (list, tuple)):
        raise CaiError(f"{source}: {key}={_show(value)} must be a list, e.g. {key}: {_FIELDS[key].default_factory()}")
    if meta["nonempty"] and not value:
        raise CaiError(f"{source}: {key} is an empty list — give at least one entry")
    out = []
    for x in value:
        if meta["item"] is float:
            x = _number(key, x, float, source)
            _check_range(key, x, meta, source)
        elif not isinstance(x, str):
            raise CaiError(f"{source}: {key} entry {_show(x)} is not text — write the list as strings")
        elif meta["choices"] and x not in meta["choices"]:
            raise CaiError(f"{source}: {key} entry {_show(x)} is not one of {list(meta['choices'])}")
        out.append(x)
    if meta["item"] is str and len(set(out)) != len(out):
        raise CaiError(f"{source}: {key}={out} repeats an entry — list each once")
    return out


# ---- profiles --------------------------------------------------------------------------------

def profile_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in {".yaml", ".yml"}:
        if not p.is_file():
            raise CaiError(f"{p}: profile file not found — pass an existing YAML file or a profile name")
        return p
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name_or_path or ""):
        raise CaiError(f"profile {name_or_path!r}: not a profile name — pass a name from notebooks/params or a "
                       ".yaml path")
    cand = PROFILE_DIR / f"{name_or_path}.yaml"
    if not cand.exists():
        names = sorted(x.stem for x in PROFILE_DIR.glob("*.yaml"))
        raise CaiError(f"unknown profile {name_or_path!r} — choose one of {names} or pass a path to a YAML file")
    return cand


def load_profile(name_or_path: str) -> dict:
    """The raw key/value mapping of a profile, validated against RunConfig."""
    import yaml
    path = profile_path(name_or_path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CaiError(f"{path}: not UTF-8 text (byte {exc.start}) — save the profile as UTF-8") from None
    except OSError as exc:
        raise CaiError(f"{path}: cannot read ({exc.strerror}) — check the path and permissions") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CaiError(f"{path}: not valid YAML ({str(exc).splitlines()[0]}) — fix the file") from None
    except RecursionError:
        raise CaiError(f"{path}: nested too deeply to read — a profile is a flat mapping") from None
    except ValueError as exc:  # e.g. a 5000-digit integer (Python's int-string limit)
        huge = re.search(r"^\s*([\w-]+)\s*:.*\d{4000}", text, re.M)
        where = f"key {huge.group(1)!r}: " if huge else ""
        raise CaiError(f"{path}: {where}a value cannot be read ({str(exc).split(':')[0]}) — use a number in range") from None
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise CaiError(f"{path}: a profile must be a mapping of parameter: value")
    RunConfig.from_mapping(values, source=str(path))  # validates keys and values
    return values


def parse_overrides(pairs: list[str] | None) -> dict:
    """`--set key=value` pairs; values are read as YAML scalars/lists, then validated."""
    import yaml
    out: dict = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CaiError(f"--set {pair!r}: expected key=value, e.g. --set learning_rate=2e-4")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except (yaml.YAMLError, ValueError, RecursionError):
            raise CaiError(f"--set {key}=...: the value is not valid YAML or out of range — quote or fix it") from None
        coerce(key, value, "--set")
        out[key] = value
    return out


# ---- notebooks -----------------------------------------------------------------------------

def resolve(run_dir: Path | None, params: Mapping[str, Any]) -> RunConfig:
    """Config for a notebook: the run's config.json exactly, unless a parameter overrides it.

    `params` may be a notebook's globals(): only RunConfig field names whose value is not
    None are taken (a notebook's parameters default to None, "take it from the run").
    Each override is printed next to the run's own value, so a reader of the executed
    notebook sees that it did not run with the run's config.
    """
    from .jsonl import read_json
    values: dict = {}
    config_file = Path(run_dir) / "config.json" if run_dir is not None else None
    if config_file is not None and config_file.exists():
        values.update(read_json(config_file))  # a corrupt file: one-line CaiError
        recorded = RunConfig.from_mapping(values, source=str(config_file)).to_dict()
    else:
        recorded = RunConfig().to_dict()
    known = RunConfig.field_names()
    overrides = {k: v for k, v in params.items() if k in known and v is not None}
    overrides = {k: v for k, v in overrides.items() if coerce(k, v, "notebook parameter") != recorded[k]}
    for k, v in sorted(overrides.items()):
        origin = "the run's config.json" if config_file is not None and config_file.exists() else "the default"
        print(f"override: {k} = {v!r} ({origin} has {recorded[k]!r})")
    cfg = RunConfig.from_mapping({**recorded, **overrides}, source="notebook parameters")
    if config_file is not None and not config_file.exists():  # a notebook that starts a new run records it
        from .jsonl import write_json
        write_json(config_file, cfg.to_dict())
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
