#!/usr/bin/env bash
# Run THERE (device machine), from the repo root, once setup.sh has installed .whl/g1 and
# .whl/g2 and staged .carry/m1..m4 and .carry/small. Rebuilds the embedded model, runs the
# gpu-small profile end to end, and copies the HTML reports + manifest to $OUT (<= 8 files).
#   RUN_ID=gpu-small-h200 STAGES=00,01 bash scripts/device/run_gpu_small.sh   # split over calls if needed
#   SETS="gen_cache=static backend=transformers" ...                            # profile overrides (cai run --set)
set -o pipefail
source scripts/device/env.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
# gpu-small now trains bf16 LoRA with transformers (backend auto); this matters only when a run
# sets quantization: 4bit (Unsloth): its compilation (~80 s extra once) does not pay off below
# ~450 steps of this shape (reports/benchmarks.md).
export UNSLOTH_COMPILE_DISABLE=${UNSLOTH_COMPILE_DISABLE:-1}
export CAI_NOTEBOOK_LOG=1 TQDM_MININTERVAL=${TQDM_MININTERVAL:-20}  # progress lines in the call's output
RUN_ID=${RUN_ID:-gpu-small-h200}
SET_ARGS=(); for kv in ${SETS:-}; do SET_ARGS+=(--set "$kv"); done
bash scripts/device/rebuild.sh || exit 2
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
# stop inside the 10-minute call limit so the reports/log still get copied; the next call resumes
timeout ${CAI_TIMEOUT:-540} python3 -m cai_lib.cli run --profile gpu-small --run-id "$RUN_ID" ${STAGES:+--stages $STAGES} "${SET_ARGS[@]}" 2>&1 | tee "$OUT/cai_run.log"
rc=${PIPESTATUS[0]}
python3 - "$CAI_BASE_DIR/runs/$RUN_ID/manifest.json" <<'PY' | tee -a "$OUT/cai_run.log"
import json, sys
st = json.load(open(sys.argv[1]))["stages"]
secs = {k: v.get("seconds") for k, v in sorted(st.items())}
print("stage seconds:", secs, "total", round(sum(v or 0 for v in secs.values()), 1))
for k in ("00", "01", "02", "03"):
    print(f"timing {k}:", st.get(k, {}).get("timing"))
print("training:", {k: st.get("02", {}).get(k) for k in ("max_steps", "train_seconds", "train_runtime_trainer")})
PY
cp "$CAI_BASE_DIR"/reports/"$RUN_ID"/*.html "$OUT"/ 2>/dev/null
cp "$CAI_BASE_DIR"/runs/"$RUN_ID"/manifest.json "$OUT"/ 2>/dev/null
ls -la "$OUT"
exit $rc
