"""Your own data -> a FineHarm-format folder with sentence and word labels (the paper's heuristic annotation).

The paper made FineHarm's fine labels in three steps, which this module repeats on any prompt/response data:
split each response into sentences and label them (an LLM judge); keep only responses whose response and sentence
labels agree (a harmful response has a harmful sentence, a benign one has none); in each harmful sentence label the
notional words harmful (by part of speech). Sentence labels come from the input (``--judge given``), from the
response label (``--judge propagate``: refusal and disclaimer sentences of a harmful response are benign), from a
trained SCM checkpoint (``--judge scm:CKPT``) or from any OpenAI-compatible chat model (``--judge openai:URL``).
Rules and their defaults: ``utils/annotation/text.py`` (sentences, notional POS, refusal rule),
``utils/annotation/judges.py`` (judges and the judging prompt), ``utils/annotation/inputs.py`` (formats, presets).

Commands (``bash scripts/run-annotate.sh IN OUT [flags]`` runs the first form)::

    # prompt/response/label JSONL (label 1/true/"harmful" = harmful) -> my-data/{train,valid,test}_new.json + README.md
    python -m utils.annotation.annotate --input my-data.jsonl --output-dir my-data
    # BeaverTails-like rows (is_safe), chat transcripts, other field names
    python -m utils.annotation.annotate --input rows.csv --output-dir out --preset prompt-response-is_safe
    python -m utils.annotation.annotate --input chats.jsonl --output-dir out --preset messages --label-field verdict
    python -m utils.annotation.annotate --input q.parquet --output-dir out --prompt-field question --response-field answer
    # sentence labels from a judge (responses without labels: --label-field '')
    python -m utils.annotation.annotate --input my-data.jsonl --output-dir out --judge scm:runs/scm-default
    python -m utils.annotation.annotate --input my-data.jsonl --output-dir out --judge openai:http://127.0.0.1:8000/v1 \\
        --judge-model Qwen2.5-7B-Instruct
    # re-annotate a FineHarm-format folder from its response labels (agreement check: utils/annotation/agreement.py)
    python -m utils.annotation.annotate --input ../shared/data/realmix --output-dir /tmp/realmix-re --preset fineharm \\
        --judge propagate

Output: ``train_new.json``, ``valid_new.json``, ``test_new.json`` (FineHarm's names and fields, plus ``meta``: the
input file and line, and the label source), ``README.md`` (the data card: sources, counts and what was dropped
and why, label rules, versions) and ``annotation.json`` (the same facts for programs). Splits are the input's own
when every record has one (a FineHarm folder, ``--split-field``), else a seeded split stratified by response label
(``--split-ratios 0.8 0.1 0.1``). A bad record stops the run before anything is written (``--on-error fail``,
every problem listed with file, line and field) or is skipped and counted (``--on-error skip``); the output folder
is written beside its destination and renamed into place only when complete.
"""

from __future__ import annotations

import hashlib
import platform
import random
import shlex
import subprocess
import sys
import time
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Sequence

from utils.annotation.card import render_card
from utils.annotation.inputs import PRESETS, FieldMap, InputProblem, InputRecord, field_map, iter_file
from utils.annotation.text import (
    DEFAULT_NOTIONAL_POS,
    DEFAULT_SPACY_MODEL,
    Sentence,
    check_pos_tags,
    load_spacy,
    propagate_labels,
    segment_responses,
    spacy_description,
    tokenise_sentences,
    word_labels,
)
from utils.cli import require_at_least
from utils.data.fineharm import SPLIT_FILES, SPLITS, validate_example
from utils.io_utils import REPO_ROOT, DataFormatError, staged_output_dir, write_json

OUTPUT_NAMES = frozenset(set(SPLIT_FILES.values()) | {"README.md", "annotation.json"})
ON_ERROR = ("fail", "skip")
MAX_PROBLEMS_IN_ERROR = 10
DROP_NO_HARMFUL = "harmful response without a harmful sentence"
DROP_ALL_REFUSAL = "harmful response whose every sentence is a refusal or disclaimer"
DROP_HARMFUL_IN_BENIGN = "benign response with a harmful sentence"


class AnnotationError(DataFormatError):
    """The input cannot be annotated as asked; the message lists the problems and the fix."""


