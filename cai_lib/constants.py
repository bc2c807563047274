"""Choice sets shared by the config and the modules that act on them.

The bottom layer: imports nothing from the package, so `config` can validate a profile
without importing `models` (and through it torch or transformers).
"""

BACKENDS = ("auto", "transformers", "unsloth")
QUANTIZATIONS = ("none", "8bit", "4bit")
# Weights used by generation-only stages (00, 01, 03): "as_train" = the training
# quantization (evaluation then sees exactly the weights the adapter was trained on).
GEN_QUANTIZATIONS = ("as_train",) + QUANTIZATIONS
# KV cache for generation: "auto" picks per device what measured faster (cai_lib.generate).
GEN_CACHES = ("auto", "static", "dynamic")
# How stage 03's trained arm carries the adapter: "unmerged" = PEFT's LoRA layers on the base
# weights (switched off for the base arms), "merged" = the LoRA product folded into the base
# weights after the base arms ran; "auto" decides per device and weights (evaluate.adapter_plan).
EVAL_ADAPTERS = ("auto", "merged", "unmerged")
DTYPES = ("auto", "float32", "bfloat16", "float16")
PAIR_STRATEGIES = ("format_distillation", "critique_revision", "self_consistency")
GATE_FIELDS = ("strict", "loose")
PURPOSES = ("generate", "train")
# Where TRL sends training metrics (TrainingArguments.report_to); "none" keeps them in
# results/training_log.json only. tensorboard and trackio write locally (offline).
REPORT_TO = ("none", "tensorboard", "trackio", "wandb", "mlflow")
