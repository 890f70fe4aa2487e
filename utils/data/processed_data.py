"""Reading the processed data folders written by ``utils/data_process.py`` (``train/val/test.jsonl`` + ``meta.json``).

Training and evaluation both start here, so a folder processed with the wrong tokenizer or a damaged JSONL fails
early with a message that says which file, which line and how to fix it.

Several sources can be mixed, here for processed folders (``--data-dir A B --data-weights 1 0.5`` in training) and
by ``utils/data_process.py`` for FineHarm-format folders (``--input-dir A B --source-weights 1 0.5``). A weight
scales how many training examples a source contributes: weight 2 takes every example twice, 0.5 a seeded random
half, 1.5 every example once plus a random half again (:func:`weighted_indices`). Weights act on the training split
only; validation and test splits are concatenated unweighted, so model selection and evaluation see every source as
it is. Without weights every source counts once (plain concatenation).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, TypeVar

from utils.io_utils import DataFormatError, read_json, read_jsonl

T = TypeVar("T")
# meta.json keys that must agree between mixed folders: they say which tokenizer made the ids and how.
TOKENIZER_KEYS = ("tokenizer_class", "vocab_size", "start_token_id", "end_token_id", "eos_appended")

REQUIRED_FIELDS = ("input_ids", "token_labels", "sequence_labels")


def split_path(data_dir: str | Path, split: str) -> Path:
    """Path of one split's JSONL, with an error that says how to create it when it is missing.

    Raises:
        FileNotFoundError: when the data folder or the split file does not exist.
    """
    data_dir = Path(data_dir)
    path = data_dir / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: process the data first, e.g. `bash scripts/run-data.sh {data_dir} TOKENIZER_PATH "
            f"[--input-dir FINEHARM_DIR]`"
        )
    return path


def load_meta(data_dir: str | Path) -> dict[str, Any]:
    """The folder's ``meta.json`` (tokenizer, vocabulary size, counts), or ``{}`` for folders written by hand."""
    path = Path(data_dir) / "meta.json"
    return read_json(path) if path.is_file() else {}


def load_split(data_dir: str | Path, split: str, limit: int | None = None) -> list[dict[str, Any]]:
    """Load and validate one processed split.

    Args:
        data_dir: processed data folder.
        split: ``train``, ``val`` or ``test``.
        limit: keep only the first ``limit`` examples (quick runs).

    Returns:
        Records with at least ``input_ids``, ``token_labels``, ``sequence_labels`` (and ``id`` filled in if absent).

    Raises:
        FileNotFoundError: missing file. DataFormatError: empty split or a malformed record.
    """
    path = split_path(data_dir, split)
    records = read_jsonl(path)
    if not records:
        raise DataFormatError(f"{path}: the split is empty; re-run scripts/run-data.sh on a non-empty input")
    if limit is not None:
        records = records[:limit]
    for line_no, record in enumerate(records, start=1):
        for field in REQUIRED_FIELDS:
            if field not in record:
                raise DataFormatError(
                    f"{path}, line {line_no}: missing field {field!r}; re-run scripts/run-data.sh to regenerate it"
                )
        ids, labels = record["input_ids"], record["token_labels"]
        if not isinstance(ids, list) or not ids or not all(isinstance(t, int) for t in ids):
            raise DataFormatError(f"{path}, line {line_no}: 'input_ids' must be a non-empty list of integers")
        if not isinstance(labels, list) or len(labels) != len(ids):
            raise DataFormatError(
                f"{path}, line {line_no}: 'token_labels' must be a list as long as 'input_ids' "
                f"({len(ids)}), got {len(labels) if isinstance(labels, list) else type(labels).__name__}"
            )
        if any(label not in (-100, 0, 1) for label in labels):
            raise DataFormatError(f"{path}, line {line_no}: 'token_labels' may only hold -100, 0 or 1")
        if record["sequence_labels"] not in (0, 1) or isinstance(record["sequence_labels"], bool):
            raise DataFormatError(f"{path}, line {line_no}: 'sequence_labels' must be 0 or 1")
        record.setdefault("id", f"{split}-{line_no - 1:05d}")
    return records


