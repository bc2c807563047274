#!/usr/bin/env bash
# Run THERE (device machine), from the repo root, after setup.sh installed the wheels.
# Phases (one device call each while the machine stays warm; logs + JSON go to $OUT):
#   check   versions, nvidia-smi, imports; builds the random-weight model folders
#   eval    eval generation throughput (1.5B shape) + eval memory (7B shape, 8-bit)
#   dpo     DPO step: TRL+PEFT QLoRA vs Unsloth, 1.5B and 7B shapes, same card, one invocation
#   compile Unsloth compile on vs UNSLOTH_COMPILE_DISABLE=1 at two run lengths (270M shape)
#   gputest pytest tests/test_gpu.py
#   decode  decoding speed + certificate, dynamic vs static cache, batch 1/64/256, real embedded 270M
#           in bf16, then 4-bit (needs .carry/m1..m4 + .carry/small staged and .whl/g1 installed);
#           then the static shapes again in a fresh process (what torch's on-disk compile cache saves)
#   decode7b  the same on a random-weight Qwen2.5-7B shape: 4-bit (today's path), bf16, and the
#           4-bit model with compilation forced (an experiment); needs only the wheels
#   dpo270m DPO step at the embedded model's shape (gemma270m, seq 128, batch 8, no checkpointing,
#           as gpu-small trains): Unsloth 4-bit vs TRL+PEFT on bnb 4-bit vs TRL+PEFT bf16 LoRA,
#           each with and without precomputed reference log-probs
#   compilecache  torch's compile cache across stage processes (issue 13): the pipeline's shape order
#           (batch 64, then 1) in a cold process (fresh caches), again in a new process (warm caches:
#           what a later stage pays), then with a LoRA adapter attached unmerged (what stage 03's
#           trained arm paid before eval_adapter merged it); random-weight gemma270m shape, no wheels
set -o pipefail
source scripts/device/env.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
M=/tmp/bench_models
for phase in "$@"; do
  echo "=== $phase $(date +%T)"
  case $phase in
    check)
      nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$OUT/env.txt"
      python3 -m pip list 2>/dev/null | grep -iE "^(torch|transformers|accelerate|peft|trl|datasets|bitsandbytes|unsloth|unsloth.zoo|triton|xformers|fsspec|huggingface.hub|pyarrow|torchao|papermill|nbconvert|ipykernel|numpy|tokenizers|safetensors) " | tee -a "$OUT/env.txt"
      python3 -m pip check 2>&1 | grep -iE "unsloth|trl|datasets|bitsandbytes|peft|transformers|torchao|papermill|nbconvert" | tee -a "$OUT/env.txt"
      python3 - <<'PY' 2>&1 | tee -a "$OUT/env.txt"
import importlib, traceback
for m in ["bitsandbytes", "trl", "datasets", "peft", "unsloth", "unsloth_zoo", "papermill", "nbconvert"]:
    try:
        mod = importlib.import_module(m); print("OK", m, getattr(mod, "__version__", "?"))
    except Exception as e:
        print("FAIL", m, repr(e)[:500]); traceback.print_exc(limit=3)
PY
      python3 -c "
import sys; sys.path.insert(0, 'benchmarks'); import gpu_shapes, time
for s in ['qwen1.5b', 'qwen7b', 'gemma270m']:
    t = time.time(); gpu_shapes.build_model_dir(s, '$M/' + s); print('built', s, round(time.time() - t, 1), 's')
" 2>&1 | tail -5
      ;;
    eval)
      python3 benchmarks/bench_eval_generation.py --json "$OUT/bench_eval_generation.json" ${MODEL_DIR:+--model-dir $MODEL_DIR} 2>&1 | grep -v Warning | tail -20 | tee "$OUT/eval_generation.log"
      python3 benchmarks/bench_eval_memory.py --json "$OUT/bench_eval_memory.json" 2>&1 | tail -40 | tee "$OUT/eval_memory.log"
      ;;
    dpo)
      python3 benchmarks/bench_dpo_gpu.py --suite --shapes ${SHAPES:-qwen1.5b,qwen7b} --backends trl,unsloth \
        --with-precompute --steps ${STEPS:-10} --warmup 3 --json "$OUT/bench_dpo_gpu.json" > "$OUT/dpo.log" 2>&1
      tail -12 "$OUT/dpo.log"
      ;;
    compile)
      : > "$OUT/compile.log"
      for steps in ${COMPILE_STEPS:-8 48}; do
        for dis in 0 1; do
          rm -rf unsloth_compiled_cache
          if [ $dis = 1 ]; then export UNSLOTH_COMPILE_DISABLE=1; else unset UNSLOTH_COMPILE_DISABLE; fi
          t0=$(date +%s.%N)
          python3 benchmarks/bench_dpo_gpu.py --backend unsloth --shape gemma270m --batch 8 --steps $steps --warmup 0 \
            --models $M --json "$OUT/compile_${steps}_${dis}.json" >> "$OUT/compile.log" 2>&1
          echo "steps=$steps compile_disable=$dis process_wall_s=$(python3 -c "import time; print(round(time.time() - $t0, 1))")" | tee -a "$OUT/compile_summary.txt"
        done
      done
      unset UNSLOTH_COMPILE_DISABLE
      python3 - "$OUT" <<'PY'
