"""Text for the lexical floor (``model/lexical.py``), taken from the processed data the neural monitors read.

The floor never reads the FineHarm JSON: it decodes the processed *response* token ids (``input_ids[response_start:
response_end]``, docs/ARCHITECTURE.md) with the tokenizer the data was processed with (``meta.json``'s
``tokenizer``; ``--tokenizer-path`` overrides it, e.g. when the folder moved), so it judges exactly the responses the
other models judge, truncation included. The prompt is not part of its text: the floor judges the response.

Partial mode scores the prefix ending at every response token: ``decode(response_ids[:i + 1])``. That is what a
lexical monitor reading the stream would see, including a word cut in the middle at the prefix's end (byte-level
BPE may even leave half a UTF-8 character, decoded as U+FFFD, which the word pattern ignores).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

from tqdm import tqdm

from utils.evaluation.scoring import EvalExample, ScoredExample
from utils.data.processed_data import load_meta

# Prefix texts vectorised together: bounds memory (a few MB of text) while keeping scikit-learn's per-call cost small.
PREFIX_CHUNK = 2048


def tokenizer_source(data_dir: str | Path, tokenizer_path: str | None = None) -> str:
    """The tokenizer that decodes ``data_dir``'s ids: ``tokenizer_path`` if given, else ``meta.json``'s.

    Raises:
        FileNotFoundError: neither is given or the recorded folder no longer exists (the message says to pass
            ``--tokenizer-path``).
    """
    if tokenizer_path:
        return tokenizer_path
    recorded = load_meta(data_dir).get("tokenizer")
    if not recorded:
        raise FileNotFoundError(f"{data_dir}/meta.json does not name the tokenizer the data was processed with; pass "
                                f"--tokenizer-path FOLDER (the tokenizer given to scripts/run-data.sh)")
    if not Path(recorded).exists():
        raise FileNotFoundError(f"{data_dir}/meta.json names tokenizer {recorded}, which does not exist here; pass "
                                f"--tokenizer-path FOLDER (the tokenizer given to scripts/run-data.sh)")
    return recorded


def check_tokenizer_fits(tokenizer: Any, data_dir: str | Path, source: str) -> None:
    """Fail when ``tokenizer`` is not the one ``data_dir`` was processed with (another vocabulary size).

    Raises:
        ValueError: naming both sizes and the fix.
    """
    recorded = load_meta(data_dir).get("vocab_size")
    if recorded is not None and recorded != len(tokenizer):
        raise ValueError(f"{data_dir} was processed with a tokenizer of {recorded} entries, but {source} has "
                         f"{len(tokenizer)}; pass the tokenizer given to scripts/run-data.sh as --tokenizer-path")


def response_ids(example: EvalExample) -> list[int]:
    """The response token ids of a prepared example (after any truncation)."""
    return example.input_ids[example.response_start:example.response_end]


def response_text(tokenizer: Any, example: EvalExample) -> str:
    """The decoded response (special tokens skipped: only BOS/EOS/CLS/SEP could be, and they are not text)."""
    return tokenizer.decode(response_ids(example), skip_special_tokens=True)


def prefix_texts(tokenizer: Any, example: EvalExample) -> list[str]:
    """``decode(response_ids[:i + 1])`` for every response token ``i``."""
    ids = response_ids(example)
    return tokenizer.batch_decode([ids[:i + 1] for i in range(len(ids))], skip_special_tokens=True)


def _chunks(items: Sequence[EvalExample], tokenizer: Any, size: int) -> Iterator[tuple[list[tuple[int, int]],
                                                                                       list[str]]]:
    """Prefix texts in chunks of about ``size``: ``([(example index, n prefixes)], texts)`` (whole examples)."""
    owners: list[tuple[int, int]] = []
    texts: list[str] = []
    for index, example in enumerate(items):
        prefixes = prefix_texts(tokenizer, example)
        owners.append((index, len(prefixes)))
        texts.extend(prefixes)
        if len(texts) >= size:
            yield owners, texts
            owners, texts = [], []
    if owners:
        yield owners, texts


def score_lexical(
    detector: Any, tokenizer: Any, examples: Sequence[EvalExample], partial: bool, desc: str = "lexical",
    chunk_size: int = PREFIX_CHUNK,
) -> list[ScoredExample]:
    """Score prepared examples with the lexical floor.

    Args:
        detector: a :class:`model.lexical.LexicalDetector`.
        tokenizer: the tokenizer the data was processed with.
        examples: prepared examples (``utils.evaluation.scoring.prepare_examples``).
        partial: also score every response prefix (``scores["holistic"]``); else only ``full_score``.
        desc: progress-bar label.
        chunk_size: prefix texts vectorised per call.

    Returns:
        One :class:`ScoredExample` per example, in data order; ``full_score`` is the whole response's score.
    """
    full = detector.score([response_text(tokenizer, e) for e in examples])
    if not partial:
        return [ScoredExample(scores={}, full_score=float(s)) for s in full]
    per_prefix: list[list[float]] = [[] for _ in examples]
    with tqdm(total=sum(e.n_response_tokens for e in examples), desc=desc, unit="prefix", file=sys.stderr) as bar:
        for owners, texts in _chunks(examples, tokenizer, chunk_size):
            scores = detector.score(texts).tolist()
            offset = 0
            for index, count in owners:
                per_prefix[index] = scores[offset:offset + count]
                offset += count
            bar.update(len(texts))
    return [ScoredExample(scores={"holistic": s}, full_score=float(f)) for s, f in zip(per_prefix, full)]