@dataclass
class AnnotateArguments:
    """Arguments of ``python -m utils.annotation.annotate`` (each field is one ``--flag``)."""

    input: list[str] = field(metadata={"help": "Input file(s): .jsonl, .json (a list), .csv, .tsv, .parquet, .arrow, "
                                               "or FineHarm-format folder(s)."})
    output_dir: str = field(metadata={"help": "Folder for train_new.json, valid_new.json, test_new.json, README.md "
                                              "and annotation.json (replaced as a whole)."})
    preset: str = field(default="prompt-response-label",
                        metadata={"help": "Field names of a common shape.", "choices": list(PRESETS)})
    prompt_field: Optional[str] = field(default=None, metadata={"help": "Field holding the prompt."})
    response_field: Optional[str] = field(default=None, metadata={"help": "Field holding the response."})
    label_field: Optional[str] = field(default=None, metadata={"help": "Field holding the response label ('' = "
                                                                       "none: unlabelled data for a --judge)."})
    label_means: Optional[str] = field(default=None, metadata={"help": "What 1/true/yes means in the label field: "
                                                                       "harmful or safe.",
                                                               "choices": ["harmful", "safe"]})
    messages_field: Optional[str] = field(default=None, metadata={"help": "Field holding chat turns (role, "
                                                                          "content); replaces prompt/response."})
    sentences_field: Optional[str] = field(default=None, metadata={"help": "Field holding given sentences."})
    sentence_labels_field: Optional[str] = field(default=None, metadata={"help": "Field holding given sentence "
                                                                                 "labels (0/1 per sentence)."})
    id_field: Optional[str] = field(default=None, metadata={"help": "Field holding a record id (kept in meta)."})
    split_field: Optional[str] = field(default=None, metadata={"help": "Field holding the record's split (train, "
                                                                       "val/valid/dev, test)."})
    judge: str = field(default="auto", metadata={"help": "Sentence labels: given, propagate, scm:CKPT_DIR or "
                                                         "openai:BASE_URL; auto = given when sentence labels are "
                                                         "mapped, else propagate."})
    judge_model: Optional[str] = field(default=None, metadata={"help": "Model name for --judge openai:URL."})
    judge_api_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": "Environment variable holding the "
                                                                               "judge server's API key (if any)."})
    judge_timeout: float = field(default=60.0, metadata={"help": "Seconds per judge request."})
    judge_retries: int = field(default=2, metadata={"help": "Extra attempts after a failed judge request."})
    judge_workers: int = field(default=4, metadata={"help": "Concurrent judge requests."})
    judge_theta: Optional[float] = field(default=None, metadata={"help": "scm judge: harmful when the sentence "
                                                                         "score reaches this (default: the "
                                                                         "checkpoint's theta)."})
    judge_aggregate: str = field(default="max", metadata={"help": "scm judge: sentence score from its tokens' "
                                                                  "scores.", "choices": ["max", "mean"]})
    judge_batch_size: int = field(default=8, metadata={"help": "scm judge: sequences per forward pass."})
    judge_device: str = field(default="auto", metadata={"help": "scm judge: auto, cpu, cuda, cuda:N."})
    refusal_rule: bool = field(default=True, metadata={"help": "propagate: refusal and disclaimer sentences of a "
                                                               "harmful response are benign."})
    notional_pos: list[str] = field(default_factory=lambda: list(DEFAULT_NOTIONAL_POS),
                                    metadata={"help": "Universal POS tags of notional words (harmful in a harmful "
                                                      "sentence)."})
    spacy_model: str = field(default=DEFAULT_SPACY_MODEL, metadata={"help": "Installed spaCy pipeline package."})
    consistency_filter: bool = field(default=True, metadata={"help": "Drop responses whose sentence labels "
                                                                     "disagree with the response label."})
    on_error: str = field(default="fail", metadata={"help": "A bad record: fail (nothing written; every problem "
                                                            "listed) or skip (counted in the card).",
                                                    "choices": list(ON_ERROR)})
    split_ratios: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1],
                                      metadata={"help": "train, val, test shares of a fresh split."})
    input_splits: str = field(default="keep", metadata={"help": "keep the input's own splits when every record has "
                                                                "one, or ignore them.",
                                                        "choices": ["keep", "ignore"]})
    seed: int = field(default=42, metadata={"help": "Seed of the split."})
    dedupe: bool = field(default=True, metadata={"help": "Drop exact repeats of (prompt, response)."})
    limit: Optional[int] = field(default=None, metadata={"help": "Use only the first N usable records."})
    title: str = field(default="Annotated data", metadata={"help": "Title of the data card."})
    show_progress: bool = field(default=True, metadata={"help": "Show progress bars."})

    def __post_init__(self) -> None:
        if isinstance(self.input, str):
            self.input = [self.input]
        if not self.input:
            raise ValueError("--input needs at least one file or folder")
        if len(self.split_ratios) != 3 or any(r < 0 for r in self.split_ratios) or sum(self.split_ratios) <= 0:
            raise ValueError(f"--split-ratios needs three non-negative numbers (train val test), got "
                             f"{self.split_ratios}")
        require_at_least(self, 1, "limit", "judge_workers", "judge_batch_size")
        require_at_least(self, 0, "judge_retries")
        if self.judge_theta is not None and not 0.0 <= self.judge_theta <= 1.0:
            raise ValueError(f"--judge-theta must be in [0, 1], got {self.judge_theta}")
        self.notional_pos = list(check_pos_tags(self.notional_pos))
        kind = self.judge.split(":", 1)[0]
        if kind not in ("auto", "given", "propagate", "scm", "openai") or (kind in ("scm", "openai")
                                                                           and ":" not in self.judge):
            raise ValueError(f"--judge {self.judge!r}: use given, propagate, scm:CHECKPOINT_DIR or openai:BASE_URL "
                             f"(e.g. openai:http://127.0.0.1:8000/v1)")


