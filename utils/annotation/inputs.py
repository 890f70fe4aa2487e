"""Reading the annotation pipeline's input (``utils/annotation/annotate.py``): files, field mapping, presets and labels.

Inputs are local files: JSONL (``.jsonl``/``.ndjson``), a JSON list (``.json``), CSV/TSV (``.csv``/``.tsv``), or
anything else ``datasets`` loads from a local file (``.parquet``, ``.arrow``); a FineHarm-format folder
(``train_new.json``, ``valid_new.json``, ``test_new.json``) is read with its splits. Every record is mapped to
:class:`InputRecord` through a :class:`FieldMap`; a preset names the fields of a common public shape, and each
``--*-field`` flag overrides one name:

============================  =====================================================================================
preset                        fields
============================  =====================================================================================
``prompt-response-label``     ``prompt``, ``response``, ``label`` (1/true/"harmful"/"unsafe" = harmful; default)
``prompt-response-is_safe``   ``prompt``, ``response``, ``is_safe`` (true = benign; BeaverTails' shape)
``prompt-completion-label``   ``prompt``, ``completion``, ``label``
``messages``                  ``messages`` (chat turns ``{"role", "content"}``: the last assistant turn is the
                              response, the last user turn before it the prompt), ``label``
``fineharm``                  a FineHarm-format record: ``prompt``, ``response``, ``sentences``,
                              ``sentence_labels`` (the response label is any sentence label)
============================  =====================================================================================

Labels: integers 0/1, booleans, and the strings ``1/0``, ``true/false``, ``yes/no`` follow ``--label-means``
(``harmful``: 1 is harmful, the default; ``safe``: 1 is safe, as in ``is_safe``); the words ``harmful``, ``unsafe``,
``toxic`` (harmful) and ``benign``, ``safe``, ``unharmful``, ``harmless`` (benign) mean what they say whatever
``--label-means`` is. In CSV files, list-valued fields (``messages``, ``sentences``, ``sentence_labels``) hold JSON.

Every problem names the file, the line (JSONL, CSV) or record index (JSON, other formats) and the field, and says
what to fix; :class:`InputProblem` carries it so the caller can fail or skip per ``--on-error``.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Optional

from utils.data.fineharm import SPLIT_FILES
from utils.io_utils import DataFormatError

SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "dev": "val", "test": "test", "testing": "test"}
HARMFUL_WORDS = frozenset({"harmful", "unsafe", "toxic"})
BENIGN_WORDS = frozenset({"benign", "safe", "unharmful", "harmless", "non-toxic", "nontoxic"})
TRUE_WORDS = frozenset({"1", "true", "yes"})
FALSE_WORDS = frozenset({"0", "false", "no"})
LABEL_MEANINGS = ("harmful", "safe")
DATASETS_BUILDERS = {".parquet": "parquet", ".arrow": "arrow"}


class InputProblem(DataFormatError):
    """One bad input record (or file); ``where`` is "file, line N" and the message says what to fix."""

    def __init__(self, where: str, message: str):
        super().__init__(f"{where}: {message}")
        self.where = where


@dataclass(frozen=True)
class FieldMap:
    """Which input field holds what (None: not present in this shape)."""

    prompt: Optional[str] = "prompt"
    response: Optional[str] = "response"
    label: Optional[str] = "label"
    messages: Optional[str] = None
    sentences: Optional[str] = None
    sentence_labels: Optional[str] = None
    id: Optional[str] = None
    split: Optional[str] = None
    label_means: str = "harmful"


PRESETS: dict[str, FieldMap] = {
    "prompt-response-label": FieldMap(),
    "prompt-response-is_safe": FieldMap(label="is_safe", label_means="safe"),
    "prompt-completion-label": FieldMap(response="completion"),
    "messages": FieldMap(prompt=None, response=None, messages="messages"),
    "fineharm": FieldMap(label=None, sentences="sentences", sentence_labels="sentence_labels"),
}


def field_map(preset: str, **overrides: Optional[str]) -> FieldMap:
    """A preset's :class:`FieldMap` with the given fields replaced (``None`` values are ignored; ``""`` unsets).

    Raises:
        ValueError: an unknown preset or label meaning.
    """
    if preset not in PRESETS:
        raise ValueError(f"--preset {preset!r} is unknown; choose from {', '.join(PRESETS)}")
    changes = {key: (value or None) for key, value in overrides.items() if value is not None}
    if changes.get("label_means", "harmful") not in LABEL_MEANINGS:
        raise ValueError(f"--label-means must be one of {', '.join(LABEL_MEANINGS)}, got {changes['label_means']!r}")
    mapping = replace(PRESETS[preset], **changes)
    if mapping.messages is None and (mapping.prompt is None or mapping.response is None):
        raise ValueError("name the prompt and response fields (--prompt-field, --response-field) or a chat "
                         "messages field (--messages-field / --preset messages)")
    return mapping


@dataclass
class InputRecord:
    """One input example, normalised.

    Attributes:
        prompt, response: the texts.
        label: the response label (1 harmful, 0 benign) or None when the input has none.
        sentences, sentence_labels: given per-sentence labels (both or neither).
        where: "file, line N" (named in every later message).
        source: the file as the user gave it. record_id: the input's own id, if mapped.
        split: the input's own split (FineHarm folders, ``--split-field``), or None.
    """

    prompt: str
    response: str
    label: Optional[int]
    where: str
    source: str
    sentences: Optional[list[str]] = None
    sentence_labels: Optional[list[int]] = None
    record_id: Optional[str] = None
    split: Optional[str] = None
    extra: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------- values


def parse_label(value: Any, means: str, where: str, name: str) -> int:
    """A response or sentence label as 0/1 (see the module docstring).

    Raises:
        InputProblem: a value that is not a recognised label.
    """
    if isinstance(value, bool):
        truth = value
    elif isinstance(value, (int, float)) and value in (0, 1):
        truth = bool(value)
    elif isinstance(value, str) and value.strip().lower() in HARMFUL_WORDS | BENIGN_WORDS:
        return int(value.strip().lower() in HARMFUL_WORDS)
    elif isinstance(value, str) and value.strip().lower() in TRUE_WORDS | FALSE_WORDS:
        truth = value.strip().lower() in TRUE_WORDS
    else:
        raise InputProblem(where, f"field '{name}' = {value!r} is not a label; use 0/1, true/false or "
                                  f"harmful/benign (safe/unsafe), or map another field with --label-field")
    return int(truth) if means == "harmful" else int(not truth)


def _text(record: dict, name: str, where: str) -> str:
    if name not in record or record[name] is None:
        raise InputProblem(where, f"field '{name}' is missing; every record needs it (or map another field with "
                                  f"--{_flag_for(name)})")
    value = record[name]
    if not isinstance(value, str):
        raise InputProblem(where, f"field '{name}' must be text, got {type(value).__name__}")
    if not value.strip():
        raise InputProblem(where, f"field '{name}' is empty; drop the record or fill in the text")
    return value


def _flag_for(name: str) -> str:
    return {"prompt": "prompt-field", "response": "response-field", "completion": "response-field",
            "messages": "messages-field", "sentences": "sentences-field"}.get(name, "...-field flags")


def _json_list(value: Any, name: str, where: str) -> list:
    # CSV cells hold lists as JSON text.
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise InputProblem(where, f"field '{name}' must be a list (in CSV: JSON text like [\"a\", \"b\"])") \
                from None
    if hasattr(value, "tolist"):  # numpy arrays from parquet
        value = value.tolist()
    if not isinstance(value, list):
        raise InputProblem(where, f"field '{name}' must be a list, got {type(value).__name__}")
    return value


def _chat_turns(record: dict, name: str, where: str) -> tuple[str, str]:
    """(prompt, response) of a chat: the last assistant turn and the last user turn before it."""
    if name not in record or record[name] is None:
        raise InputProblem(where, f"field '{name}' is missing; map the chat field with --messages-field")
    turns = _json_list(record[name], name, where)
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("role"), str) or not isinstance(turn.get("content"),
                                                                                                  str):
            raise InputProblem(where, f"field '{name}[{i}]' must be an object with text 'role' and 'content'")
    last_assistant = max((i for i, t in enumerate(turns) if t["role"] == "assistant"), default=None)
    if last_assistant is None:
        raise InputProblem(where, f"field '{name}' has no assistant turn; the last assistant turn is the response")
    last_user = max((i for i, t in enumerate(turns[:last_assistant]) if t["role"] == "user"), default=None)
    if last_user is None:
        raise InputProblem(where, f"field '{name}' has no user turn before the last assistant turn")
    prompt, response = turns[last_user]["content"], turns[last_assistant]["content"]
    for part, text in (("user", prompt), ("assistant", response)):
        if not text.strip():
            raise InputProblem(where, f"field '{name}': the {part} turn is empty")
    return prompt, response


def to_input_record(
    record: Any, mapping: FieldMap, where: str, source: str, split: Optional[str] = None
) -> InputRecord:
    """Map one decoded record onto an :class:`InputRecord`.

    Args:
        record: the decoded record (a dict).
        mapping: the field map.
        where: "file, line N" for messages.
        source: the input file as given.
        split: the split implied by the file (FineHarm folders), if any.

    Raises:
        InputProblem: naming the field and the fix.
    """
    if not isinstance(record, dict):
        raise InputProblem(where, f"expected an object with fields, got {type(record).__name__}")
    if mapping.messages is not None:
        prompt, response = _chat_turns(record, mapping.messages, where)
    else:
        prompt, response = _text(record, mapping.prompt, where), _text(record, mapping.response, where)

    sentences = sentence_labels = None
    if mapping.sentences is not None and mapping.sentence_labels is not None:
        if mapping.sentences not in record or mapping.sentence_labels not in record:
            missing = mapping.sentences if mapping.sentences not in record else mapping.sentence_labels
            raise InputProblem(where, f"field '{missing}' is missing (given sentence labels need both "
                                      f"'{mapping.sentences}' and '{mapping.sentence_labels}')")
        sentences = _json_list(record[mapping.sentences], mapping.sentences, where)
        raw_labels = _json_list(record[mapping.sentence_labels], mapping.sentence_labels, where)
        if len(sentences) != len(raw_labels) or not sentences:
            raise InputProblem(where, f"fields '{mapping.sentences}' and '{mapping.sentence_labels}' must be "
                                      f"non-empty lists of the same length ({len(sentences)} vs {len(raw_labels)})")
        for i, sentence in enumerate(sentences):
            if not isinstance(sentence, str) or not sentence.strip():
                raise InputProblem(where, f"field '{mapping.sentences}[{i}]' must be non-empty text")
        sentence_labels = [parse_label(v, "harmful", where, f"{mapping.sentence_labels}[{i}]")
                           for i, v in enumerate(raw_labels)]

    label = None
    if mapping.label is not None:
        if mapping.label not in record or record[mapping.label] is None:
            raise InputProblem(where, f"field '{mapping.label}' (the response label) is missing; map it with "
                                      f"--label-field, or --label-field '' for unlabelled data with a --judge")
        label = parse_label(record[mapping.label], mapping.label_means, where, mapping.label)
    elif sentence_labels is not None:
        label = int(any(sentence_labels))

    record_id = None
    if mapping.id is not None and record.get(mapping.id) is not None:
        record_id = str(record[mapping.id])
    if mapping.split is not None:
        value = record.get(mapping.split)
        if not isinstance(value, str) or value.strip().lower() not in SPLIT_ALIASES:
            raise InputProblem(where, f"field '{mapping.split}' = {value!r} is not a split; use train, val "
                                      f"(valid, validation, dev) or test")
        split = SPLIT_ALIASES[value.strip().lower()]
    return InputRecord(prompt=prompt, response=response, label=label, where=where, source=source,
                       sentences=sentences, sentence_labels=sentence_labels, record_id=record_id, split=split)


# ------------------------------------------------------------------------------------------------------ files


def _jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield f"{path}, line {line_no}", json.loads(line)
            except json.JSONDecodeError as err:
                yield f"{path}, line {line_no}", InputProblem(f"{path}, line {line_no}",
                                                              f"invalid JSON ({err.msg}, column {err.colno})")


def _json_list_file(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as err:
        raise InputProblem(str(path), f"invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}; a .json "
                                      f"input must be one JSON list (use .jsonl for one object per line)") from None
    if not isinstance(data, list):
        raise InputProblem(str(path), f"the top level must be a JSON list of records, got {type(data).__name__}")
    for index, record in enumerate(data):
        yield f"{path}, record {index}", record


def _csv(path: Path) -> Iterator[tuple[str, Any]]:
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        line = 2  # the header is line 1
        for row in reader:
            yield f"{path}, line {line}", row
            line = reader.line_num + 1


def _with_datasets(path: Path) -> Iterator[tuple[str, Any]]:
    from datasets import load_dataset

    builder = DATASETS_BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise InputProblem(str(path), f"unknown file type {path.suffix!r}; use .jsonl, .json (a list), .csv, .tsv, "
                                      f".parquet or .arrow")
    try:
        dataset = load_dataset(builder, data_files=str(path), split="train")
    except Exception as err:  # noqa: BLE001 - any reader failure is a bad input file
        raise InputProblem(str(path), f"could not read it as {builder} ({type(err).__name__}: {err})") from err
    for index, record in enumerate(dataset):
        yield f"{path}, row {index}", record


def iter_file(path: str | os.PathLike, mapping: FieldMap) -> Iterator[InputRecord | InputProblem]:
    """Read one input file or FineHarm folder, yielding a record or the problem of each entry.

    Args:
        path: the file (or FineHarm-format folder) as the user gave it.
        mapping: the field map.

    Yields:
        :class:`InputRecord`, or :class:`InputProblem` for an entry that cannot be used.

    Raises:
        FileNotFoundError: the path does not exist. InputProblem: the whole file is unreadable.
    """
    source = str(path)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input {source!r} does not exist; give a .jsonl, .json, .csv, .tsv, .parquet file "
                                f"or a FineHarm-format folder")
    if path.is_dir():
        present = {split: path / name for split, name in SPLIT_FILES.items() if (path / name).is_file()}
        if not present:
            raise FileNotFoundError(f"input folder {source!r} holds none of {', '.join(SPLIT_FILES.values())}; "
                                    f"give input files, or a FineHarm-format folder")
        for split, file in present.items():
            for where, record in _json_list_file(file):
                yield _convert(record, mapping, where, source, split)
        return
    suffix = path.suffix.lower()
    reader = (_jsonl if suffix in (".jsonl", ".ndjson") else _json_list_file if suffix == ".json"
              else _csv if suffix in (".csv", ".tsv") else _with_datasets)
    for where, record in reader(path):
        yield _convert(record, mapping, where, source, None)


def _convert(record: Any, mapping: FieldMap, where: str, source: str, split: Optional[str]):
    if isinstance(record, InputProblem):
        return record
    try:
        return to_input_record(record, mapping, where, source, split)
    except InputProblem as problem:
        return problem
