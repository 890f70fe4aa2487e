"""The predictions file: one JSON record per evaluated example, written before any metric is computed.

Every reported number is a pure function of these files (``utils/metrics.py``), so a run can be re-scored, audited
or compared without re-running a model. Format (docs/ARCHITECTURE.md)::

    {"id": "test-00012", "label": 1, "response_start": 57, "n_response_tokens": 120,
     "token_labels": [0, 1, -100, ...],
     "scores": {"token": [0.01, 0.9, ...], "holistic": [0.2, 0.7, ...]},
     "full_score": 0.97}

``<output_dir>/predictions-<split>.jsonl`` holds the records; ``<output_dir>/predictions-<split>.meta.json`` holds
the run's metadata (checkpoint, split, task, date), so the JSONL stays one record per line.

Reading validates every record, because metrics over a silently damaged file would be wrong without any sign:
errors name the file, the line and the field.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from utils.io_utils import DataFormatError, read_json, write_json, write_jsonl

FORMAT_VERSION = 1
# Scores are probabilities; six decimals keep files small (a 3k-example split with two scorers stays in the tens of
# MB) and are far below any threshold resolution. Metrics are computed from the rounded values read back from the
# file, so the reported numbers and the file always agree.
SCORE_DECIMALS = 6
TOKEN_LABEL_VALUES = (-100, 0, 1)


def predictions_path(output_dir: str | os.PathLike, split: str) -> Path:
    """``<output_dir>/predictions-<split>.jsonl``."""
    return Path(output_dir) / f"predictions-{split}.jsonl"


def predictions_meta_path(output_dir: str | os.PathLike, split: str) -> Path:
    """``<output_dir>/predictions-<split>.meta.json`` (the sidecar with the run's metadata)."""
    return Path(output_dir) / f"predictions-{split}.meta.json"


def make_record(
    example_id: str,
    label: int,
    response_start: int,
    token_labels: Sequence[int],
    scores: dict[str, Sequence[float]] | None = None,
    full_score: float | None = None,
    category: str | None | object = ...,
    category_ids: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Build one prediction record, rounding scores to :data:`SCORE_DECIMALS`.

    Args:
        example_id: the processed record's ``id``.
        label: response label (1 harmful, 0 benign).
        response_start: index of the first response token in the processed ``input_ids``.
        token_labels: labels of the response tokens only (their count is ``n_response_tokens``).
        scores: per scorer name, one harmful probability per response token (the prefix ending at that token).
        full_score: harmful probability of the whole response.
        category: the data's harm category of the response (None for benign); left out (``...``) for data
            without categories.
        category_ids: a category head's most likely category (index into its labels) per response token.

    Returns:
        The record as a JSON-ready dict (not yet validated; :func:`write_predictions` validates).
    """
    record: dict[str, Any] = {
        "id": example_id,
        "label": int(label),
        "response_start": int(response_start),
        "n_response_tokens": len(token_labels),
        "token_labels": [int(t) for t in token_labels],
    }
    if scores is not None:
        record["scores"] = {name: [round(float(s), SCORE_DECIMALS) for s in values] for name, values in scores.items()}
    if full_score is not None:
        record["full_score"] = round(float(full_score), SCORE_DECIMALS)
    if category is not ...:
        record["category"] = category
    if category_ids is not None:
        record["category_ids"] = [int(i) for i in category_ids]
    return record


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_probability(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and 0 <= value <= 1


def validate_record(
    record: Any,
    where: str,
    require_scores: Sequence[str] = (),
    require_full_score: bool = False,
) -> None:
    """Check one prediction record against the format.

    Args:
        record: the parsed JSON value.
        where: location used in messages, e.g. ``"predictions-test.jsonl, line 3"``.
        require_scores: scorer names that must be present in ``scores`` (partial-detection metrics need them).
        require_full_score: whether ``full_score`` must be present (full-detection metrics need it).

    Raises:
        DataFormatError: naming ``where`` and the field at fault.
    """

    def fail(field: str, problem: str) -> None:
        raise DataFormatError(
            f"{where}: field {field!r} {problem}; re-run the evaluation script that wrote this file "
            f"(test/test_*.py) to regenerate it"
        )

    if not isinstance(record, dict):
        raise DataFormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "id" not in record:
        fail("id", "is missing")
    if not isinstance(record["id"], (str, int)) or isinstance(record["id"], bool) or record["id"] == "":
        fail("id", "must be a non-empty string (or an integer)")
    if "label" not in record:
        fail("label", "is missing")
    if record["label"] not in (0, 1) or not _is_int(record["label"]):
        fail("label", f"must be 0 or 1, got {record['label']!r}")
    if "n_response_tokens" not in record:
        fail("n_response_tokens", "is missing")
    n = record["n_response_tokens"]
    if not _is_int(n) or n < 0:
        fail("n_response_tokens", f"must be an integer >= 0, got {n!r}")
    if "response_start" in record and (not _is_int(record["response_start"]) or record["response_start"] < 0):
        fail("response_start", f"must be an integer >= 0, got {record['response_start']!r}")
    if "token_labels" in record:
        labels = record["token_labels"]
        if not isinstance(labels, list) or len(labels) != n:
            got = len(labels) if isinstance(labels, list) else type(labels).__name__
            fail("token_labels", f"must be a list of n_response_tokens={n} labels, got {got}")
        if any(label not in TOKEN_LABEL_VALUES or not _is_int(label) for label in labels):
            fail("token_labels", "may only hold -100, 0 or 1")
    scores = record.get("scores")
    if scores is not None:
        if not isinstance(scores, dict):
            fail("scores", f"must be an object mapping scorer names to lists, got {type(scores).__name__}")
        for name, values in scores.items():
            if not isinstance(values, list) or len(values) != n:
                got = len(values) if isinstance(values, list) else type(values).__name__
                fail(f"scores.{name}", f"must be a list of n_response_tokens={n} probabilities, got {got}")
            if not all(_is_probability(v) for v in values):
                fail(f"scores.{name}", "must hold probabilities in [0, 1]")
    for name in require_scores:
        if not isinstance(scores, dict) or name not in scores:
            have = sorted(scores) if isinstance(scores, dict) else []
            fail(f"scores.{name}", f"is missing (scorers present: {have}); evaluate with a script that writes it")
    if "category" in record and record["category"] is not None and not isinstance(record["category"], str):
        fail("category", f"must be a category name or null, got {record['category']!r}")
    if "category_ids" in record:
        ids = record["category_ids"]
        if not isinstance(ids, list) or len(ids) != n or not all(_is_int(i) and i >= 0 for i in ids):
            fail("category_ids", f"must be a list of n_response_tokens={n} category indices >= 0")
    if "full_score" in record and not _is_probability(record["full_score"]):
        fail("full_score", f"must be a probability in [0, 1], got {record['full_score']!r}")
    if require_full_score and "full_score" not in record:
        fail("full_score", "is missing")
    if "full_score" not in record and not scores:
        fail("scores", "is missing and so is 'full_score': the record holds no prediction")


def write_predictions(
    output_dir: str | os.PathLike, split: str, records: Iterable[dict[str, Any]], meta: dict[str, Any]
) -> Path:
    """Validate and atomically write ``predictions-<split>.jsonl`` and its ``.meta.json`` sidecar.

    Args:
        output_dir: evaluation output folder.
        split: split name (``val``, ``test``, ...).
        records: prediction records (see :func:`make_record`).
        meta: run metadata; ``format_version``, ``split`` and ``n_records`` are added.

    Returns:
        The predictions file path.

    Raises:
        DataFormatError: when a record is invalid (nothing is written then) or there are no records.
    """
    path = predictions_path(output_dir, split)
    records = list(records)
    if not records:
        raise DataFormatError(f"{path}: no predictions to write for split {split!r} (the split is empty)")
    seen: set = set()
    for index, record in enumerate(records):
        validate_record(record, f"{path}, record {index}")
        if record["id"] in seen:
            raise DataFormatError(f"{path}, record {index}: field 'id' repeats {record['id']!r}; ids must be unique")
        seen.add(record["id"])
    write_jsonl(path, records)
    write_json(predictions_meta_path(output_dir, split),
               {"format_version": FORMAT_VERSION, **meta, "split": split, "n_records": len(records)})
    return path


def read_predictions(
    path: str | os.PathLike,
    require_scores: Sequence[str] = (),
    require_full_score: bool = False,
) -> list[dict[str, Any]]:
    """Read and validate a predictions file.

    Args:
        path: a ``predictions-<split>.jsonl`` file.
        require_scores: scorer names every record must carry.
        require_full_score: whether every record must carry ``full_score``.

    Returns:
        The records, in file order.

    Raises:
        FileNotFoundError: the file does not exist.
        DataFormatError: invalid JSON, an invalid record (file, line and field named), repeated ids, or no records.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the evaluation script (test/test_*.py) that writes it")
    records: list[dict[str, Any]] = []
    seen: set = set()
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {line_no}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataFormatError(f"{where}: invalid JSON ({err.msg})") from None
            validate_record(record, where, require_scores, require_full_score)
            if record["id"] in seen:
                raise DataFormatError(f"{where}: field 'id' repeats {record['id']!r}; ids must be unique")
            seen.add(record["id"])
            records.append(record)
    if not records:
        raise DataFormatError(f"{path}: the predictions file is empty; re-run the evaluation that writes it")
    return records


def read_predictions_meta(output_dir: str | os.PathLike, split: str) -> dict[str, Any]:
    """The sidecar metadata of a split's predictions, or ``{}`` when there is none (hand-made files)."""
    path = predictions_meta_path(output_dir, split)
    return read_json(path) if path.is_file() else {}
