"""FineHarm -> token ids with token labels, the input of every training and evaluation script.

Commands (from the repository root; ``scripts/run-data.sh OUTPUT_DIR TOKENIZER_PATH [flags]`` runs the same)::

    # the paper's three folders, from ./FineHarm
    python -m utils.data_process --output-dir scm --tokenizer-path /path/to/qwen-tokenizer
    python -m utils.data_process --output-dir baseline-modernbert --tokenizer-path /path/to/modernbert-tokenizer

    # any FineHarm-format folder, e.g. the project's own sample (python -m utils.data.sample_data), with the
    # offline Qwen2.5 tokenizer (python -m model.assets prints its folder)
    python -m utils.data_process --output-dir /tmp/sample-qwen \\
        --tokenizer-path .cache/assets/qwen2.5-tokenizer --input-dir .cache/fineharm-sample

    # a quick run: 50 examples of the test split only, two worker processes
    python -m utils.data_process --output-dir /tmp/q --tokenizer-path PATH --splits test --limit 50 --num-workers 2

    # several FineHarm-format folders in one output, e.g. FineHarm plus your own annotated data
    # (python -m utils.annotation.annotate) counted twice in training: validation and test are concatenated unweighted
    python -m utils.data_process --output-dir scm-mixed --tokenizer-path PATH \\
        --input-dir FineHarm my-annotated-data --source-weights 1 2

Per example the ids are ``[BOS] + tokens(prompt + "\\n\\n") + for each sentence: tokens(sentence) + tokens("\\n") +
[EOS]``, every piece encoded on its own as plain text (a string such as ``<|im_end|>`` in a prompt or response is
encoded as ordinary text, never as a control token: ``utils/text_encoding.py``). BOS falls back to CLS and EOS to
SEP; either is left out when the tokenizer has neither (Qwen2.5 base has no BOS; a WordPiece tokenizer encodes "\\n"
to nothing, so there is then no newline token). Labels: -100 for BOS, prompt and EOS; a sentence token is 1 when any
word aligned to it is harmful, 0 when it aligns only to benign words, -100 when it aligns to no word; newline tokens
are 0. Words are aligned to tokens with ``spacy_alignments.get_alignments(words, [tokenizer.decode([t]) ...])``, a
character-level alignment that ignores whitespace, case and accents.

Output (docs/ARCHITECTURE.md): ``train.jsonl``, ``val.jsonl``, ``test.jsonl`` (``id``, ``input_ids``,
``token_labels``, ``sequence_labels``, ``response_start``, and ``source``, the index of the input folder, when there
are several) and ``meta.json`` (``sources``: each folder with its weight and the examples read and used per split;
mixing rules in ``utils/data/processed_data.py``). All input is validated before
anything is written; the files are written into a temporary sibling folder that replaces OUTPUT_DIR only when
complete, so an interrupted or failed run leaves OUTPUT_DIR as it was.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

import spacy_alignments
from tqdm.auto import tqdm

from utils.data.fineharm import SPLITS, harm_category, has_categories, load_fineharm, response_label
from utils.io_utils import REPO_ROOT, staged_output_dir, write_json, write_jsonl
from utils.data.processed_data import check_weights, mix_sources
from utils.text_encoding import cut_prompt, encode_texts

FORMAT_VERSION = 1
IGNORE_INDEX = -100
PROMPT_SEPARATOR = "\n\n"
SENTENCE_SEPARATOR = "\n"
OUTPUT_NAMES = frozenset({f"{name}.jsonl" for name in SPLITS} | {"meta.json"})
# Examples per tokenizer call: large enough for the Rust tokenizer's batching to pay off, small enough that the
# progress bar moves and a worker's reply stays small.
CHUNK_SIZE = 64


class TokenizerLoadError(RuntimeError):
    """The tokenizer path does not load; the message names the path and what to pass instead."""


# ----------------------------------------------------------------------------------------------------- tokenizer


def load_tokenizer(path: str | os.PathLike):
    """Load a Hugging Face tokenizer from a folder (or a hub id where the hub is reachable).

    Args:
        path: folder with tokenizer files (``tokenizer.json`` or ``vocab.json``/``merges.txt``/``vocab.txt`` and
            ``tokenizer_config.json``).

    Returns:
        The tokenizer.

    Raises:
        TokenizerLoadError: naming the path and the underlying cause.
    """
    from transformers import AutoTokenizer  # imported here so that the rest of the module loads in milliseconds

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except Exception as err:  # noqa: BLE001 - every loader failure becomes one clear message
        cause = str(err).splitlines()[0] if str(err) else ""
        raise TokenizerLoadError(
            f"could not load a tokenizer from {str(path)!r} ({type(err).__name__}: {cause}); "
            f"pass a folder holding the tokenizer files of the model you will train, e.g. the output of "
            f"`python -m model.assets` (offline) or a saved model folder"
        ) from err
    if len(tokenizer) == 0:
        raise TokenizerLoadError(f"the tokenizer loaded from {str(path)!r} has an empty vocabulary; check its files")
    return tokenizer


def boundary_token_ids(tokenizer) -> tuple[Optional[int], Optional[int]]:
    """The ids put around every example: BOS (else CLS) first and EOS (else SEP) last, ``None`` where absent.

    Args:
        tokenizer: a Hugging Face tokenizer.

    Returns:
        ``(start_id, end_id)``.
    """
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    end = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    return start, end


# ------------------------------------------------------------------------------------------------------ labelling


def sentence_token_labels(words: Sequence[str], word_labels: Sequence[int], pieces: Sequence[str]) -> list[int]:
    """Label the tokens of one sentence from its word labels.

    Args:
        words: the sentence's words.
        word_labels: 0/1 per word.
        pieces: the decoded text of each token of the sentence (``tokenizer.decode([id])``).

    Returns:
        Per token: 1 if any aligned word is harmful, 0 if it aligns only to benign words, -100 if it aligns to no
        word (whitespace, a byte fragment of a split character, text missing from ``words``).
    """
    # get_alignments returns (words -> token indices, tokens -> word indices); we need the second.
    _, token_to_words = spacy_alignments.get_alignments(list(words), list(pieces))
    labels = []
    for aligned in token_to_words:
        if not aligned:
            labels.append(IGNORE_INDEX)
        else:
            labels.append(int(any(word_labels[w] == 1 for w in aligned)))
    return labels


class ExampleEncoder:
    """Turns validated FineHarm records into ``input_ids``/``token_labels`` for one tokenizer.

    Holds what is the same for every example (boundary ids, the ids of "\\n") and a lazily filled cache of
    single-token decodes: ``decode([id])`` is a pure function of the id, and a split decodes the same few thousand
    ids hundreds of thousands of times.

    Args:
        tokenizer: a Hugging Face tokenizer.
        max_prompt_tokens: keep only the last N tokens of ``prompt + "\n\n"`` (None keeps all). Long jailbreak
            templates otherwise dominate the sequence length; cutting their start keeps every response token, which
            plain right truncation at training time would lose. Used for reduced-budget (CPU) runs. 0 keeps no
            prompt token: the monitor judges the response alone (after BOS, which must exist so that every
            sequence has a first position before the response), as the lexical floor does.

    Raises:
        ValueError: ``max_prompt_tokens`` is 0 and the tokenizer has neither a BOS nor a CLS token.
    """

    def __init__(self, tokenizer, max_prompt_tokens: Optional[int] = None):
        self.tokenizer = tokenizer
        self.max_prompt_tokens = max_prompt_tokens
        self.start_id, self.end_id = boundary_token_ids(tokenizer)
        if max_prompt_tokens == 0 and self.start_id is None:
            raise ValueError(f"--max-prompt-tokens 0 (response only) needs a tokenizer with a BOS or CLS token to "
                             f"start each sequence; {type(tokenizer).__name__} has neither: keep at least 1 prompt "
                             f"token")
        self.newline_ids = self._encode([SENTENCE_SEPARATOR])[0]
        self._pieces: dict[int, str] = {}

    def _encode(self, texts: list[str]) -> list[list[int]]:
        # As plain text: a response that mentions "<|im_end|>" is words, never the control token (the streaming
        # runtime encodes prompts and responses the same way; see utils/text_encoding.py).
        return encode_texts(self.tokenizer, texts)

    def _piece(self, token_id: int) -> str:
        piece = self._pieces.get(token_id)
        if piece is None:
            piece = self._pieces[token_id] = self.tokenizer.decode([token_id])
        return piece

    def layouts(self, items: Sequence[tuple[str, Sequence[str]]]) -> list["Layout"]:
        """Token ids of several ``(prompt, sentences)`` pairs in the project's layout, with every sentence's span.

        One tokenizer call covers all texts. The layout is the paper's: ``[BOS] + tokens(prompt + "\\n\\n") + for
        each sentence: tokens(sentence) + tokens("\\n") + [EOS]``, every piece encoded on its own.

        Args:
            items: ``(prompt, sentences)`` per example.

        Returns:
            One :class:`Layout` per item.
        """
        texts: list[str] = []
        for prompt, sentences in items:
            texts.append(prompt + PROMPT_SEPARATOR)
            texts.extend(sentences)
        encoded = iter(self._encode(texts))

        layouts = []
        for _, sentences in items:
            input_ids: list[int] = [self.start_id] if self.start_id is not None else []
            prompt_ids = next(encoded)
            prompt_ids = cut_prompt(prompt_ids, self.max_prompt_tokens)
            input_ids.extend(prompt_ids)
            response_start = len(input_ids)
            spans = []
            for _ in sentences:
                sentence_ids = next(encoded)
                spans.append((len(input_ids), len(input_ids) + len(sentence_ids)))
                input_ids.extend(sentence_ids)
                input_ids.extend(self.newline_ids)
            if self.end_id is not None:
                input_ids.append(self.end_id)
            layouts.append(Layout(input_ids, response_start, spans))
        return layouts

    def encode_examples(self, examples: Sequence[dict]) -> list[dict]:
        """Encode and label several records (one tokenizer call for all their texts).

        Args:
            examples: validated FineHarm records.

        Returns:
            Per record ``{"input_ids", "token_labels", "sequence_labels", "response_start"}``, plus ``category``
            (the harm category or None) when the input records carry ``meta.category``.
        """
        layouts = self.layouts([(example["prompt"], example["sentences"]) for example in examples])
        results = []
        for example, layout in zip(examples, layouts):
            ids = layout.input_ids
            # Everything outside a sentence is unlabelled (BOS, prompt, EOS) except the newline after each sentence.
            labels = [IGNORE_INDEX] * len(ids)
            for (begin, end), words, word_labels in zip(layout.sentence_spans, example["words"],
                                                        example["word_labels"]):
                pieces = [self._piece(token_id) for token_id in ids[begin:end]]
                labels[begin:end] = sentence_token_labels(words, word_labels, pieces)
                labels[end : end + len(self.newline_ids)] = [0] * len(self.newline_ids)
            record = {
                "input_ids": ids,
                "token_labels": labels,
                "sequence_labels": response_label(example),
                "response_start": layout.response_start,
            }
            if has_categories(example):  # data labelled with harm categories (realmix2); FineHarm has none
                record["category"] = harm_category(example)
            results.append(record)
        return results


@dataclass
class Layout:
    """One example's token ids in the project's layout.

    Attributes:
        input_ids: ``[BOS?] + prompt + "\\n\\n" + (sentence + "\\n")* + [EOS?]``.
        response_start: index of the first response token.
        sentence_spans: ``(begin, end)`` of each sentence's own tokens (its newline excluded).
    """

    input_ids: list[int]
    response_start: int
    sentence_spans: list[tuple[int, int]]


# ------------------------------------------------------------------------------------------------ worker processes

_WORKER_ENCODER: ExampleEncoder | None = None


def _init_worker(tokenizer_path: str, max_prompt_tokens: Optional[int] = None) -> None:
    global _WORKER_ENCODER
    _WORKER_ENCODER = ExampleEncoder(load_tokenizer(tokenizer_path), max_prompt_tokens)


def _encode_in_worker(examples: list[dict]) -> list[dict]:
    assert _WORKER_ENCODER is not None, "worker used before _init_worker"
    return _WORKER_ENCODER.encode_examples(examples)


def _chunks(items: Sequence[dict], size: int) -> Iterator[list[dict]]:
    for begin in range(0, len(items), size):
        yield list(items[begin : begin + size])


def iter_processed(
    split: str,
    examples: Sequence[dict],
    encoder: ExampleEncoder,
    pool: Any = None,
    show_progress: bool = True,
) -> Iterator[dict]:
    """Yield the output records of one split in input order.

    Args:
        split: split name, used in the ids (``"<split>-<index:05d>"``).
        examples: validated FineHarm records.
        encoder: the encoder for the chosen tokenizer (used when ``pool`` is None).
        pool: optional ``multiprocessing`` pool whose workers were started with :func:`_init_worker`.
        show_progress: draw a tqdm bar on stderr.

    Yields:
        ``{"id", "input_ids", "token_labels", "sequence_labels", "response_start"}``.
    """
    chunks = _chunks(examples, CHUNK_SIZE)
    batches = pool.imap(_encode_in_worker, chunks) if pool is not None else map(encoder.encode_examples, chunks)
    with tqdm(total=len(examples), desc=f"tokenising {split}", unit="ex", disable=not show_progress) as bar:
        index = 0
        for batch in batches:
            for record in batch:
                yield {"id": f"{split}-{index:05d}", **record}
                index += 1
            bar.update(len(batch))


# ------------------------------------------------------------------------------------------------- output folder


# ---------------------------------------------------------------------------------------------------------- CLI


@dataclass
class DataProcessArguments:
    """Arguments of ``python -m utils.data_process`` (each field is one ``--flag``)."""

    output_dir: str = field(
        metadata={"help": "Folder to write train.jsonl/val.jsonl/test.jsonl and meta.json into (replaced as a whole); "
                  "training reads it with --data-dir. The seed calls it scm, baseline-qwen or baseline-modernbert."}
    )
    tokenizer_path: str = field(
        metadata={"help": "Folder with the tokenizer of the model to be trained (Qwen for SCM and the Qwen baseline, "
                  "the encoder's for the encoder baseline)."}
    )
    input_dir: list[str] = field(
        default_factory=lambda: [str(REPO_ROOT / "FineHarm")],
        metadata={"help": "FineHarm-format folder(s) with train_new.json, valid_new.json and test_new.json "
                  "(default: the project's FineHarm/ folder; see FineHarm/README.md). Several folders are mixed "
                  "into one output (see --source-weights)."},
    )
    source_weights: Optional[list[float]] = field(
        default=None,
        metadata={"help": "One weight per --input-dir folder for the training split (2 = every example twice, "
                  "0.5 = a seeded random half); default 1 each. Validation and test are concatenated unweighted."},
    )
    mix_seed: int = field(default=42, metadata={"help": "Seed of the weighted subsampling of training examples."})
    splits: list[str] = field(
        default_factory=lambda: list(SPLITS),
        metadata={"help": "Splits to process.", "choices": list(SPLITS)},
    )
    limit: Optional[int] = field(
        default=None,
        metadata={"help": "Process only the first N examples of each split (quick runs); all are still validated."},
    )
    num_workers: int = field(
        default=1,
        metadata={"help": "Worker processes for tokenisation (each loads the tokenizer); 1 = in this process."},
    )
    show_progress: bool = field(default=True, metadata={"help": "Show a progress bar per split."})
    max_prompt_tokens: Optional[int] = field(
        default=None,
        metadata={"help": "Keep only the last N tokens of each prompt (+ its \\n\\n separator); for reduced-budget "
                  "runs on long jailbreak prompts; 0 keeps none (the response alone, after BOS). Default: keep the "
                  "whole prompt, as the paper does. Training records it in the checkpoint, and the streaming "
                  "runtime cuts prompts the same way."},
    )

    def __post_init__(self) -> None:
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 0:
            raise ValueError(f"--max-prompt-tokens must be 0 (no prompt) or more, got {self.max_prompt_tokens}; omit "
                             f"it to keep whole prompts")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be a positive number of examples, got {self.limit}; omit it for all")
        if self.num_workers < 1:
            raise ValueError(f"--num-workers must be at least 1, got {self.num_workers}")
        if not self.splits:
            raise ValueError(f"--splits needs at least one of {list(SPLITS)}")
        unknown = [name for name in self.splits if name not in SPLITS]
        if unknown:
            raise ValueError(f"--splits got unknown split(s) {unknown}; choose from {list(SPLITS)}")
        if len(set(self.splits)) != len(self.splits):
            raise ValueError(f"--splits lists a split twice: {self.splits}")
        if isinstance(self.input_dir, (str, os.PathLike)):
            self.input_dir = [str(self.input_dir)]
        if not self.input_dir:
            raise ValueError("--input-dir needs at least one FineHarm-format folder")
        if len(set(self.input_dir)) != len(self.input_dir):
            raise ValueError(f"--input-dir lists a folder twice ({self.input_dir}); use --source-weights to weigh "
                             f"a folder up")
        self.source_weights = check_weights(self.source_weights, len(self.input_dir), "--source-weights")


def _describe_path(path: str) -> str:
    return str(Path(path).resolve()) if Path(path).exists() else path


def build_meta(
    args: DataProcessArguments, tokenizer, encoder: ExampleEncoder, split_stats: dict, sources: list[dict]
) -> dict:
    """The ``meta.json`` of a processed folder (docs/ARCHITECTURE.md), so consumers need not guess.

    Args:
        args: the run's arguments.
        tokenizer: the tokenizer used.
        encoder: its encoder (boundary and newline ids).
        split_stats: ``{split: {"examples", "harmful", "tokens", ...}}``.
        sources: per input folder: path, weight, ``{split: {"read", "used"}}``.

    Returns:
        The metadata dictionary.
    """
    return {
        "format_version": FORMAT_VERSION,
        "tokenizer": _describe_path(args.tokenizer_path),
        "tokenizer_class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        # The ids actually put around each example (BOS else CLS, EOS else SEP), and whether they were.
        "start_token_id": encoder.start_id,
        "end_token_id": encoder.end_id,
        "bos_prepended": encoder.start_id is not None,
        "eos_appended": encoder.end_id is not None,
        "newline_token_ids": list(encoder.newline_ids),
        "prompt_separator": PROMPT_SEPARATOR,
        # Added-token strings in the text were encoded as ordinary text (utils/text_encoding.py), as the streaming
        # runtime encodes prompts and responses.
        "text_encoding": "plain",
        # One folder: its path, as before; several: the list (details under "sources").
        "source": _describe_path(args.input_dir[0]) if len(args.input_dir) == 1
        else [_describe_path(d) for d in args.input_dir],
        "sources": sources,
        "mix_seed": args.mix_seed,
        "limit": args.limit,
        "max_prompt_tokens": args.max_prompt_tokens,
        "splits": split_stats,
    }


def _count(records: Iterable[dict], stats: dict) -> Iterator[dict]:
    """Pass records through while tallying the per-split statistics of meta.json."""
    for record in records:
        labels = record["token_labels"][record["response_start"] :]
        stats["examples"] += 1
        stats["harmful"] += record["sequence_labels"]
        stats["tokens"] += len(record["input_ids"])
        stats["labelled_response_tokens"] += sum(1 for label in labels if label != IGNORE_INDEX)
        stats["harmful_tokens"] += sum(1 for label in labels if label == 1)
        if "category" in record and record["category"] is not None:  # harmful records per category (realmix2)
            counts = stats.setdefault("categories", {})
            counts[record["category"]] = counts.get(record["category"], 0) + 1
        yield record


def main(args: DataProcessArguments) -> dict:
    """Validate the input, tokenise and label every requested split, and publish the output folder.

    Args:
        args: see :class:`DataProcessArguments`.

    Returns:
        The ``meta.json`` content.

    Raises:
        FileNotFoundError, DataFormatError: bad input (nothing is written).
        TokenizerLoadError: the tokenizer does not load (nothing is written).
        FileExistsError: the output folder holds files this command did not write.
    """
    started = time.perf_counter()
    # Everything that can fail because of the user's input fails here, before any output exists.
    data = [load_fineharm(folder, args.splits) for folder in args.input_dir]
    tokenizer = load_tokenizer(args.tokenizer_path)
    encoder = ExampleEncoder(tokenizer, args.max_prompt_tokens)
    split_stats: dict[str, dict] = {}
    sources = [{"path": _describe_path(folder), "weight": weight, "splits": {}}
               for folder, weight in zip(args.input_dir, args.source_weights)]
    pool = None
    if args.num_workers > 1:
        # spawn, not fork: the parent's Rust tokenizer may already run threads, which fork would break.
        context = multiprocessing.get_context("spawn")
        pool = context.Pool(args.num_workers, initializer=_init_worker,
                            initargs=(args.tokenizer_path, args.max_prompt_tokens))
    try:
        with staged_output_dir(args.output_dir, OUTPUT_NAMES) as tmp:
            for split in args.splits:
                parts = [source[split][: args.limit] if args.limit is not None else source[split] for source in data]
                # Weights scale the training split only; evaluation splits keep every source as it is.
                weights = args.source_weights if split == "train" else [1.0] * len(parts)
                examples, origin, used = mix_sources(parts, weights, args.mix_seed)
                for source, part, count in zip(sources, parts, used):
                    source["splits"][split] = {"read": len(part), "used": count}
                stats = split_stats[split] = dict.fromkeys(
                    ("examples", "harmful", "tokens", "labelled_response_tokens", "harmful_tokens"), 0
                )
                records = iter_processed(split, examples, encoder, pool, args.show_progress)
                if len(data) > 1:
                    records = ({**record, "source": index} for record, index in zip(records, origin))
                write_jsonl(tmp / f"{split}.jsonl", _count(records, stats))
            meta = build_meta(args, tokenizer, encoder, split_stats, sources)
            write_json(tmp / "meta.json", meta)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    seconds = time.perf_counter() - started
    summary = ", ".join(f"{name} {s['examples']} ({s['harmful']} harmful)" for name, s in split_stats.items())
    print(f"[data_process] wrote {args.output_dir}: {summary} in {seconds:.1f} s", file=sys.stderr)
    return meta


def parse_args(argv: list[str] | None = None) -> DataProcessArguments:
    """Parse command-line flags (``--output-dir`` and ``--output_dir`` both work).

    Args:
        argv: the flags; ``None`` reads ``sys.argv``.

    Returns:
        The arguments.

    Raises:
        SystemExit: on an unknown flag or a bad value, with a message naming the fix.
    """
    from transformers import HfArgumentParser

    parser = HfArgumentParser(DataProcessArguments, description=__doc__.splitlines()[0])
    try:
        (args,) = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as err:
        parser.error(f"{err}. Run `python -m utils.data_process --help` for the valid flags.")
    return args


if __name__ == "__main__":
    main(parse_args())