def check_vocabulary(records: list[dict[str, Any]], vocab_size: int, data_dir: str | Path, model_path: str) -> None:
    """Fail when token ids do not fit the model's embedding table (data processed with another tokenizer).

    Raises:
        DataFormatError: naming the data folder, the largest id and the model's vocabulary size.
    """
    largest = max(max(r["input_ids"]) for r in records)
    if largest >= vocab_size:
        meta = load_meta(data_dir)
        raise DataFormatError(
            f"{data_dir}: token id {largest} does not fit the vocabulary of {model_path} ({vocab_size} entries); "
            f"the data was processed with tokenizer {meta.get('tokenizer', '<unknown>')}. Re-run "
            f"`bash scripts/run-data.sh {data_dir} {model_path} ...` with the backbone's own tokenizer."
        )


# ---------------------------------------------------------------------------------------------- several sources


def check_weights(weights: Sequence[float] | None, n_sources: int, flag: str) -> list[float]:
    """Validate mixing weights (one positive number per source); ``None`` means 1 for each.

    Args:
        weights: the weights given on the command line, or None.
        n_sources: how many sources there are.
        flag: the flag's name, for messages (e.g. ``--data-weights``).

    Returns:
        One float per source.

    Raises:
        ValueError: a count that does not match the sources, or a weight that is not a positive finite number.
    """
    if weights is None or len(weights) == 0:
        return [1.0] * n_sources
    if len(weights) != n_sources:
        raise ValueError(f"{flag} got {len(weights)} weight(s) for {n_sources} source(s); give one per source, in "
                         f"the same order (e.g. {flag} {' '.join(['1'] * n_sources)})")
    for weight in weights:
        if not (math.isfinite(weight) and weight > 0):
            raise ValueError(f"{flag}: {weight} is not a positive number; leave a source out instead of weighting "
                             f"it 0")
    return [float(weight) for weight in weights]


def weighted_indices(n: int, weight: float, rng: random.Random) -> list[int]:
    """The examples a source contributes at ``weight``: ``floor(weight)`` full copies plus a seeded random
    ``round(frac(weight) * n)`` examples (without repetition), in index order within each copy.

    Args:
        n: the source's number of examples.
        weight: a positive weight.
        rng: the generator (seeded by the caller, so the mixture is reproducible).

    Returns:
        Indices into the source's examples.
    """
    whole = int(math.floor(weight))
    extra = round((weight - whole) * n)
    indices = list(range(n)) * whole
    indices.extend(sorted(rng.sample(range(n), extra)))
    return indices


def mix_sources(
    sources: Sequence[Sequence[T]], weights: Sequence[float], seed: int
) -> tuple[list[T], list[int], list[int]]:
    """Combine the examples of several sources by weight (see the module docstring).

    Args:
        sources: each source's examples.
        weights: one positive weight per source (:func:`check_weights`).
        seed: seed of the subsampling.

    Returns:
        ``(examples, source_of_each_example, used_per_source)``.
    """
    rng = random.Random(seed)
    mixed: list[T] = []
    origin: list[int] = []
    used: list[int] = []
    for index, (examples, weight) in enumerate(zip(sources, weights)):
        picked = weighted_indices(len(examples), weight, rng)
        mixed.extend(examples[i] for i in picked)
        origin.extend([index] * len(picked))
        used.append(len(picked))
    return mixed, origin, used


def check_same_tokenizer(data_dirs: Sequence[str | Path]) -> None:
    """Refuse to mix processed folders whose ``meta.json`` says they were made with different tokenizers.

    Raises:
        DataFormatError: naming both folders and the field that differs.
    """
    metas = [(str(d), load_meta(d)) for d in data_dirs]
    first_dir, first = metas[0]
    for other_dir, other in metas[1:]:
        for key in TOKENIZER_KEYS:
            if key in first and key in other and first[key] != other[key]:
                raise DataFormatError(
                    f"{other_dir} was processed differently from {first_dir} ({key}: {other[key]!r} vs "
                    f"{first[key]!r}); process every source with the backbone's own tokenizer "
                    f"(bash scripts/run-data.sh DIR TOKENIZER_PATH --input-dir SOURCE)"
                )