# ---------------------------------------------------------------------------------------------------- helpers


class Problems:
    """Collects bad records; ``fail`` raises once everything was read, listing the first few."""

    def __init__(self, policy: str):
        self.policy = policy
        self.messages: list[str] = []

    def add(self, message: str) -> None:
        self.messages.append(message)

    def check(self, stage: str) -> None:
        if self.policy == "fail" and self.messages:
            listed = "\n  ".join(self.messages[:MAX_PROBLEMS_IN_ERROR])
            more = len(self.messages) - MAX_PROBLEMS_IN_ERROR
            raise AnnotationError(
                f"{len(self.messages)} bad record(s) {stage}; nothing was written:\n  {listed}"
                + (f"\n  ... and {more} more" if more > 0 else "")
                + "\nFix the input (or map other fields with --*-field / --preset), or pass --on-error skip to drop "
                  "and count them."
            )


def resolve_judge(judge: str, mapping: FieldMap) -> str:
    """The judge kind to use (``auto`` resolved from the field map).

    Raises:
        ValueError: a judge that the mapped fields cannot feed.
    """
    kind = judge.split(":", 1)[0]
    has_sentences = mapping.sentences is not None and mapping.sentence_labels is not None
    has_label = mapping.label is not None or has_sentences
    if kind == "auto":
        if has_sentences:
            return "given"
        if has_label:
            return "propagate"
        raise ValueError("the input has no labels (no --label-field and no sentence labels): pass a judge, "
                         "--judge scm:CKPT_DIR or --judge openai:BASE_URL")
    if kind == "given" and not has_sentences:
        raise ValueError("--judge given needs --sentences-field and --sentence-labels-field (or --preset fineharm)")
    if kind == "propagate" and not has_label:
        raise ValueError("--judge propagate needs a response label (--label-field) or given sentence labels")
    return kind


def command_line(args: AnnotateArguments) -> str:
    """The command that reproduces this run: ``python -m utils.annotation.annotate`` with every flag that differs from its
    default (paths as the user gave them)."""
    parts = ["python -m utils.annotation.annotate"]
    for spec in fields(AnnotateArguments):
        value = getattr(args, spec.name)
        if spec.default is not MISSING and value == spec.default:
            continue
        if spec.default_factory is not MISSING and value == spec.default_factory():
            continue
        flag = "--" + spec.name.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + spec.name.replace("_", "-"))
        elif isinstance(value, list):
            parts.append(" ".join([flag, *(shlex.quote(str(v)) for v in value)]))
        else:
            parts.append(f"{flag} {shlex.quote(str(value))}")
    return " ".join(parts)


