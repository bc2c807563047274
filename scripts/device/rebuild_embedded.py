"""Rebuild the embedded model's converted folder on the device machine, bit for bit.

Why not carry the converted folder: it is float32 (1.07 GB, 18 calls of 60 MiB), while the
GGUF it comes from is 246 MB (4 calls). Why not let the device convert it with cai_lib.embedded:
its transformers 5.17 converts the GGUF *tokenizer* wrongly. So: the tokenizer, config and the
conversion marker travel from the machine that converted (small files), the weights are
dequantized here from the GGUF by transformers' GGUF loader, and every tensor must equal the
original conversion's (sha256 per tensor, in tensors.sha256.json) or nothing is written.

    python3 scripts/device/rebuild_embedded.py GGUF_FILE SMALL_DIR OUT_DIR
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from pathlib import Path


def tensor_sha256(t) -> str:
    import torch

    return hashlib.sha256(t.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def tensor_manifest(state_dict) -> dict:
    return {k: {"sha256": tensor_sha256(v), "shape": list(v.shape), "dtype": str(v.dtype)}
            for k, v in sorted(state_dict.items())}


def main(gguf: str, small: str, out: str) -> int:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    gguf, small, out = Path(gguf), Path(small), Path(out)
    want = json.loads((small / "tensors.sha256.json").read_text())
    t0 = time.time()
    gmodel = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    sd = {k: v for k, v in gmodel.state_dict().items() if k in want}
    missing = sorted(set(want) - set(sd))
    got = tensor_manifest(sd)
    bad = [k for k in want if k in got and got[k]["sha256"] != want[k]["sha256"]]
    if missing or bad:
        print(f"REFUSED: {len(missing)} tensors missing ({missing[:3]}), {len(bad)} differ ({bad[:3]}) "
              "from the original conversion; nothing written", file=sys.stderr)
        return 1
    cfg = AutoConfig.from_pretrained(str(small))
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.load_state_dict(sd, strict=False)
    # strict=False only for tied weights (lm_head shares the embedding); every stored tensor was checked above
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    for f in small.iterdir():
        if f.name != "tensors.sha256.json" and not f.name.endswith(".safetensors"):
            shutil.copy2(f, tmp / f.name)
    if (small / "tokenizer.json.gz").exists():
        import gzip
        (tmp / "tokenizer.json").write_bytes(gzip.decompress((small / "tokenizer.json.gz").read_bytes()))
        (tmp / "tokenizer.json.gz").unlink()
    marker = tmp / "cai_conversion.json"
    m = json.loads(marker.read_text())
    import transformers
    m["rebuilt"] = {"from": gguf.name, "transformers_version": transformers.__version__,
                    "tensors_checked": len(want), "seconds": round(time.time() - t0, 1)}
    marker.write_text(json.dumps(m, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(f"rebuilt {out} ({len(want)} tensors identical to the original conversion) in {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--manifest":
        # Here, on the converting machine: python rebuild_embedded.py --manifest CONVERTED_DIR
        from safetensors.torch import load_file

        d = Path(sys.argv[2])
        sd = {}
        for f in sorted(d.glob("*.safetensors")):
            sd.update(load_file(str(f)))
        print(json.dumps(tensor_manifest(sd), indent=0))
        sys.exit(0)
    sys.exit(main(*sys.argv[1:4]))
