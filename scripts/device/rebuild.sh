#!/usr/bin/env bash
# Run THERE (device machine), from the repo root, once setup.sh has staged .carry/m1..m4 and
# .carry/small: rebuilds the embedded model's converted folder from the carried GGUF (every
# tensor hash-checked against the conversion made here) unless it is already there.
# Used by run_gpu_small.sh and `bench.sh decode`.
set -o pipefail
source scripts/device/env.sh
FOLDER=${CAI_MODEL_CACHE:-$CAI_BASE_DIR/models}/gemma-3-270m-pt  # embedded.model_cache_dir()'s rule
if [ ! -f "$FOLDER/cai_conversion.json" ]; then
  read -r SHA NAME < /tmp/model-small/gguf.sha256
  mkdir -p /tmp/gguf && cat /tmp/model-parts/*.gguf.part* > "/tmp/gguf/$NAME"
  echo "$SHA  /tmp/gguf/$NAME" | sha256sum -c - || exit 2
  python3 scripts/device/rebuild_embedded.py "/tmp/gguf/$NAME" /tmp/model-small "$FOLDER" || exit 2
fi
# Must return the folder without converting (a conversion here would use the broken 5.17 tokenizer path).
python3 -c "from cai_lib.embedded import embedded_model_dir; print('embedded model:', embedded_model_dir())" || exit 2