def _sha256(path: str) -> str:
    """SHA-256 of an input file; of a FineHarm folder, over its split files in split order ("" if none)."""
    source = Path(path)
    files = [source / name for name in SPLIT_FILES.values() if (source / name).is_file()] if source.is_dir() \
        else [source] if source.is_file() else []
    if not files:
        return ""
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def stratified_split(labels: Sequence[int], ratios: Sequence[float], seed: int) -> list[str]:
    """A seeded split name per example, stratified by label, exact shares by largest remainder.

    The order of the examples within a class is shuffled by ``seed``; a split that would be empty takes one example
    from the largest split when there are at least three examples.

    Args:
        labels: the response label of each example.
        ratios: train, val, test shares.
        seed: the seed.

    Returns:
        ``"train"``, ``"val"`` or ``"test"`` per example.
    """
    total = sum(ratios)
    shares = [r / total for r in ratios]
    rng = random.Random(seed)
    assigned = [""] * len(labels)
    for label in sorted(set(labels)):
        members = [i for i, value in enumerate(labels) if value == label]
        rng.shuffle(members)
        exact = [share * len(members) for share in shares]
        counts = [int(x) for x in exact]
        for j in sorted(range(3), key=lambda j: exact[j] - counts[j], reverse=True)[: len(members) - sum(counts)]:
            counts[j] += 1
        begin = 0
        for name, count in zip(SPLITS, counts):
            for index in members[begin:begin + count]:
                assigned[index] = name
            begin += count
    for name, share in zip(SPLITS, shares):
        if share > 0 and name not in assigned and len(labels) >= 3:
            largest = max(SPLITS, key=assigned.count)
            assigned[len(assigned) - 1 - assigned[::-1].index(largest)] = name
    return assigned


# -------------------------------------------------------------------------------------------------- the steps


def read_inputs(args: AnnotateArguments, mapping: FieldMap, problems: Problems) -> tuple[list[InputRecord], list]:
    """Read every input; bad entries go to ``problems``. Returns the records and per-source facts."""
    records: list[InputRecord] = []
    sources = []
    for path in args.input:
        read = usable = 0
        for item in iter_file(path, mapping):
            read += 1
            if isinstance(item, InputProblem):
                problems.add(str(item))
            else:
                usable += 1
                records.append(item)
        sources.append({"path": path, "read": read, "usable": usable, "sha256": _sha256(path)})
    return records, sources


def sentences_for(args: AnnotateArguments, records: list[InputRecord], judge_kind: str,
                  problems: Problems) -> list[Optional[list[Sentence]]]:
    """Sentences, words and POS per record (``None`` for a record that became a problem)."""
    nlp = load_spacy(args.spacy_model)
    result: list[Optional[list[Sentence]]] = []
    if judge_kind == "given":
        tokenised = tokenise_sentences(nlp, [[s.strip() for s in r.sentences] for r in records], args.show_progress)
        for record, sentences in zip(records, tokenised):
            empty = [i for i, s in enumerate(sentences) if s is None]
            if empty:
                problems.add(f"{record.where}: sentence(s) {empty} hold no word; remove them and their labels")
                result.append(None)
            else:
                result.append(sentences)  # type: ignore[arg-type]
        return result
    for record, sentences in zip(records, segment_responses(nlp, [r.response for r in records], args.show_progress)):
        if not sentences:
            problems.add(f"{record.where}: the response holds no word to label")
            result.append(None)
        else:
            result.append(sentences)
    return result


def sentence_labels_for(args: AnnotateArguments, judge_kind: str, records: list[InputRecord],
                        sentences: list[list[Sentence]], problems: Problems) -> tuple[list[Optional[list[int]]], dict]:
    """Sentence labels per record from the chosen judge, and the judge's description for the card."""
    texts = [[s.text for s in sents] for sents in sentences]
    if judge_kind == "given":
        return [list(r.sentence_labels) for r in records], {"kind": "given"}
    if judge_kind == "propagate":
        return ([propagate_labels(t, bool(r.label), args.refusal_rule) for r, t in zip(records, texts)],
                {"kind": "propagate", "refusal_rule": args.refusal_rule})
    target = args.judge.split(":", 1)[1]
    items = [(r.prompt, t) for r, t in zip(records, texts)]
    if judge_kind == "scm":
        from utils.annotation.judges import scm_sentence_scores

        scores, default_theta = scm_sentence_scores(target, items, args.judge_aggregate, args.judge_batch_size,
                                                    args.judge_device)
        theta = default_theta if args.judge_theta is None else args.judge_theta
        labels: list[Optional[list[int]]] = []
        for record, result in zip(records, scores):
            if isinstance(result, Exception):
                problems.add(f"{record.where}: scm judge: {result}")
                labels.append(None)
            else:
                labels.append([int(score >= theta) for score in result])
                record.extra["sentence_scores"] = [round(score, 6) for score in result]
        return labels, {"kind": "scm", "checkpoint": target, "theta": theta, "aggregate": args.judge_aggregate}
    from utils.annotation.judges import make_openai_judge, openai_judge_all

    judge = make_openai_judge(target, args.judge_model, args.judge_api_key_env, args.judge_timeout,
                              args.judge_retries)
    labels = []
    for record, result in zip(records, openai_judge_all(judge, items, args.judge_workers, args.show_progress)):
        if isinstance(result, Exception):
            problems.add(f"{record.where}: openai judge: {result}")
            labels.append(None)
        else:
            labels.append(result)
    return labels, {"kind": "openai", "url": judge.url, "model": judge.model}


