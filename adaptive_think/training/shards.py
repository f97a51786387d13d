"""Append-only shards of probe training data, with an index, written atomically.

A collection folder holds `shard-r{rank}-{n:05d}.safetensors` (hidden states per candidate layer,
fp16) + `.json` (one record per row) and `index-r{rank}.json` (settings, shards, finished question
ids). A shard is renamed into place before the index names it, so a killed run leaves at worst an
unnamed shard that the resumed run overwrites; questions in it are redone, never duplicated.
While a rank writes, it holds `writer-r{rank}.lock` (see files.exclusive_lock); a second writer of the
same rank fails at once. Loading checks that no question sits in two ranks' indexes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from adaptive_think.config import decoding_of
from adaptive_think.files import atomic_write
from adaptive_think.training.budget import MemoryBudget
from adaptive_think.training.stored import THOUGHT_PREFIX, StoredStates

INDEX_VERSION = 1
# THOUGHT_PREFIX (stored.py): tensors of every thought token's state (`collect --token-states`), apart from the
# checkpoint rows `layer{l}`


def index_path(folder: Path, rank: int) -> Path:
    return folder / f"index-r{rank}.json"


def lock_path(folder: Path, rank: int) -> Path:
    """The file a writer of rank `rank` locks while it writes (see files.exclusive_lock)."""
    return folder / f"writer-r{rank}.lock"


def read_index(folder: Path, rank: int) -> dict | None:
    p = index_path(folder, rank)
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{p} is corrupt ({err}); delete the folder to start over.") from None


def write_index(folder: Path, rank: int, index: dict) -> None:
    text = json.dumps(index, indent=1) + "\n"
    atomic_write(index_path(folder, rank), lambda p: Path(p).write_text(text))


def write_shard(folder: Path, rank: int, number: int, hidden: dict[str, torch.Tensor], records: list[dict]) -> str:
    """Write one shard (tensors then records), each atomically; returns its base name."""
    name = f"shard-r{rank}-{number:05d}"
    tensors = {k: v.to(torch.float16).contiguous() for k, v in hidden.items()}
    atomic_write(folder / f"{name}.safetensors", lambda p: save_file(tensors, p))
    text = json.dumps(records) + "\n"
    atomic_write(folder / f"{name}.json", lambda p: Path(p).write_text(text))
    return name


def _read_indexes(folder: Path) -> list[tuple[Path, dict]]:
    """Every rank's index in `folder`, checked: same layers, no question held by two ranks."""
    indexes = sorted(folder.glob("index-r*.json"))
    if not indexes:
        raise FileNotFoundError(f"No collection index (index-r*.json) in {str(folder)!r}; run `adaptive-think collect` first.")
    out, owner = [], {}
    for ip in indexes:
        index = json.loads(ip.read_text())
        if out and index["settings"]["layers"] != out[0][1]["settings"]["layers"]:
            raise ValueError(f"{ip} was collected with other layers than the rest of {folder}.")
        twice = [q for q in index["done"] if q in owner]
        if twice:
            raise ValueError(f"{ip} and {owner[twice[0]]} both hold question {twice[0]!r} ({len(twice)} shared): "
                             "ranks of different runs (another number of processes?) are mixed in one folder.")
        owner.update((q, ip) for q in index["done"])
        out.append((ip, index))
    return out


def load_records(folder) -> list[dict]:
    """The records of every rank's shards (no hidden states), checked as `load_collection` checks them."""
    folder = Path(folder)
    return [r for _, index in _read_indexes(folder) for r in rank_records(folder, index)]


def _number_thought_rows(records: list[dict], rows: int, start: int, where) -> None:
    """Give each prompt record that counts `thought_states` its first row, `thought_start`, from `start` on."""
    at = start
    for r in records:
        if r.get("thought_states") is not None:
            r["thought_start"] = at
            at += r["thought_states"]
    if at - start != rows:
        raise ValueError(f"{where}: its records count {at - start} thought-token states but its tensors hold {rows}; "
                         "the collection is corrupt (delete the folder to start over).")


