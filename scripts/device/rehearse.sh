#!/usr/bin/env bash
# Run THERE (device machine), from the repo root: the gpu-32b dress rehearsal (issue 14) on a
# random-weight Qwen2.5-32B-shaped model, pre-quantized nf4, under an 80 GB cap on one GPU.
#
# Call plan (the device tool's `run`, one line each; a call may run 10 minutes; the machine stays
# warm between calls, and /tmp survives only while it does: a fresh machine needs calls 1-2 again).
# Estimated command time from cai_lib.preflight and the 7B figures; none of it measured yet.
#
#   1. carry [".whl/g1"]  bash scripts/device/setup.sh .whl/g1 && bash scripts/device/rehearse.sh build
#        installs bitsandbytes/trl/datasets; builds /tmp/shape/qwen32b (~19 GB nf4; est. 3-5 min)
#   2. (none)             bash scripts/device/rehearse.sh gen
#        stage 00 + stage 01 response/critique/revision, one batch of 32 each + one batch-1 row (est. 5-7 min)
#   3. carry [".whl/g2"]  bash scripts/device/setup.sh .whl/g2 && bash scripts/device/rehearse.sh dpo
#        3 optimizer steps (4 x 4 pairs each), Unsloth 4-bit with compilation; saves the adapter (est. 4-6 min)
#   4. (none)             bash scripts/device/rehearse.sh eval
#        base + trained (adapter toggled) at batch 32 x 128 tokens, one batch-1 row (est. 3-5 min)
#   5. (none)             bash scripts/device/rehearse.sh dpo-bnb
#        the same 3 steps with transformers + bitsandbytes (prepare_model_for_kbit_training) (est. 4 min)
#   6. (none)             bash scripts/device/rehearse.sh oom-gen      # revision frames, batch 32, 64, 128, ... to OOM
#   7. (none)             bash scripts/device/rehearse.sh oom-dpo      # per_device_batch_size 4, 8, 16, ... to OOM
#   8. (none)             bash scripts/device/rehearse.sh oom-eval     # eval prompts, batch 32, 64, ... to OOM
#
# Each phase writes $OUT/rehearse_<phase>.json (+ .log); the JSON holds peaks, s per batch/step,
# the OOM search, extrapolated hours and cai_lib.preflight's estimate next to each measurement.
# Merge: the `table` field of each JSON is the rows for reports/benchmarks.md.
# Calls 6-8 re-measure their stage's sample before the search (one code path, a few minutes more).
# Minimum useful subset when device time is short (~7 min of device time in one call):
#   carry [".whl/g1"]  bash scripts/device/setup.sh .whl/g1 && bash scripts/device/rehearse.sh build quick
#        quick = the package loads the 4-bit folder, then one batch of 32 revision frames (the longest
#        prompts of the run) x 128 tokens: weights and the largest generation peak under the 80 GB cap.
set -o pipefail
source scripts/device/env.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
SHAPE_DIR=${SHAPE_DIR:-/tmp/shape/qwen32b}
RUN=${RUN:-/tmp/rehearse}
CAP=${CAP_GIB:-80}
R="python3 benchmarks/rehearse.py --model $SHAPE_DIR --profile gpu-32b --cap-gib $CAP"
for phase in "$@"; do
  echo "=== $phase $(date +%T)"
  case $phase in
    build)
      nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/env.txt"
      df -h /tmp | tee -a "$OUT/env.txt"
      python3 benchmarks/build_shape_checkpoint.py --shape qwen32b --out "$SHAPE_DIR" 2>&1 | grep -v Warning | tail -5 | tee "$OUT/build.log"
      cp "$SHAPE_DIR/BUILD.json" "$OUT/build.json" 2>/dev/null
      du -sh "$SHAPE_DIR" | tee -a "$OUT/build.log"
      ;;
    quick)    $R --stages gen --gen-kinds revision --batch1-items 0 --json "$OUT/rehearse_quick.json" 2>&1 | grep -v Warning | tail -30 | tee "$OUT/rehearse_quick.log" ;;
    gen)      $R --stages gen --batch1-items 1 --json "$OUT/rehearse_gen.json" 2>&1 | grep -v Warning | tail -30 | tee "$OUT/rehearse_gen.log" ;;
    dpo)      $R --stages dpo --run-dir "$RUN/run" --json "$OUT/rehearse_dpo.json" 2>&1 | grep -v Warning | tail -30 | tee "$OUT/rehearse_dpo.log" ;;
    dpo-bnb)  $R --stages dpo --run-dir "$RUN/run-bnb" --set backend=transformers --json "$OUT/rehearse_dpo_bnb.json" 2>&1 | grep -v Warning | tail -30 | tee "$OUT/rehearse_dpo_bnb.log" ;;
    eval)     $R --stages eval --run-dir "$RUN/run" --batch1-items 1 --json "$OUT/rehearse_eval.json" 2>&1 | grep -v Warning | tail -30 | tee "$OUT/rehearse_eval.log" ;;
    oom-gen)  $R --stages gen --batch1-items 1 --oom-search --json "$OUT/rehearse_oom_gen.json" 2>&1 | grep -v Warning | tail -30 | tee "$OUT/rehearse_oom_gen.log" ;;
    oom-dpo)  $R --stages dpo --dpo-steps 1 --run-dir "$RUN/run-oom" --oom-search --json "$OUT/rehearse_oom_dpo.json" 2>&1 | grep -v Warning | tail -30 | tee "$OUT/rehearse_oom_dpo.log" ;;
    oom-eval) $R --stages eval --run-dir "$RUN/run" --batch1-items 1 --oom-search --json "$OUT/rehearse_oom_eval.json" 2>&1 | grep -v Warning | tail -30 | tee "$OUT/rehearse_oom_eval.log" ;;
    *) echo "unknown phase $phase (build quick gen dpo dpo-bnb eval oom-gen oom-dpo oom-eval)"; exit 2 ;;
  esac
done