def consistency_reason(response_label: Optional[int], labels: Sequence[int], judge_kind: str) -> Optional[str]:
    """Why a response fails FineHarm's consistency rule, or None when it passes (or has no response label)."""
    if response_label is None:
        return None
    if response_label == 1 and not any(labels):
        return DROP_ALL_REFUSAL if judge_kind == "propagate" else DROP_NO_HARMFUL
    if response_label == 0 and any(labels):
        return DROP_HARMFUL_IN_BENIGN
    return None


def fineharm_record(record: InputRecord, sentences: list[Sentence], labels: list[int], notional_pos: Sequence[str],
                    judge_kind: str) -> dict[str, Any]:
    """The output record in FineHarm's format (plus ``meta``: provenance)."""
    meta: dict[str, Any] = {"source": record.source, "where": record.where, "label_source": judge_kind}
    if record.record_id is not None:
        meta["id"] = record.record_id
    if record.label is not None:
        meta["input_label"] = record.label
    meta.update(record.extra)
    return {
        "prompt": record.prompt,
        "response": record.response,
        "sentences": [s.text for s in sentences],
        "sentence_labels": list(labels),
        "words": [list(s.words) for s in sentences],
        "word_labels": [word_labels(s.pos, bool(label), notional_pos) for s, label in zip(sentences, labels)],
        "meta": meta,
    }


def _split_stats(name: str, records: list[dict]) -> dict[str, Any]:
    return {
        "file": SPLIT_FILES[name],
        "responses": len(records),
        "harmful": sum(int(any(r["sentence_labels"])) for r in records),
        "sentences": sum(len(r["sentences"]) for r in records),
        "harmful_sentences": sum(sum(r["sentence_labels"]) for r in records),
        "words": sum(len(w) for r in records for w in r["words"]),
        "harmful_words": sum(sum(w) for r in records for w in r["word_labels"]),
    }


