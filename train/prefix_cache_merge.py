"""Merge kept frozen-prefix caches into one, so a run mixing their data reuses them without a new frozen pass.

A run trained on several processed folders (``--data-dir A B``) needs the frozen blocks' states of every sequence of
both; each folder's own kept cache (``--prefix-cache-dir``) holds one of them. The states of a sequence depend only
on its tokens and the frozen weights, so the union of two caches built with the same frozen weights and precision
is exactly the cache the mixed run would build, at the cost of a file copy instead of a pass over the frozen blocks
(about 25 minutes per realmix view of SmolLM2 on two CPU cores). The merged folder has the layout of
:mod:`train.frozen_prefix` (``states.npy``, ``index.npz``, ``manifest.json``); a run finds its sequences through
the index ("subset" reuse), like a leave-one-source-out fold in the cache of the whole data.

Command::

    python -m train.prefix_cache_merge --caches DIR_A DIR_B --output-dir DIR
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from train.frozen_prefix import FRAME_KEYS, INDEX_NAME, write_index
from utils.io_utils import read_json, write_json

CHUNK_ROWS = 65_536  # rows copied at a time (150 MB of SmolLM2 states): memory stays flat for any cache size


def read_cache(folder: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """The manifest and the index of a kept cache, or a ValueError naming what is missing and the fix."""
    manifest, index = folder / "manifest.json", folder / INDEX_NAME
    if not manifest.is_file() or not index.is_file() or not (folder / "states.npy").is_file():
        raise ValueError(f"{folder} is not a complete kept frozen-prefix cache (it needs manifest.json, {INDEX_NAME} "
                         f"and states.npy): build it with a training run's --cache-frozen-prefix --prefix-cache-dir "
                         f"{folder} (a cache from before the index gets it on its next reuse)")
    with np.load(index) as arrays:
        return read_json(manifest), {name: arrays[name] for name in ("digests", "starts", "lengths")}


def merge_caches(caches: list[str | Path], output_dir: str | Path) -> dict:
    """Write the union of ``caches`` (same frozen weights and precision) into ``output_dir``; return its manifest.

    A sequence present in several caches is taken from the first. The folder is written beside its final name and
    renamed into place, so an interrupted merge never leaves a cache that looks valid.

    Raises:
        ValueError: fewer than two caches, an incomplete cache, or caches built on other frozen weights/precision.
    """
    folders = [Path(c) for c in caches]
    if len(folders) < 2:
        raise ValueError("--caches needs at least two kept frozen-prefix caches to merge")
    output = Path(output_dir)
    if output.resolve() in [f.resolve() for f in folders]:
        raise ValueError(f"--output-dir {output} is one of the --caches; merge into a new folder")
    manifests, indexes = zip(*(read_cache(f) for f in folders))
    for folder, manifest in zip(folders[1:], manifests[1:]):
        differ = [k for k in FRAME_KEYS if manifest.get(k) != manifests[0].get(k)]
        if differ:
            raise ValueError(f"{folder} and {folders[0]} were built differently ({', '.join(differ)}): their states "
                             f"are not interchangeable; build both with the same backbone, --freeze-layers and "
                             f"--precision")
    plan = []  # (source cache, start row there, length), one per distinct sequence
    seen: set[bytes] = set()
    digests = []
    for source, index in enumerate(indexes):
        for digest, start, length in zip(index["digests"], index["starts"], index["lengths"]):
            if digest not in seen:
                seen.add(digest)
                digests.append(digest)
                plan.append((source, int(start), int(length)))
    states = [np.load(f / "states.npy", mmap_mode="r") for f in folders]
    hidden = states[0].shape[1]
    lengths = np.array([n for _, _, n in plan], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    partial = output.with_name(output.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    merged = np.lib.format.open_memmap(partial / "states.npy", mode="w+", dtype=np.float32,
                                       shape=(int(lengths.sum()), hidden))
    for (source, start, length), at in zip(plan, starts):
        for offset in range(0, length, CHUNK_ROWS):
            n = min(CHUNK_ROWS, length - offset)
            merged[at + offset:at + offset + n] = states[source][start + offset:start + offset + n]
    merged.flush()
    del merged
    digest_array = np.array(digests, dtype="S32")
    write_index(partial, digest_array, starts, lengths)
    manifest = {key: manifests[0].get(key) for key in FRAME_KEYS}
    manifest.update({
        "sequences": len(plan), "tokens": int(lengths.sum()),
        # Never equal to a run's own fingerprint: runs find their rows through the index ("subset" reuse).
        "sequences_sha256": "merged:" + hashlib.sha256(digest_array.tobytes()).hexdigest(),
        "merged_from": [{"folder": str(f), "sequences": m.get("sequences"), "tokens": m.get("tokens")}
                        for f, m in zip(folders, manifests)],
    })
    write_json(partial / "manifest.json", manifest)
    shutil.rmtree(output, ignore_errors=True)
    partial.rename(output)
    return manifest


@dataclass
class MergeArguments:
    """Merge kept frozen-prefix caches (same backbone, --freeze-layers and precision) into one folder."""

    caches: list[str] = field(metadata={"help": "Kept cache folders (--prefix-cache-dir of earlier runs), two or more."})
    output_dir: str = field(metadata={"help": "Folder of the merged cache (replaced if it exists)."})


def main(argv: list[str] | None = None) -> None:
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(MergeArguments).parse_args_into_dataclasses(args=argv)
    try:
        manifest = merge_caches(args.caches, args.output_dir)
    except ValueError as error:
        raise SystemExit(f"prefix_cache_merge: {error}") from None
    print(f"merged {len(args.caches)} caches into {args.output_dir}: {manifest['sequences']} sequences, "
          f"{manifest['tokens']} tokens")


if __name__ == "__main__":
    main()
