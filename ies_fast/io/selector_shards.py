"""Selector checkpoints that reshard: saved on ``K`` ranks, loaded on ``K'``.

Layout of a checkpoint folder::

    selector.json                       manifest: {"format", "kind", "num_samples",
                                        "epoch", "world", "shards"}
    <shards>/shard-00000-of-00002.ckpt  one verified checkpoint per shard
    <shards>/shard-00001-of-00002.ckpt  (ies_fast.io.checkpoint: JSON header, SHA-256,
                                        torch.load(weights_only=True))

A sharded selector (:class:`ies_fast.selectors.sharded.ShardedIES`) writes one shard
per rank (its rows ``rank::world``); any other selector is the same on every rank, and
rank 0 writes its whole state as the one shard. Shards go to a fresh folder and the
manifest is replaced last, atomically: a save killed part way leaves the previous
checkpoint whole and in force.

Loading reads every shard, joins them into the whole (replicated-layout) state and
checks all of it (:func:`join_shards`, then the selector's own checks) before anything
is applied; every rank then agrees (one all-reduce) that every rank could, so a bad
shard is refused everywhere and no rank changes. The joined state is ``N`` rows while
it is checked: loading needs the memory of one replicated state for a moment.

``storage="dcp"`` writes the same shards through ``torch.distributed.checkpoint``
with its safetensors storage instead (:mod:`ies_fast.io.selector_dcp`): one
``.safetensors`` file per shard, the plain values and each file's SHA-256 in the
manifest (``"format": "ies_fast.selector_shards_dcp/1"``). DCP's default storage is
not used: its ``FileSystemReader.read_metadata`` unpickles the ``.metadata`` file
(``pickle.load``, torch 2.13), and this project never unpickles a file. Loading
reads either storage; the joining, checking and agreeing are the same.
"""
from __future__ import annotations

import os
import re
import secrets
import shutil

import torch
import torch.distributed as dist

from . import run_folder, selector_dcp
from .checkpoint import load_checkpoint, save_checkpoint

FORMAT = "ies_fast.selector_shards/1"
DCP_FORMAT = "ies_fast.selector_shards_dcp/1"
STORAGES = ("files", "dcp")
MANIFEST = "selector.json"
#: per-sample tensors a shard holds only some rows of (``rank::world``)
ROW_KEYS = ("hist", "count", "mastered", "replay")
MAX_WORLD = 1 << 16
_SHARDS_DIR = re.compile(r"^shards-[0-9a-f]{16}$")


def shard_name(rank: int, world: int) -> str:
    return f"shard-{rank:05d}-of-{world:05d}.ckpt"


def _group() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def _shared_token(world: int) -> str:
    """16 hex digits chosen by rank 0 and known to every rank."""
    token = torch.tensor(list(secrets.token_bytes(8)), dtype=torch.uint8)
    if world > 1:
        dist.broadcast(token, src=0)
    return bytes(token.tolist()).hex()


def save_selector(selector, directory, *, storage: str = "files") -> str:
    """Write ``selector`` into the checkpoint folder ``directory`` (collective under a
    process group: every rank calls it). ``storage``: ``"files"`` (one verified
    checkpoint file per shard) or ``"dcp"`` (``torch.distributed.checkpoint`` with
    safetensors files; needs ``safetensors``). Returns the manifest's path."""
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
    directory = os.fspath(directory)
    rank, world = _group()
    sharded = getattr(selector, "_shards_state", False)
    shards = f"shards-{_shared_token(world)}"
    target = os.path.join(directory, shards)
    if rank == 0:
        if os.path.lexists(directory):
            run_folder.check_folder(directory)  # a planted link is refused, never written through
        os.makedirs(target)
    _barrier(world)
    state = selector.state_dict()
    count = world if sharded else 1
    writes = sharded or rank == 0
    if writes and not sharded:
        state["shard"] = {"rank": 0, "world": 1}
    manifest = {"format": FORMAT, "kind": state["kind"], "num_samples": selector.num_samples,
                "epoch": int(getattr(selector, "epoch", 0)), "world": count, "shards": shards}
    if storage == "dcp":
        plain = selector_dcp.split_plain(state)[1]  # on every rank, before the collective save
        selector_dcp.write_shards(state if writes else None, target, rank, world > 1)
        if rank == 0:
            manifest.update(format=DCP_FORMAT, plain=plain, files=selector_dcp.file_digests(target))
    elif writes:
        save_checkpoint(state, os.path.join(target, shard_name(state["shard"]["rank"], count)))
    _barrier(world)
    path = os.path.join(directory, MANIFEST)
    if rank == 0:
        previous = _manifest_shards(path)
        run_folder.write_json(path, manifest)
        if previous and previous != shards:  # the old set, no longer named by the manifest
            shutil.rmtree(os.path.join(directory, previous), ignore_errors=True)
    _barrier(world)
    return path


def _manifest_shards(manifest: str):
    try:
        return read_manifest(manifest)["shards"]
    except (FileNotFoundError, ValueError, run_folder.RunFolderError):
        return None


