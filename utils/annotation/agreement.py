"""How well an annotation reproduces a reference's fine labels: compare two FineHarm-format folders.

Used to check the annotation pipeline (``utils/annotation/annotate.py``) against data labelled by FineHarm's own rule: annotate
the reference's prompts and responses again (e.g. from its response labels, ``--preset fineharm --judge
propagate``) and compare. Records are matched by (prompt, response). Sentences and words are matched by their
character span in the response (each sentence is looked up in the response, each word in its sentence, in order),
so two annotations that segment differently are compared where they coincide and the coverage says how much that
is. Reported per level (sentence, word): agreement, Cohen's kappa, the confusion counts, and per reference class the
share the candidate labels the same (the recall of that class); at response level, how many reference responses the
candidate kept (the rest were dropped by its consistency filter).

Commands::

    python -m utils.annotation.agreement --reference ../shared/data/realmix --candidate /tmp/realmix-re \\
        --output results/annotation/realmix-propagate.json --name "realmix, re-annotated from response labels"

The output holds numbers and the command only, never text from either folder (``.json`` and a ``.md`` table beside
it).
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from utils.data.fineharm import SPLITS, find_split_files, load_split
from utils.io_utils import atomic_write, write_json

Span = tuple[int, int]


def _find_in_order(pieces: Sequence[str], text: str, offset: int = 0) -> list[Optional[Span]]:
    """Character spans of ``pieces`` found one after another in ``text`` (None from the first that is missing)."""
    spans: list[Optional[Span]] = []
    position = 0
    for piece in pieces:
        at = text.find(piece, position) if piece else -1
        if at < 0:
            spans.extend([None] * (len(pieces) - len(spans)))
            break
        spans.append((offset + at, offset + at + len(piece)))
        position = at + len(piece)
    return spans


def labelled_spans(record: dict[str, Any]) -> tuple[dict[Span, int], dict[Span, int]]:
    """``({sentence span: label}, {word span: label})`` of a FineHarm record, spans in response characters."""
    sentences, words = {}, {}
    sentence_spans = _find_in_order(record["sentences"], record["response"])
    for span, text, label, sentence_words, sentence_word_labels in zip(
            sentence_spans, record["sentences"], record["sentence_labels"], record["words"], record["word_labels"]):
        if span is None:
            continue
        sentences[span] = label
        for word_span, word_label in zip(_find_in_order(sentence_words, text, span[0]), sentence_word_labels):
            if word_span is not None:
                words[word_span] = word_label
    return sentences, words


@dataclass
class Tally:
    """Paired 0/1 labels of one level: ``confusion[ref][cand]`` counts and the reference total (aligned or not)."""

    confusion: list[list[int]] = field(default_factory=lambda: [[0, 0], [0, 0]])
    reference_total: int = 0

    def add(self, reference: dict[Span, int], candidate: dict[Span, int]) -> None:
        self.reference_total += len(reference)
        for span, label in reference.items():
            if span in candidate:
                self.confusion[label][candidate[span]] += 1

    def summary(self) -> dict[str, Any]:
        (tn, fp), (fn, tp) = self.confusion
        aligned = tn + fp + fn + tp
        agree = tn + tp
        expected = ((tn + fp) * (tn + fn) + (fn + tp) * (fp + tp)) / aligned ** 2 if aligned else 0.0
        observed = agree / aligned if aligned else 0.0
        kappa = (observed - expected) / (1 - expected) if aligned and expected < 1 else None
        per_class = {}
        for name, row in (("benign", self.confusion[0]), ("harmful", self.confusion[1])):
            n = sum(row)
            same = row[0] if name == "benign" else row[1]
            per_class[name] = {"reference": n, "same": same, "agreement": round(same / n, 6) if n else None}
        return {
            "reference_total": self.reference_total,
            "aligned": aligned,
            "coverage": round(aligned / self.reference_total, 6) if self.reference_total else None,
            "agreement": round(observed, 6) if aligned else None,
            "cohen_kappa": round(kappa, 6) if kappa is not None else None,
            "confusion_reference_by_candidate": [list(row) for row in self.confusion],
            "per_reference_class": per_class,
        }


def _records(folder: str, splits: Iterable[str]) -> list[dict[str, Any]]:
    files = find_split_files(folder, splits)
    return [record for path in files.values() for record in load_split(path)]


def compare(reference: Sequence[dict[str, Any]], candidate: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Agreement of ``candidate`` with ``reference`` (see the module docstring).

    Args:
        reference, candidate: validated FineHarm records.

    Returns:
        ``{"responses": ..., "sentence": ..., "word": ...}`` with counts and rates.
    """
    by_key = {(r["prompt"], r["response"]): r for r in candidate}
    sentences, words = Tally(), Tally()
    kept = {"benign": [0, 0], "harmful": [0, 0]}  # [reference responses, kept by the candidate]
    for record in reference:
        name = "harmful" if any(record["sentence_labels"]) else "benign"
        kept[name][0] += 1
        other = by_key.get((record["prompt"], record["response"]))
        if other is None:
            continue
        kept[name][1] += 1
        ref_sentences, ref_words = labelled_spans(record)
        cand_sentences, cand_words = labelled_spans(other)
        sentences.add(ref_sentences, cand_sentences)
        words.add(ref_words, cand_words)
    responses = {name: {"reference": n, "kept": k, "kept_share": round(k / n, 6) if n else None}
                 for name, (n, k) in kept.items()}
    return {"responses": responses, "candidate_responses": len(candidate),
            "sentence": sentences.summary(), "word": words.summary()}


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def render_markdown(name: str, result: dict[str, Any]) -> str:
    """A small markdown table of one comparison (numbers and the command only)."""
    lines = [f"### {name}", "", "```", result["command"], "```", "",
             "| level | aligned / reference | agreement % | kappa | benign agreement % | harmful agreement % |",
             "| --- | --- | --- | --- | --- | --- |"]
    for level in ("sentence", "word"):
        s = result[level]
        kappa = "-" if s["cohen_kappa"] is None else f"{s['cohen_kappa']:.4f}"
        lines.append(f"| {level} | {s['aligned']:,} / {s['reference_total']:,} | {_pct(s['agreement'])} | {kappa} | "
                     f"{_pct(s['per_reference_class']['benign']['agreement'])} | "
                     f"{_pct(s['per_reference_class']['harmful']['agreement'])} |")
    r = result["responses"]
    lines += ["", f"Responses kept by the candidate: benign {r['benign']['kept']:,} / {r['benign']['reference']:,}, "
                  f"harmful {r['harmful']['kept']:,} / {r['harmful']['reference']:,}."]
    return "\n".join(lines) + "\n"


