"""Load and validate FineHarm-format data: the one place that decides what a well-formed record is.

A FineHarm-format folder holds three JSON files, one per split (``train_new.json``, ``valid_new.json``,
``test_new.json``). Each is a JSON list of objects with these fields (extra fields such as ``meta`` are kept):

- ``prompt``, ``response``: non-empty strings;
- ``sentences``: the response split into sentences (a non-empty list of non-empty strings);
- ``sentence_labels``: 0/1 per sentence (1 = harmful);
- ``words``: per sentence, the list of its words (strings);
- ``word_labels``: per sentence, 0/1 per word (notional words of harmful sentences are 1).

The response is harmful iff some sentence is (:func:`response_label`). Validation is strict and happens before any
processing, because a silently skipped or mis-aligned record would corrupt the token labels the monitor learns
from; every error names the file, the record index and the field, and says what to do.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

from utils.io_utils import DataFormatError, read_json

# Split names used throughout the project, mapped to FineHarm's file names.
SPLIT_FILES = {"train": "train_new.json", "val": "valid_new.json", "test": "test_new.json"}
SPLITS = tuple(SPLIT_FILES)
REQUIRED_FIELDS = ("prompt", "response", "sentences", "sentence_labels", "words", "word_labels")
README_HINT = "see FineHarm/README.md for how to obtain FineHarm, or run `python -m utils.data.sample_data` for a sample"


def find_split_files(input_dir: str | os.PathLike, splits: Iterable[str] = SPLITS) -> dict[str, Path]:
    """Locate the split files of a FineHarm-format folder.

    Args:
        input_dir: folder holding ``train_new.json``, ``valid_new.json`` and ``test_new.json``.
        splits: which splits are needed (names from :data:`SPLITS`).

    Returns:
        ``{split: path}`` in the order of ``splits``.

    Raises:
        ValueError: for an unknown split name.
        FileNotFoundError: when the folder or any needed file is missing; the message lists every missing file.
    """
    splits = list(splits)
    unknown = [name for name in splits if name not in SPLIT_FILES]
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; choose from {list(SPLITS)}")
    folder = Path(input_dir)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"FineHarm input folder {str(folder)!r} does not exist or is not a folder; put "
            f"{', '.join(SPLIT_FILES[s] for s in splits)} there or pass --input-dir DIR ({README_HINT})"
        )
    paths = {name: folder / SPLIT_FILES[name] for name in splits}
    missing = [path.name for path in paths.values() if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"FineHarm input folder {str(folder)!r} lacks {', '.join(missing)} (it needs "
            f"{', '.join(SPLIT_FILES[s] for s in splits)}); {README_HINT}"
        )
    return paths


def _is_label(value: Any) -> bool:
    # bool is a subclass of int in Python; a true/false in the JSON means the file was written by something else.
    return isinstance(value, int) and not isinstance(value, bool) and value in (0, 1)


def _is_blank(value: str) -> bool:
    return not value.strip()


def validate_example(example: Any, index: int, source: str | os.PathLike = "<data>") -> None:
    """Check one record against the FineHarm format.

    Args:
        example: the decoded JSON value of the record.
        index: its 0-based position in the file (named in errors).
        source: the file it came from (named in errors).

    Raises:
        DataFormatError: naming file, record and field, and what to fix.
    """

    def fail(field: str, problem: str, fix: str) -> None:
        raise DataFormatError(f"{source}, record {index}, field '{field}': {problem}; {fix}")

    if not isinstance(example, dict):
        raise DataFormatError(
            f"{source}, record {index}: expected a JSON object with fields {', '.join(REQUIRED_FIELDS)}, "
            f"got {type(example).__name__}; every element of the top-level list must be one record"
        )
    for field in REQUIRED_FIELDS:
        if field not in example:
            fail(field, "missing", f"every record needs {', '.join(REQUIRED_FIELDS)}")

    for field in ("prompt", "response"):
        value = example[field]
        if not isinstance(value, str):
            fail(field, f"expected a string, got {type(value).__name__}", "store the text as a JSON string")
        if _is_blank(value):
            fail(field, "is empty or only whitespace", "drop the record or fill in the text")

    sentences = example["sentences"]
    if not isinstance(sentences, list):
        fail("sentences", f"expected a list of strings, got {type(sentences).__name__}",
             "store the response's sentences as a JSON list")
    if not sentences:
        fail("sentences", "is an empty list", "split the response into at least one sentence")
    for i, sentence in enumerate(sentences):
        if not isinstance(sentence, str):
            fail(f"sentences[{i}]", f"expected a string, got {type(sentence).__name__}", "store each sentence as text")
        if _is_blank(sentence):
            fail(f"sentences[{i}]", "is empty or only whitespace", "remove empty sentences (and their labels/words)")
    n_sentences = len(sentences)

    sentence_labels = example["sentence_labels"]
    if not isinstance(sentence_labels, list):
        fail("sentence_labels", f"expected a list of 0/1, got {type(sentence_labels).__name__}",
             "give one 0/1 label per sentence")
    if len(sentence_labels) != n_sentences:
        fail("sentence_labels", f"has {len(sentence_labels)} labels for {n_sentences} sentences",
             "give exactly one 0/1 label per sentence")
    for i, label in enumerate(sentence_labels):
        if not _is_label(label):
            fail(f"sentence_labels[{i}]", f"expected 0 or 1, got {label!r}",
                 "use the integers 0 (benign) or 1 (harmful)")

    words = example["words"]
    if not isinstance(words, list):
        fail("words", f"expected a list (one list of words per sentence), got {type(words).__name__}",
             "store the words of each sentence as a list")
    if len(words) != n_sentences:
        fail("words", f"has {len(words)} word lists for {n_sentences} sentences", "give one list of words per sentence")
    for i, sentence_words in enumerate(words):
        if not isinstance(sentence_words, list):
            fail(f"words[{i}]", f"expected a list of strings, got {type(sentence_words).__name__}",
                 "store the words of each sentence as a list")
        for j, word in enumerate(sentence_words):
            if not isinstance(word, str):
                fail(f"words[{i}][{j}]", f"expected a string, got {type(word).__name__}", "store each word as text")

    word_labels = example["word_labels"]
    if not isinstance(word_labels, list):
        fail("word_labels", f"expected a list (one list of 0/1 per sentence), got {type(word_labels).__name__}",
             "store the word labels of each sentence as a list")
    if len(word_labels) != n_sentences:
        fail("word_labels", f"has {len(word_labels)} label lists for {n_sentences} sentences",
             "give one list of word labels per sentence")
    for i, sentence_word_labels in enumerate(word_labels):
        if not isinstance(sentence_word_labels, list):
            fail(f"word_labels[{i}]", f"expected a list of 0/1, got {type(sentence_word_labels).__name__}",
                 "give one 0/1 label per word")
        if len(sentence_word_labels) != len(words[i]):
            fail(f"word_labels[{i}]", f"has {len(sentence_word_labels)} labels for the {len(words[i])} words of "
                 f"sentence {i}", "give exactly one 0/1 label per word")
        for j, label in enumerate(sentence_word_labels):
            if not _is_label(label):
                fail(f"word_labels[{i}][{j}]", f"expected 0 or 1, got {label!r}",
                     "use the integers 0 (benign) or 1 (harmful)")

    meta = example.get("meta")
    if meta is not None and not isinstance(meta, dict):
        fail("meta", f"expected an object, got {type(meta).__name__}", "store record metadata as a JSON object")
    category = (meta or {}).get("category")
    if category is not None and (not isinstance(category, str) or not category.strip()):
        fail("meta.category", f"expected a harm category name or null, got {category!r}",
             "name the category (e.g. \"illicit\") or set null for a benign response")


def load_split(path: str | os.PathLike) -> list[dict]:
    """Read and validate one FineHarm-format split file.

    Args:
        path: a JSON file holding a list of records.

    Returns:
        The records, unchanged (extra fields kept).

    Raises:
        FileNotFoundError: when the file is missing.
        DataFormatError: on invalid JSON, a top level that is not a list, or any bad record (see
            :func:`validate_example`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FineHarm split file {str(path)!r} does not exist; {README_HINT}")
    try:
        data = read_json(path)
    except DataFormatError as err:
        raise DataFormatError(f"{err}; repair the file or obtain a fresh copy ({README_HINT})") from None
    if not isinstance(data, list):
        raise DataFormatError(
            f"{path}: the top level must be a JSON list of records, got {type(data).__name__}; "
            f"FineHarm files are lists of objects ({README_HINT})"
        )
    for index, example in enumerate(data):
        validate_example(example, index, path)
    return data


def load_fineharm(input_dir: str | os.PathLike, splits: Iterable[str] = SPLITS) -> dict[str, list[dict]]:
    """Locate, read and validate several splits; nothing is returned unless every split is valid.

    Args:
        input_dir: a FineHarm-format folder.
        splits: split names (``train``, ``val``, ``test``).

    Returns:
        ``{split: records}`` in the order of ``splits``.

    Raises:
        ValueError, FileNotFoundError, DataFormatError: see :func:`find_split_files` and :func:`load_split`.
    """
    return {name: load_split(path) for name, path in find_split_files(input_dir, splits).items()}


def response_label(example: dict) -> int:
    """The response-level label: 1 (harmful) iff some sentence is harmful.

    Args:
        example: a validated FineHarm record.

    Returns:
        0 or 1.
    """
    return int(any(example["sentence_labels"]))


def harm_category(example: dict) -> str | None:
    """The harm category of a record (``meta.category``, realmix2's taxonomy), or None when it names none.

    Args:
        example: a validated FineHarm record.

    Returns:
        The category name, or None (benign records, and data without categories such as FineHarm).
    """
    meta = example.get("meta")
    return meta.get("category") if isinstance(meta, dict) else None


def has_categories(example: dict) -> bool:
    """True when the record carries a ``meta.category`` field (null included): data labelled with categories."""
    meta = example.get("meta")
    return isinstance(meta, dict) and "category" in meta
