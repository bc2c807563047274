"""Several processes, one result: rank/world helpers, deterministic sharding, shard merge.

Processes are started by `accelerate launch` (or `torchrun`), which sets RANK, WORLD_SIZE
and LOCAL_RANK; without them this is one process of a world of one and every helper
degrades to the single-process behaviour. `init_distributed` creates accelerate's
`PartialState` (the same object the HF Trainer uses), so generation and training share one
process group: NCCL on GPUs, gloo on a CPU-only host (which the tests use).

Sharded generation must give the merged output a single process would give. Greedy
decoding is deterministic for a fixed batch, but a batch's composition changes the
numerics (left padding, kernel shapes), so sharding by item alone would not do. The plan
here reproduces the single-process batches exactly: `generate()` sorts prompts
longest-first and cuts that order into batches of `batch_size`; `shard_indices` makes the
same cut and deals whole batches round-robin to the ranks. Each rank's sublist, in that
order, is cut by `generate()` into precisely those batches again (a sorted sublist stays
sorted, and the one short batch is the globally last one, so it is last on its rank too).
Same model, same device type and same batches give the same tokens. What can still break
equality: a CUDA out-of-memory back-off on one rank (it halves that rank's batch size, and
says so), and mixing device types or thread counts between the runs being compared.

Each rank writes its shard with `write_jsonl` (atomic) and then a small `.meta.json`
marking it complete; `merge_shards` refuses an incomplete set (missing rank, missing or
duplicate id, shards from different inputs) with a CaiError and returns records in the
original input order.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import CaiError
from .jsonl import read_json, read_jsonl, write_json, write_jsonl


# ---------------------------------------------------------------------------------------
# rank / world
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(names: Sequence[str], default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                raise CaiError(f"environment variable {name}={value!r} is not an integer — unset it or fix the launcher") from None
    return default


def dist_info() -> DistInfo:
    """This process's place, from torch.distributed when initialised, else the launcher's env."""
    try:
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():
            return DistInfo(dist.get_rank(), dist.get_world_size(), _env_int(["LOCAL_RANK"], 0))
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    world = _env_int(["WORLD_SIZE"], 1)
    rank = _env_int(["RANK"], 0)
    if not 0 <= rank < max(world, 1):
        raise CaiError(f"RANK={rank} is outside WORLD_SIZE={world} — launch with accelerate launch or torchrun")
    return DistInfo(rank, max(world, 1), _env_int(["LOCAL_RANK"], 0))


def is_main_process() -> bool:
    return dist_info().is_main


def init_distributed() -> DistInfo:
    """Join the launcher's process group (no-op for a single process) and return our place.

    On a host without CUDA, accelerate treats a launched process as non-distributed unless
    told it runs on CPU; ACCELERATE_USE_CPU makes the Trainer's own PartialState agree
    (it is a shared singleton, so whoever creates it first decides)."""
    info = dist_info()
    if info.world <= 1:
        return info
    import torch
    from accelerate import PartialState

    cpu = not torch.cuda.is_available()
    if cpu:
        os.environ["ACCELERATE_USE_CPU"] = "true"
    state = PartialState(cpu=cpu)
    if state.num_processes != info.world:
        raise CaiError(
            f"the launcher set WORLD_SIZE={info.world} but accelerate joined {state.num_processes} process(es) — "
            "launch with `accelerate launch` or `torchrun` and do not mix their settings")
    return dist_info()


def barrier() -> None:
    """Wait for every process (no-op for a single process)."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_gather_object(obj: Any) -> list:
    """Every rank's `obj`, in rank order ([obj] for a single process)."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


# ---------------------------------------------------------------------------------------
# sharding
# ---------------------------------------------------------------------------------------

def _check_rank(rank: int, world: int) -> None:
    if world < 1 or not 0 <= rank < world:
        raise CaiError(f"rank {rank} / world {world}: need world >= 1 and 0 <= rank < world")


def shard_indices(n: int, rank: int, world: int, *, lengths: Sequence[int] | None = None,
                  batch_size: int = 1) -> list[int]:
    """Indices (into a list of `n` items) that process `rank` of `world` handles.

    The items are put in order — by (-length, index) when `lengths` (token counts of the
    prompts) are given, as `generate()` orders them; else as given — cut into batches of
    `batch_size`, and batch b goes to rank b % world (with batch_size 1 and no lengths:
    item i to rank i % world). Every index lands on exactly one rank; the result depends
    only on the arguments."""
    _check_rank(rank, world)
    if batch_size < 1:
        raise CaiError(f"batch_size must be >= 1, got {batch_size}")
    if lengths is None:
        order = list(range(n))
    elif len(lengths) != n:
        raise CaiError(f"shard_indices: {len(lengths)} lengths for {n} items")
    else:
        order = sorted(range(n), key=lambda i: (-int(lengths[i]), i))
    batches = [order[j:j + batch_size] for j in range(0, n, batch_size)]
    return [i for b, batch in enumerate(batches) if b % world == rank for i in batch]


def shard_items(items: Sequence, rank: int, world: int, *, lengths: Sequence[int] | None = None,
                batch_size: int = 1) -> list:
    """The items process `rank` handles (see `shard_indices`)."""
    return [items[i] for i in shard_indices(len(items), rank, world, lengths=lengths, batch_size=batch_size)]


def shard_path(shard_dir, rank: int, world: int) -> Path:
    return Path(shard_dir) / f"shard-{rank:05d}-of-{world:05d}.jsonl"


def _meta_path(path: Path) -> Path:
    return path.with_name(path.name[: -len(".jsonl")] + ".meta.json")


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------
# sharded generation
# ---------------------------------------------------------------------------------------

def generate_sharded(model, tokenizer, items: Sequence[dict], *, shard_dir, max_new_tokens: int,
                     batch_size: int = 8, stop: list[str] | None = None, rank: int | None = None,
                     world: int | None = None, prompt_key: str = "prompt", id_key: str = "id",
                     progress: bool = True, desc: str = "generate", generate_fn: Callable | None = None,
                     settings: dict | None = None, batch_order: str = "longest_first") -> Path:
    """Generate this rank's shard of `items` and write it; returns the shard file.

    `batch_order`: "longest_first" reproduces the batches one `generate()` call over all
    items would form; "as_given" reproduces callers that already cut their own batches of
    `batch_size` from `items` in the given order (stage 01 calls generate once per such
    chunk): each of this rank's batches is then decoded by its own `generate()` call.

    Each row is the item plus generate()'s fields (response, finish_reason, prompt_tokens,
    new_tokens, seconds). A complete shard already on disk for the same inputs and
    settings is kept (a rerun after an interruption redoes only missing shards).
    `settings` is any extra identity the caller wants checked (e.g. model and adapter).
    """
    from . import guard

    if generate_fn is None:
        from .generate import generate as generate_fn
    info = dist_info()
    rank = info.rank if rank is None else rank
    world = info.world if world is None else world
    _check_rank(rank, world)
    items = list(items)
    ids = [it.get(id_key) for it in items]
    for n, it in enumerate(items):
        if id_key not in it or prompt_key not in it:
            raise CaiError(f"item {n}: needs fields {id_key!r} and {prompt_key!r} for sharded generation")
    if len(set(map(str, ids))) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise CaiError(f"duplicate item id {dup!r}: sharded generation merges by id — make ids unique")
    prompts = [it[prompt_key] for it in items]
    if batch_order not in ("longest_first", "as_given"):
        raise CaiError(f"batch_order={batch_order!r} is not one of ['longest_first', 'as_given']")
    lengths = [len(x) for x in guard.encode_prompts(tokenizer, prompts)] if batch_order == "longest_first" else None
    mine = shard_indices(len(items), rank, world, lengths=lengths, batch_size=batch_size)
    path = shard_path(shard_dir, rank, world)
    meta = {
        "rank": rank, "world": world, "n_total": len(items),
        "inputs_sha256": _sha([[str(i), p] for i, p in zip(ids, prompts)]),
        "settings_sha256": _sha({"max_new_tokens": max_new_tokens, "batch_size": batch_size, "stop": stop,
                                 "batch_order": batch_order, "extra": settings or {}}),
        "positions": mine, "ids": [ids[i] for i in mine], "id_key": id_key,
    }
    mp = _meta_path(path)
    if mp.exists() and path.exists():
        try:
            old = read_json(mp)
            rows = read_jsonl(path)
        except CaiError:
            old, rows = None, []
        same = old is not None and all(old.get(k) == meta[k] for k in ("world", "n_total", "inputs_sha256", "settings_sha256", "positions"))
        if same and [r.get(id_key) for r in rows] == meta["ids"]:
            return path
    mp.unlink(missing_ok=True)  # the shard is complete only once its meta is (re)written
    groups = [mine] if batch_order == "longest_first" else [mine[j:j + batch_size] for j in range(0, len(mine), batch_size)]
    outs = []
    for group in groups:
        if group:
            outs += generate_fn(model, tokenizer, [prompts[i] for i in group], max_new_tokens=max_new_tokens,
                                batch_size=batch_size, stop=stop, progress=progress and info.is_main,
                                desc=f"{desc} [rank {rank}/{world}]")
    if len(outs) != len(mine):
        raise CaiError(f"generate returned {len(outs)} records for {len(mine)} prompts on rank {rank}")
    write_jsonl(path, [{**items[i], **out} for i, out in zip(mine, outs)])
    write_json(mp, meta)
    return path


def merge_shards(paths: Sequence, out=None, *, id_key: str | None = None) -> list[dict]:
    """All shards' rows in the original input order; writes `out` atomically when given.

    Refuses (CaiError) a set that is not exactly one complete shard per rank of one world,
    made from the same inputs and settings, with every id exactly once."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise CaiError("merge_shards: no shard files given — run the sharded generation first")
    metas, rows_by = [], []
    for p in paths:
        mp = _meta_path(p)
        if not p.exists() or not mp.exists():
            raise CaiError(f"{p}: shard missing or incomplete (no {mp.name}) — rerun that rank's generation")
        meta = read_json(mp)
        metas.append(meta)
        rows_by.append(read_jsonl(p))
    world = metas[0]["world"]
    for key in ("world", "n_total", "inputs_sha256", "settings_sha256"):
        vals = {json.dumps(m.get(key)) for m in metas}
        if len(vals) > 1:
            raise CaiError(f"shards disagree on {key} ({', '.join(str(p) for p in paths)}) — they come from different runs; delete the shard folder and regenerate")
    ranks = sorted(m["rank"] for m in metas)
    if ranks != list(range(world)):
        missing = sorted(set(range(world)) - set(ranks))
        dup = sorted({r for r in ranks if ranks.count(r) > 1})
        what = f"rank(s) {dup} given twice" if dup else f"missing rank(s) {missing}"
        raise CaiError(f"shard set for world {world}: {what} — pass one shard per rank")
    key = id_key or metas[0].get("id_key", "id")
    n_total = metas[0]["n_total"]
    merged: list[dict | None] = [None] * n_total
    seen: dict[str, Path] = {}
    for p, meta, rows in zip(paths, metas, rows_by):
        if len(rows) != len(meta["positions"]):
            raise CaiError(f"{p}: {len(rows)} rows but its meta lists {len(meta['positions'])} — regenerate this shard")
        for pos, want, row in zip(meta["positions"], meta["ids"], rows):
            rid = row.get(key)
            if rid != want:
                raise CaiError(f"{p}: row id {rid!r} where {want!r} was planned — regenerate this shard")
            if str(rid) in seen:
                raise CaiError(f"duplicate id {rid!r} in {seen[str(rid)]} and {p} — regenerate the shards")
            seen[str(rid)] = p
            if not 0 <= pos < n_total or merged[pos] is not None:
                raise CaiError(f"{p}: position {pos} of id {rid!r} is invalid or taken twice — regenerate the shards")
            merged[pos] = row
    missing = [i for i, r in enumerate(merged) if r is None]
    if missing:
        raise CaiError(f"merged shards lack {len(missing)} of {n_total} items (first position {missing[0]}) — a shard is incomplete; regenerate it")
    if out is not None:
        write_jsonl(out, merged)  # type: ignore[arg-type]
    return merged  # type: ignore[return-value]