@dataclass
class AgreementArguments:
    """Arguments of ``python -m utils.annotation.agreement``."""

    reference: str = field(metadata={"help": "FineHarm-format folder with the reference labels."})
    candidate: str = field(metadata={"help": "FineHarm-format folder with the labels to check."})
    output: str = field(metadata={"help": "Result file (.json); a .md table is written beside it."})
    name: str = field(default="agreement", metadata={"help": "Title of the comparison in the .md table."})
    splits: list[str] = field(default_factory=lambda: list(SPLITS), metadata={"help": "Splits to compare."})


def main(args: AgreementArguments, command: Optional[str] = None) -> dict[str, Any]:
    """Compare the folders and write the result files.

    Raises:
        FileNotFoundError, DataFormatError: a folder that is not valid FineHarm format.
    """
    result = {"name": args.name, "command": command or "python -m utils.annotation.agreement "
              + " ".join(shlex.quote(a) for a in ["--reference", args.reference, "--candidate", args.candidate,
                                                  "--output", args.output, "--name", args.name]),
              "splits": list(args.splits),
              **compare(_records(args.reference, args.splits), _records(args.candidate, args.splits))}
    write_json(args.output, result)
    with atomic_write(Path(args.output).with_suffix(".md")) as handle:
        handle.write(render_markdown(args.name, result))
    return result


if __name__ == "__main__":
    from utils.cli import parse_dataclasses

    (parsed,) = parse_dataclasses((AgreementArguments,), prog="python -m utils.annotation.agreement")
    outcome = main(parsed, "python -m utils.annotation.agreement " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    print(render_markdown(parsed.name, outcome))
