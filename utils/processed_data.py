"""Reading the processed data folders written by ``utils/data_process.py`` (``train/val/test.jsonl`` + ``meta.json``).

Training and evaluation both start here, so a folder processed with the wrong tokenizer or a damaged JSONL fails
early with a message that says which file, which line and how to fix it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from utils.io_utils import DataFormatError, read_json, read_jsonl

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