import json, glob, sys
rows = []
for f in sorted(glob.glob(sys.argv[1] + "/compile_*_*.json")):
    r = json.load(open(f)); rows.append(r)
    if "error" in r: print(f, "ERROR", r["error"][:200]); continue
    print(f.split("/")[-1], "train_s=%.1f init_s=%.1f load_s=%.1f step_med=%.3f loss0=%.4f lossN=%.4f" % (
        r["train_s"], r["trainer_init_s"], r["load_s"], r["step_s_median"], r["losses"][0], r["losses"][-1]))
json.dump(rows, open(sys.argv[1] + "/bench_unsloth_compile.json", "w"), indent=1)
PY
      rm -f "$OUT"/compile_*_*.json
      ;;
    decode)
      bash scripts/device/rebuild.sh || exit 2
      python3 benchmarks/bench_decoding.py --json "$OUT/bench_decoding_bf16.json" --quantizations none \
        --batch-sizes ${DECODE_BATCHES:-1,64,256} --cert-caches static --cert-sample ${CERT_SAMPLE:-64} 2>&1 \
        | grep -v -i warn | tee "$OUT/decoding.log"
      [ "${DECODE_4BIT:-1}" = 1 ] && python3 benchmarks/bench_decoding.py --json "$OUT/bench_decoding_4bit.json" \
        --quantizations 4bit --caches dynamic --batch-sizes 1,64,256 --n1 4 --cert-sample 0 2>&1 | grep -v -i warn | tee -a "$OUT/decoding.log"
      # a fresh process: the same static shapes, now with torch's compile cache warm (what a later
      # stage of the same run pays: every stage is its own notebook kernel)
      python3 benchmarks/bench_decoding.py --json "$OUT/bench_decoding_bf16_warm.json" --quantizations none \
        --caches static --batch-sizes ${WARM_BATCHES:-1,64} --n 128 --n1 8 --cert-sample 0 2>&1 \
        | grep -v -i warn | tee -a "$OUT/decoding.log"
      ;;
    decode7b)
      # random-weight Qwen2.5-7B shape (issue 13 item 5): 4-bit dynamic = today's path
      # (one invocation per weight setting: each writes its JSON as it goes)
      for spec in ${SPECS_7B:-4bit:dynamic:1,64 none:dynamic,static:64 4bit-compiled:static:64}; do
        IFS=: read -r q caches sizes <<< "$spec"
        timeout ${T7B:-300} python3 benchmarks/bench_decoding.py --json "$OUT/bench_decoding_7b_$q.json" --shape qwen7b \
          --models $M --quantizations $q --caches $caches --batch-sizes $sizes --n 128 --n1 4 --cert-sample 0 2>&1 \
          | grep -v -i warn | tee -a "$OUT/decoding_7b.log"
      done
      ;;
    dpo270m)
      # as run_gpu_small.sh trains: Unsloth's compilation does not pay below ~450 steps of this shape
      export UNSLOTH_COMPILE_DISABLE=${UNSLOTH_COMPILE_DISABLE:-1}
      python3 benchmarks/bench_dpo_gpu.py --suite --shapes gemma270m \
        --backends ${DPO_BACKENDS:-unsloth,unsloth+pre,trl,trl+pre,trl-bf16,trl-bf16+pre} --seq 128 --batch 8 \
        --grad-ckpt 0 --steps ${STEPS:-20} --warmup 3 --json "$OUT/bench_dpo_270m.json" > "$OUT/dpo270m.log" 2>&1
      tail -12 "$OUT/dpo270m.log"
      ;;
    compilecache)
      # PRECOMPILE=1: torch's precompile cache as well (TORCH_CACHING_PRECOMPILE: dynamo's traced
      # bytecode and guards saved too, so a warm process skips tracing); its own cache folders
      tag=${PRECOMPILE:+_precompile}
      [ -n "${PRECOMPILE:-}" ] && export TORCH_CACHING_PRECOMPILE=1
      export TORCHINDUCTOR_CACHE_DIR=/tmp/compilecache$tag/inductor TRITON_CACHE_DIR=/tmp/compilecache$tag/triton
      rm -rf /tmp/compilecache$tag
      for run in ${RUNS:-A_cold B_warm L_lora}; do
        extra=""; [ "$run" = L_lora ] && extra="--lora 16"
        t0=$(date +%s.%N)
        timeout ${TBK:-240} python3 benchmarks/bench_decoding.py --json "$OUT/compilecache${tag}_$run.json" --shape gemma270m \
          --models $M --quantizations none --caches static --batch-sizes 64,1 --n 128 --n1 8 --cert-sample 0 \
          $extra 2>&1 | grep -v -i warn | tail -4 | tee -a "$OUT/compilecache$tag.log"
        echo "$run$tag process_wall_s=$(python3 -c "import time; print(round(time.time() - $t0, 1))")" | tee -a "$OUT/compilecache$tag.log"
      done
      ;;
    gputest)
      # every CUDA-marked test: tests/test_gpu.py and the three training backends of tests/test_train.py
      timeout ${GPUTEST_TIMEOUT:-300} python3 -m pytest -q -rs tests/test_gpu.py "tests/test_train.py::test_gpu_backends_train_and_record" -p no:cacheprovider 2>&1 | tail -40 | tee "$OUT/test_gpu.log"
      ;;
  esac
done
echo "=== done $(date +%T)"