def run_sharded(model, tokenizer, items: Sequence[dict], *, shard_dir, out=None, **kw) -> list[dict]:
    """Generate this rank's shard, wait for all ranks, and return the merged records on
    every rank (the main process also writes `out` when given)."""
    info = dist_info()
    world = kw.pop("world", None) or info.world
    rank = kw.pop("rank", None)
    rank = info.rank if rank is None else rank
    generate_sharded(model, tokenizer, items, shard_dir=shard_dir, rank=rank, world=world, **kw)
    barrier()
    paths = [shard_path(shard_dir, r, world) for r in range(world)]
    merged = merge_shards(paths, out if rank == 0 else None, id_key=kw.get("id_key"))
    barrier()  # `out` is written before any rank moves on to read it
    return merged


class ShardedGenerate:
    """A drop-in for `generate.generate` that splits each call across the launched processes.

    Every rank must make the same sequence of calls with the same prompts (as the stage
    code does); call k writes its shards under `shard_dir/<k>-<desc>/`. Returns
    generate()'s records in input order, identical on every rank. `batch_order` as in
    `generate_sharded`; a caller that cuts its own batches should hand over
    `world × batch_size` prompts per call (see `world`) so every process gets a batch.
    """

    def __init__(self, shard_dir, *, rank: int | None = None, world: int | None = None,
                 generate_fn: Callable | None = None, batch_order: str = "longest_first"):
        self.shard_dir = Path(shard_dir)
        info = dist_info()
        self.rank = info.rank if rank is None else rank
        self.world = info.world if world is None else world
        self.generate_fn = generate_fn
        self.batch_order = batch_order
        self.calls = 0

    def __call__(self, model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, batch_size: int = 8,
                 stop: list[str] | None = None, progress: bool = True, desc: str = "generate") -> list[dict]:
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", desc)[:40]
        call_dir = self.shard_dir / f"{self.calls:04d}-{slug}"
        self.calls += 1
        items = [{"_i": i, "_prompt": p} for i, p in enumerate(prompts)]
        merged = run_sharded(model, tokenizer, items, shard_dir=call_dir, rank=self.rank, world=self.world,
                             max_new_tokens=max_new_tokens, batch_size=batch_size, stop=stop,
                             prompt_key="_prompt", id_key="_i", progress=progress, desc=desc,
                             generate_fn=self.generate_fn, batch_order=self.batch_order)
        return [{k: v for k, v in r.items() if k not in ("_i", "_prompt")} for r in merged]