def open_collection(folder, budget: MemoryBudget | None = None) -> tuple[StoredStates, list[dict], dict]:
    """Every shard named by every rank's index: (StoredStates {"layer{l}": [N, D]}, records [N], settings).

    The hidden states stay on disk until read (stored.py). A collection made with token states also holds
    "thought_layer{l}" [M, D]: the `thought_states` rows of a question's thought tokens start at its prompt
    record's `thought_start`.
    """
    folder = Path(folder)
    budget = budget or MemoryBudget(None)
    files, records = [], []
    indexes = _read_indexes(folder)
    for _, index in indexes:
        for name in index["shards"]:
            files.append(folder / f"{name}.safetensors")
            records.append(json.loads((folder / f"{name}.json").read_text()))
    states = StoredStates.of_shards(files, budget)
    thought = next((k for k in states if k.startswith(THOUGHT_PREFIX)), None)
    done = 0
    for path, recs in zip(files, records):
        if thought is not None or any("thought_states" in r for r in recs):
            rows = dict(states[thought]._source.parts).get(path, 0) if thought else 0
            _number_thought_rows(recs, rows, done, path.with_suffix(""))
            done += rows
    records = [r for recs in records for r in recs]
    if not records:
        raise ValueError(f"The collection in {folder} holds no records yet.")
    return states, records, indexes[0][1]["settings"]


def load_collection(folder) -> tuple[dict[str, torch.Tensor], list[dict], dict]:
    """`open_collection` read into memory: ({"layer{l}": [N, D] fp32, "thought_layer{l}": [M, D] fp16}, records,
    settings)."""
    states, records, settings = open_collection(folder)
    return states.load_all(), records, settings


# settings that must agree for collections to train one probe: the same model, markers and hidden states
_SHARED_SETTINGS = ("layers", "fingerprint", "markers", "exit_text")


def open_collections(folders, budget: MemoryBudget | None = None) -> tuple[StoredStates, list[dict], dict]:
    """Several collections of one model as one: (StoredStates {"layer{l}": [N, D]}, records [N], settings).

    Every record gains `decoding` ("greedy" | "sampled", from its collection's settings) and `source` (the
    folder's position); settings are the first folder's, plus `collections` (one summary per folder).
    Collections must share layers, model, markers and exit text; a question id collected twice under
    the same decoding is refused (each draw of a question must be one question of the calibration).
    The hidden states stay on disk until read, within `budget` (stored.py).
    """
    folders = [Path(f) for f in ([folders] if isinstance(folders, (str, Path)) else folders)]
    if not folders:
        raise ValueError("No collection folders given.")
    budget = budget or MemoryBudget(None)
    parts: list[StoredStates] = []
    records: list[dict] = []
    first, summaries, seen = None, [], {}
    before = 0  # thought rows of earlier folders come first in the merged states
    for i, folder in enumerate(folders):
        h, recs, settings = open_collection(folder, budget)
        for r in recs:
            if "thought_start" in r:
                r["thought_start"] += before
        before += next((len(v) for k, v in h.items() if k.startswith(THOUGHT_PREFIX)), 0)
        settings = {"sampling": {}, **settings}  # collections made before sampling existed were greedy
        mode = decoding_of(settings["sampling"])
        if first is None:
            first = settings
        else:
            bad = [k for k in _SHARED_SETTINGS if settings.get(k) != first.get(k)]
            if bad:
                raise ValueError(f"{folder} differs from {folders[0]} in {bad}: collections trained into one probe "
                                 "must come from the same model, layers, markers and exit text.")
        for r in recs:
            key = (mode, r["qid"])
            if r["kind"] == 0 and key in seen:
                raise ValueError(f"Question {r['qid']!r} is in both {seen[key]} and {folder} ({mode}): give each "
                                 "collection its own question seed (or --levels).")
            if r["kind"] == 0:
                seen[key] = folder
            r["decoding"], r["source"] = mode, i
        records.extend(recs)
        parts.append(h)
        summaries.append({"data": str(folder), "decoding": mode, "sampling": settings["sampling"],
                          "questions": sum(r["kind"] == 0 for r in recs), "records": len(recs)})
    return StoredStates.concat(parts, budget), records, dict(first, collections=summaries)


def load_collections(folders) -> tuple[dict[str, torch.Tensor], list[dict], dict]:
    """`open_collections` read into memory: ({"layer{l}": [N, D] fp32, "thought_layer{l}": [M, D] fp16}, records,
    settings)."""
    states, records, settings = open_collections(folders)
    return states.load_all(), records, settings


def rank_records(folder: Path, index: dict) -> list[dict]:
    """The records of every shard an index names (no hidden states)."""
    return [r for name in index["shards"] for r in json.loads((folder / f"{name}.json").read_text())]


def clean_orphans(folder: Path, rank: int) -> None:
    """Remove temporary files a killed run of this rank left behind (other ranks may be writing theirs)."""
    for pattern in (f"index-r{rank}.json.*.tmp", f"shard-r{rank}-*.tmp"):
        for p in folder.glob(pattern):
            os.unlink(p)
