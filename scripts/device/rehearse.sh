#!/usr/bin/env bash
# Run THERE (device machine), from the repo root: the gpu-32b dress rehearsal (issue 14) on a
# random-weight Qwen2.5-32B-shaped model, pre-quantized nf4, under an 80 GB cap on one GPU.
#
# Ran 2026-12-03 on a fresh nvidia-h200 (results: benchmarks/results/rehearse_32b_h200/, table in
# reports/benchmarks.md). Measured command times, in the order that fits one session's 30 minutes:
#
#   1. carry [".whl/g1"]  bash scripts/device/setup.sh .whl/g1 && bash scripts/device/rehearse.sh build oom-gen
#        build 32 s (+ 23 s writing 17.9 GB); load 21 s; stage 00 + 01 samples, batch-1 row, revision-frame
#        OOM search 32..256: 423 s in all
#   2. carry [".whl/g2"]  bash scripts/device/setup.sh .whl/g2 && bash scripts/device/rehearse.sh dpo
#        Unsloth 4-bit with compilation, 3 steps of 4 x 4 pairs: 208 s
#   3. (none)             bash scripts/device/rehearse.sh dpo-bnb          # transformers + bnb: 146 s
#   4. (none)             python3 benchmarks/rehearse.py ... --stages eval --run-dir $RUN/run-bnb --oom-search
#        stage 03 (three arms now; two then) + batch-1 row + OOM search 32..512: 378 s
#   5. (none)             bash scripts/device/rehearse.sh oom-dpo          # per_device_batch_size 4, 8, 16, ...
#        with --set backend=transformers it reached 16 in 330 s before the call limit cut 32 (searches
#        now save after every size); give it a call of its own
# Then, here: python3 benchmarks/rehearse.py --merge <the call JSONs> --json rehearse_32b_merged.json
# Each phase writes $OUT/rehearse_<phase>.json (+ .log): peaks, s per batch/step, the OOM search,
# extrapolated hours and cai_lib.preflight's estimate next to each measurement.
# Minimum useful subset (~7 min): call 1 alone ("build quick" for weights + the longest prompts).
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