@dataclass
class TrainingData:
    """The training and validation examples of one or several processed folders.

    Attributes:
        data_dirs: the folders, in the order given.
        weights: the mixing weight of each.
        train, val: the mixed training examples and the concatenated validation examples.
        sources: per folder: path, weight, examples read and used per split (for ``training_summary.json``).
    """

    data_dirs: list[str]
    weights: list[float]
    train: list[dict[str, Any]]
    val: list[dict[str, Any]]
    sources: list[dict[str, Any]] = field(default_factory=list)
    _by_dir: dict[str, list[dict[str, Any]]] = field(default_factory=dict, repr=False)

    def check_vocabulary(self, vocab_size: int, model_path: str) -> None:
        """:func:`check_vocabulary` for each folder, so an error names the folder at fault."""
        for data_dir, records in self._by_dir.items():
            check_vocabulary(records, vocab_size, data_dir, model_path)

    def max_prompt_tokens(self, served_from: str | None = None) -> int | None:
        """The prompt cut the folders were processed with (``meta.json``'s ``max_prompt_tokens``; None: whole
        prompts), which the trained checkpoint records so that the streaming runtime cuts prompts the same way.

        Args:
            served_from: with folders cut differently (the same examples with and without their prompt: two views),
                the one of ``data_dirs`` whose cut the served monitor applies; None: they must agree.

        Raises:
            DataFormatError: the folders were cut differently and ``served_from`` names none of them (a served
                monitor cuts every prompt one way), or ``served_from`` is not one of the folders.
        """
        cuts = {data_dir: load_meta(data_dir).get("max_prompt_tokens") for data_dir in self.data_dirs}
        if served_from is not None:
            named = {Path(d).resolve(): c for d, c in cuts.items()}
            served = Path(served_from).resolve()
            if served not in named:
                raise DataFormatError(f"--served-prompt-cut-from {served_from} is not one of the --data-dir folders "
                                      f"({', '.join(cuts)}); name the folder whose prompt cut the monitor is served with")
            return named[served]
        if len(set(cuts.values())) > 1:
            listed = ", ".join(f"{d}: {c!r}" for d, c in cuts.items())
            raise DataFormatError(f"the training folders keep different prompt lengths (max_prompt_tokens {listed}); "
                                  f"a monitor is served with one cut: process them all with the same "
                                  f"--max-prompt-tokens (bash scripts/run-data.sh DIR TOKENIZER --max-prompt-tokens N), "
                                  f"or, to train on both views on purpose, name the served one with "
                                  f"--served-prompt-cut-from DIR")
        return next(iter(cuts.values()))

    def describe(self) -> dict[str, Any]:
        """What ``training_summary.json`` records about the data (a single folder keeps the one-folder shape)."""
        single = len(self.data_dirs) == 1
        return {
            "data_dir": self.data_dirs[0] if single else list(self.data_dirs),
            "meta": load_meta(self.data_dirs[0]) if single else [load_meta(d) for d in self.data_dirs],
            "sources": self.sources,
        }


def load_training_data(
    data_dirs: str | Path | Sequence[str | Path],
    weights: Sequence[float] | None = None,
    limit_train: int | None = None,
    limit_eval: int | None = None,
    seed: int = 42,
) -> TrainingData:
    """Load the ``train`` and ``val`` splits of one or several processed folders and mix them by weight.

    Args:
        data_dirs: one folder or several (made with the same tokenizer).
        weights: one positive weight per folder (training split only), or None for 1 each.
        limit_train, limit_eval: keep only the first N examples of each folder's split (quick runs).
        seed: seed of the weighted subsampling.

    Returns:
        The :class:`TrainingData`.

    Raises:
        ValueError: bad weights. FileNotFoundError, DataFormatError: see :func:`load_split`,
            :func:`check_same_tokenizer`.
    """
    dirs = [str(data_dirs)] if isinstance(data_dirs, (str, Path)) else [str(d) for d in data_dirs]
    if not dirs:
        raise ValueError("--data-dir needs at least one processed data folder")
    if len(set(dirs)) != len(dirs):
        raise ValueError(f"--data-dir lists a folder twice ({dirs}); use --data-weights to weigh a folder up")
    weights = check_weights(weights, len(dirs), "--data-weights")
    check_same_tokenizer(dirs)
    train_parts = [load_split(d, "train", limit_train) for d in dirs]
    val_parts = [load_split(d, "val", limit_eval) for d in dirs]
    train, _, used = mix_sources(train_parts, weights, seed)
    val = [record for part in val_parts for record in part]
    sources = [
        {"data_dir": d, "weight": w, "train": {"read": len(t), "used": u}, "val": {"read": len(v), "used": len(v)}}
        for d, w, t, v, u in zip(dirs, weights, train_parts, val_parts, used)
    ]
    by_dir = {d: t + v for d, t, v in zip(dirs, train_parts, val_parts)}
    return TrainingData(data_dirs=dirs, weights=weights, train=train, val=val, sources=sources, _by_dir=by_dir)