def main(args: AnnotateArguments) -> dict[str, Any]:
    """Annotate the inputs and publish the output folder (see the module docstring).

    Args:
        args: see :class:`AnnotateArguments`.

    Returns:
        The facts written to ``annotation.json``.

    Raises:
        AnnotationError: bad records under ``--on-error fail`` (all listed), or too few records for three splits.
        FileNotFoundError: a missing input. ValueError: flags that do not fit together.
        SpacyModelError: the spaCy model is not installed. FileExistsError: an output folder with foreign files.
    """
    started = time.perf_counter()
    mapping = field_map(args.preset, prompt=args.prompt_field, response=args.response_field, label=args.label_field,
                        messages=args.messages_field, sentences=args.sentences_field,
                        sentence_labels=args.sentence_labels_field, id=args.id_field, split=args.split_field,
                        label_means=args.label_means)
    judge_kind = resolve_judge(args.judge, mapping)
    problems = Problems(args.on_error)

    records, sources = read_inputs(args, mapping, problems)
    problems.check("in the input")
    read_total = len(records) + len(problems.messages)
    duplicates = 0
    if args.dedupe:
        seen: set[tuple[str, str]] = set()
        unique = []
        for record in records:
            key = (record.prompt, record.response)
            if key in seen:
                duplicates += 1
            else:
                seen.add(key)
                unique.append(record)
        records = unique
    if args.limit is not None:
        records = records[: args.limit]

    sentences = sentences_for(args, records, judge_kind, problems)
    problems.check("while splitting sentences")
    usable = [(r, s) for r, s in zip(records, sentences) if s is not None]
    records, sentences = [r for r, _ in usable], [s for _, s in usable]

    labels, judge_facts = sentence_labels_for(args, judge_kind, records, sentences, problems)
    problems.check("while judging sentences")

    dropped: dict[str, int] = {}
    kept: list[tuple[InputRecord, dict]] = []
    for record, sents, sentence_labels in zip(records, sentences, labels):
        if sentence_labels is None:
            continue
        reason = consistency_reason(record.label, sentence_labels, judge_kind) if args.consistency_filter else None
        if reason is not None:
            dropped[reason] = dropped.get(reason, 0) + 1
            continue
        out = fineharm_record(record, sents, sentence_labels, args.notional_pos, judge_kind)
        validate_example(out, len(kept), record.where)  # our own output must be valid FineHarm
        kept.append((record, out))

    own_splits = [record.split for record, _ in kept]
    if args.input_splits == "keep" and kept and all(own_splits):
        assigned, split_rule = own_splits, "the input's own splits"
    else:
        if args.input_splits == "keep" and any(own_splits):
            raise AnnotationError("some records carry a split and some do not; give every record one or pass "
                                  "--input-splits ignore for a fresh split")
        assigned = stratified_split([int(any(out["sentence_labels"])) for _, out in kept], args.split_ratios,
                                    args.seed)
        split_rule = (f"seeded (seed {args.seed}) split stratified by response label, shares "
                      f"{' / '.join(f'{r:g}' for r in args.split_ratios)} (train / val / test)")
    by_split = {name: [out for (_, out), s in zip(kept, assigned) if s == name] for name in SPLITS}
    empty = [name for name, items in by_split.items() if not items]
    if empty:
        raise AnnotationError(f"only {len(kept)} record(s) survived annotation, leaving split(s) {empty} empty; "
                              f"training and evaluation need all three: give more data, or see the counts with "
                              f"--on-error skip (dropped: {dropped or 'none'})")

    nlp = load_spacy(args.spacy_model)
    import transformers

    facts: dict[str, Any] = {
        "format_version": 1,
        "title": args.title,
        "command": command_line(args),
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "preset": args.preset,
        "fields": {name: getattr(mapping, name) for name in ("prompt", "response", "label", "messages", "sentences",
                                                             "sentence_labels", "id", "split")}
        | {"label_means": mapping.label_means},
        "judge": judge_facts,
        "notional_pos": list(args.notional_pos),
        "consistency_filter": args.consistency_filter,
        "has_response_label": any(record.label is not None for record, _ in kept),
        "split_rule": split_rule,
        "sources": sources,
        "counts": {"read": read_total, "problems": len(problems.messages), "duplicates": duplicates,
                   "dropped": dropped, "kept": len(kept)},
        "splits": {name: _split_stats(name, items) for name, items in by_split.items()},
        "problems": problems.messages[:200],
        "versions": {"python": platform.python_version(), **spacy_description(nlp),
                     "transformers": transformers.__version__, "project_commit": _git_commit()},
        "seconds": round(time.perf_counter() - started, 1),
    }
    with staged_output_dir(args.output_dir, OUTPUT_NAMES) as tmp:
        for name, items in by_split.items():
            write_json(tmp / SPLIT_FILES[name], items)
        write_json(tmp / "annotation.json", facts)
        (tmp / "README.md").write_text(render_card(facts), encoding="utf-8")
    summary = ", ".join(f"{name} {len(items)}" for name, items in by_split.items())
    print(f"[annotate] wrote {args.output_dir}: {summary} (kept {len(kept)} of {read_total}; "
          f"{len(problems.messages)} bad, {duplicates} duplicates, {sum(dropped.values())} inconsistent) in "
          f"{facts['seconds']:.1f} s", file=sys.stderr)
    return facts


def parse_args(argv: list[str] | None = None) -> AnnotateArguments:
    """Parse command-line flags; an unknown flag or bad value exits with a message naming the fix.

    Raises:
        SystemExit: on an unknown flag or a bad value.
    """
    from transformers import HfArgumentParser

    from utils.cli import parse_dataclasses

    try:
        (args,) = parse_dataclasses((AnnotateArguments,), argv, prog="python -m utils.annotation.annotate")
    except ValueError as err:
        HfArgumentParser(AnnotateArguments, prog="python -m utils.annotation.annotate").error(f"{err}")
    return args


def run(argv: list[str] | None = None) -> int:
    """Command-line entry: user mistakes end in one clear message (exit 1), never a traceback."""
    from utils.annotation.judges import JudgeError
    from utils.annotation.text import SpacyModelError

    args = parse_args(argv)
    try:
        main(args)
    except (DataFormatError, FileNotFoundError, FileExistsError, ValueError, SpacyModelError, JudgeError,
            OSError) as err:
        print(f"[annotate] error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run())
