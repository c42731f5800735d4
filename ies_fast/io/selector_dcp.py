"""The shard set of a selector checkpoint through ``torch.distributed.checkpoint``.

:func:`ies_fast.io.selector_shards.save_selector` with ``storage="dcp"`` writes the
shards' tensors with ``dcp.save`` and DCP's safetensors storage
(``HuggingFaceStorageWriter(save_distributed=True)``: one ``.safetensors`` file per
rank that holds a shard) instead of one verified file per shard. Every tensor of
shard ``r`` is stored under ``"<key>.<r:05d>"``; the shards' plain values (the
configuration, counters: JSON data) and each file's SHA-256 go into the JSON
manifest, which rank 0 writes after every rank's file is in place.

Why safetensors: DCP's default ``FileSystemReader`` unpickles its ``.metadata`` file
(``pickle.load``, torch 2.13), so loading such a folder could execute code.
DCP's safetensors reader takes its metadata from the files' JSON headers, and the
safetensors format holds raw tensor bytes only: nothing is unpickled or executed.

Reading (:func:`read_shards`) checks the folder first: exactly the files the
manifest names, each a regular file (no links) with the manifest's SHA-256; then
``dcp.load`` reads every tensor (each rank reads all of them, without collectives)
and the shards are rebuilt as the per-rank state dicts the ``"files"`` storage
holds, to be joined and checked whole by the caller.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import warnings

import torch

from . import run_folder

#: the files DCP's safetensors writer names (``shard-<rank+1>-model-00001-of-00001``)
_FILE_NAME = re.compile(r"^shard-[0-9]{5}-model-[0-9]{5}-of-[0-9]{5}\.safetensors$")
_TENSOR_NAME = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\.([0-9]{5})$")
_HASH_CHUNK = 1 << 24


def _dcp():
    try:
        import safetensors  # noqa: F401 - DCP's safetensors storage imports it lazily
    except ImportError:
        raise ImportError("storage='dcp' needs safetensors: pip install 'ies_fast[dcp]'") from None
    import torch.distributed.checkpoint as dcp
    return dcp


@contextlib.contextmanager
def _single_process_is_meant():
    """Silence DCP's "assuming the intent is to save/load in a single process": it is."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to", category=UserWarning)
        yield


def split_plain(state: dict, where: str = "state_dict") -> tuple[dict, dict]:
    """``(tensors, plain)`` of a shard's state; ``plain`` (without ``"shard"``) must
    survive a JSON round trip unchanged (``TypeError`` naming the key otherwise)."""
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    plain = {k: v for k, v in state.items() if k not in tensors and k != "shard"}
    for key, value in plain.items():
        if not _same_json(value, json.loads(json.dumps(value, allow_nan=False))):
            raise TypeError(f"{where}[{key!r}] is not JSON data ({type(value).__name__}): "
                            "save this selector with storage='files'")
    bad = [k for k in tensors if not _TENSOR_NAME.match(f"{k}.00000")]
    if bad:
        raise TypeError(f"{where}[{bad[0]!r}]: a tensor key must be a Python identifier for storage='dcp'")
    return tensors, plain


def _same_json(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same_json(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(_same_json, a, b))
    return type(a) is type(b) and a == b


def write_shards(state, folder: str, rank: int, process_group_ready: bool) -> None:
    """Collective under a process group: every rank calls it; ``state`` is this rank's
    shard (with ``state["shard"]["rank"]``) or ``None`` where the rank writes nothing."""
    dcp = _dcp()
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    tensors = {}
    if state is not None:
        r = state["shard"]["rank"]
        tensors = {f"{k}.{r:05d}": v.detach().cpu().contiguous()
                   for k, v in split_plain(state)[0].items()}
    with _single_process_is_meant():
        dcp.save(tensors, storage_writer=HuggingFaceStorageWriter(folder, save_distributed=True),
                 no_dist=not process_group_ready)


def file_digests(folder: str) -> dict:
    """``{file name: SHA-256}`` of the safetensors files in ``folder`` (what the manifest records)."""
    return {name: _sha256(os.path.join(folder, name)) for name in sorted(os.listdir(folder))
            if _FILE_NAME.match(name)}


def _sha256(path: str) -> str:
    fd, _ = run_folder.open_regular(path)
    h = hashlib.sha256()
    try:
        while chunk := os.read(fd, _HASH_CHUNK):
            h.update(chunk)
    finally:
        os.close(fd)
    return h.hexdigest()


def check_manifest_fields(m: dict, where: str) -> None:
    """The fields a ``"dcp"`` manifest adds: ``plain`` (an object) and ``files``
    (``{safetensors file name: 64 hex digits}``, at least one)."""
    if not isinstance(m.get("plain"), dict):
        raise ValueError(f"{where}['plain'] must be an object")
    files = m.get("files")
    if (not isinstance(files, dict) or not files
            or not all(isinstance(k, str) and _FILE_NAME.match(k) and isinstance(v, str)
                       and re.fullmatch(r"[0-9a-f]{64}", v) for k, v in files.items())):
        raise ValueError(f"{where}['files'] must map DCP safetensors file names to SHA-256 hex digests")


def read_shards(folder: str, manifest: dict) -> list:
    """The ``manifest["world"]`` shard states of the DCP shard set in ``folder``, in
    rank order, after checking its files against the manifest (``ValueError`` for a
    missing or extra file, :class:`ies_fast.io.checkpoint.CheckpointError` for a
    damaged one). The caller joins and checks them."""
    from .checkpoint import CheckpointError

    dcp = _dcp()
    from torch.distributed.checkpoint import HuggingFaceStorageReader

    run_folder.check_folder(folder)
    present, expected = set(os.listdir(folder)), set(manifest["files"])
    if present != expected:
        odd = sorted(present - expected) or sorted(expected - present)
        raise ValueError(f"{folder}: holds {sorted(present)}, its manifest names {sorted(expected)} ({odd[0]!r})")
    for name, digest in manifest["files"].items():
        if _sha256(os.path.join(folder, name)) != digest:
            raise CheckpointError(f"{os.path.join(folder, name)}: its SHA-256 differs from the manifest's "
                                  "(a damaged or changed file)")
    world = manifest["world"]
    for key in ("kind", "num_samples", "epoch"):
        if key in manifest["plain"] and manifest["plain"][key] != manifest[key]:
            raise ValueError(f"{folder}: the manifest's plain[{key!r}] is {manifest['plain'][key]!r}, "
                             f"its {key!r} is {manifest[key]!r}")
    metadata = HuggingFaceStorageReader(folder).read_metadata().state_dict_metadata
    shards = [dict(manifest["plain"], shard={"rank": r, "world": world}) for r in range(world)]
    template = {}
    for name, meta in metadata.items():
        match = _TENSOR_NAME.match(name)
        if match is None or int(match.group(2)) >= world:
            raise ValueError(f"{folder}: holds the tensor {name!r}, not '<key>.<rank>' of a {world}-rank save")
        template[name] = torch.empty(meta.size, dtype=meta.properties.dtype)
    with _single_process_is_meant():
        dcp.load(template, storage_reader=HuggingFaceStorageReader(folder), no_dist=True)
    for name, tensor in template.items():
        key, r = _TENSOR_NAME.match(name).groups()
        shards[int(r)][key] = tensor
    return shards