def read_manifest(path) -> dict:
    """The checked manifest at ``path`` (``ValueError`` naming the field)."""
    m = run_folder.read_json(path)
    where = os.fspath(path)
    if not isinstance(m, dict) or m.get("format") not in (FORMAT, DCP_FORMAT):
        raise ValueError(f"{where} is not a {FORMAT} or {DCP_FORMAT} manifest")
    for key in ("num_samples", "epoch", "world"):
        if type(m.get(key)) is not int or m[key] < 0:
            raise ValueError(f"{where}[{key!r}] must be a non-negative int, got {m.get(key)!r}")
    if not 1 <= m["world"] <= MAX_WORLD:
        raise ValueError(f"{where}['world'] must lie in [1, {MAX_WORLD}], got {m['world']}")
    if not isinstance(m.get("shards"), str) or not _SHARDS_DIR.match(m["shards"]):
        raise ValueError(f"{where}['shards'] must name a shards-<16 hex digits> folder, got {m.get('shards')!r}")
    if not isinstance(m.get("kind"), str):
        raise ValueError(f"{where}['kind'] must be a string")
    if m["format"] == DCP_FORMAT:
        selector_dcp.check_manifest_fields(m, where)
    return m


def join_shards(shards: list, num_samples: int, where: str = "selector shards") -> dict:
    """The whole (replicated-layout) state from the ``K`` shards of one save, in rank
    order. Checks what relates them (each shard names its rank and ``K``, the rows it
    holds, the same values elsewhere); the selector checks the rest."""
    K = len(shards)
    first = shards[0]
    for r, s in enumerate(shards):
        at = f"{where}[{r}]"
        if not isinstance(s, dict):
            raise ValueError(f"{at} must be a dict, got {type(s).__name__}")
        if s.get("shard") != {"rank": r, "world": K}:
            raise ValueError(f"{at}['shard'] is {s.get('shard')!r}, expected {{'rank': {r}, 'world': {K}}}")
        if set(s) != set(first):
            raise ValueError(f"{at} has the keys {sorted(s)}, shard 0 has {sorted(first)}")
        for key, value in s.items():
            if key in ROW_KEYS or key == "shard":
                continue
            same = (torch.equal(value, first[key]) if isinstance(value, torch.Tensor)
                    and isinstance(first[key], torch.Tensor) and value.dtype == first[key].dtype
                    else _plain_equal(value, first[key]))
            if not same:
                raise ValueError(f"{at}[{key!r}] differs from shard 0's")
    whole = {k: v for k, v in first.items() if k not in ROW_KEYS and k != "shard"}
    rows = [len(range(r, num_samples, K)) for r in range(K)]
    for key in ROW_KEYS:
        if key not in first:
            continue
        parts = [s[key] for s in shards]
        for r, t in enumerate(parts):
            if not isinstance(t, torch.Tensor) or t.dtype != parts[0].dtype or t.shape[1:] != parts[0].shape[1:]:
                raise ValueError(f"{where}[{r}][{key!r}] must be a tensor like shard 0's")
        if key == "replay" and all(t.numel() == 0 for t in parts):  # no collapse guard: no replay mask
            whole[key] = parts[0]
            continue
        bad = [r for r, t in enumerate(parts) if t.dim() == 0 or t.shape[0] != rows[r]]
        if bad:
            raise ValueError(f"{where}[{bad[0]}][{key!r}] has {tuple(parts[bad[0]].shape)}: shard {bad[0]} of "
                             f"{K} holds {rows[bad[0]]} rows of {num_samples} samples")
        joined = parts[0].new_empty((num_samples, *parts[0].shape[1:]))
        for r, t in enumerate(parts):
            joined[r::K] = t
        whole[key] = joined
    return whole


def _plain_equal(a, b) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_plain_equal(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    return type(a) is type(b) and a == b


def load_selector(selector, directory) -> None:
    """Load the checkpoint folder ``directory`` (saved on any number of ranks) into
    ``selector`` (collective under a process group). Everything is read and checked
    first; if any rank finds anything wrong, every rank raises (``ValueError``, or
    :class:`ies_fast.io.checkpoint.CheckpointError` for a damaged file) and no rank
    changes its selector."""
    directory = os.fspath(directory)
    _, world = _group()
    checked, error = None, None
    try:
        m = read_manifest(os.path.join(directory, MANIFEST))
        if m["num_samples"] != selector.num_samples:
            raise ValueError(f"{directory}: saved with num_samples={m['num_samples']}, "
                             f"this selector has {selector.num_samples}")
        folder = os.path.join(directory, m["shards"])
        if m["format"] == DCP_FORMAT:
            shards = selector_dcp.read_shards(folder, m)
        else:
            shards = [load_checkpoint(os.path.join(folder, shard_name(r, m["world"]))) for r in range(m["world"])]
        state = join_shards(shards, selector.num_samples, where=folder)
        del shards
        checked = selector.check_state(state)  # the whole state, nothing applied
    except Exception as exc:  # noqa: BLE001 - re-raised below, after the ranks agree
        error = exc
    if world > 1:
        failed = torch.tensor([0 if error is None else 1], dtype=torch.int64)
        dist.all_reduce(failed, op=dist.ReduceOp.SUM)
        if error is None and int(failed) > 0:
            error = ValueError(f"{directory}: {int(failed)} rank(s) could not load the selector checkpoint; "
                               "nothing was applied on any rank")
    if error is not None:
        raise error
    selector.apply_state(checked)
