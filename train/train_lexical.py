"""Train the lexical floor: TF-IDF (word n-grams) + logistic regression on the same processed split as the neural
monitors (``model/lexical.py``).

Its text is the decoded processed response (``utils/evaluation/lexical_text.py``): the ids of ``<data-dir>/train.jsonl`` decoded
with the tokenizer the data was processed with (``meta.json``; ``--tokenizer-path`` overrides), so no model sees
other data. The defaults are the settings realmix's README measured its floor with: word 1-2-grams, sublinear tf,
min_df 2, C = 4, balanced classes (scikit-learn's lbfgs solver otherwise). Training takes seconds.

The output folder holds no pickle: ``config.json`` (settings, data, tokenizer, versions), ``vocabulary.json``,
``weights.safetensors`` (idf, coefficients, intercept) and ``training_summary.json`` (arguments, counts, the
validation split's full-response metrics at theta 0.5, time). ``python -m test.test_lexical`` evaluates it.

Commands (``bash scripts/run-lexical.sh ...`` runs the first)::

    python -m train.train_lexical --data-dir scm --output-dir runs/lexical
    python -m train.train_lexical --data-dir .cache/data/realmix-smollm2-TAG --output-dir runs/realmix/cpu/lexical
    python -m train.train_lexical --data-dir DIR --output-dir runs/lexical-13 --ngram-max 3 --C 1 --min-df 3
"""

from __future__ import annotations

import logging
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from model.lexical import FILE_NAMES, LexicalDetector, LexicalSettings
from utils.cli import parse_dataclasses, require_at_least
from utils.io_utils import staged_output_dir, write_json

logger = logging.getLogger("train_lexical")
SCRIPT = "train.train_lexical"
SUMMARY_NAME = "training_summary.json"


@dataclass
class LexicalDataArguments:
    """Where the floor's data comes from and where it goes."""

    data_dir: str = field(metadata={"help": "Processed data folder (train.jsonl [+ val.jsonl]) from run-data.sh."})
    output_dir: str = field(default="runs/lexical", metadata={"help": "Folder for the saved floor (replaced whole)."})
    tokenizer_path: str | None = field(default=None, metadata={
        "help": "Tokenizer that decodes the data's ids (default: the one its meta.json names)."})
    limit_train: int | None = field(default=None, metadata={"help": "Train on the first N training examples."})
    max_length: int = field(default=4096, metadata={"help": "Truncate longer examples from the right (counted), as "
                                                            "the causal monitors' training does by default."})
    validation: bool = field(default=True, metadata={"help": "Report full-response metrics on val.jsonl at theta "
                                                             "0.5 in training_summary.json (skipped when absent)."})
    seed: int = field(default=42, metadata={"help": "Seed for the solver."})


def parse_args(argv: list[str] | None = None) -> tuple[LexicalDataArguments, LexicalSettings]:
    """Parse the command line; an unknown flag is an error that suggests the closest valid one."""
    return parse_dataclasses((LexicalDataArguments, LexicalSettings), argv, prog=f"python -m {SCRIPT}")


def _split_texts(data_dir: str, split: str, tokenizer: Any, max_length: int, limit: int | None
                 ) -> tuple[list[str], list[int], int]:
    from utils.evaluation.scoring import prepare_split
    from utils.evaluation.lexical_text import response_text
    from utils.data.processed_data import check_vocabulary, load_split

    records = load_split(data_dir, split, limit)
    check_vocabulary(records, len(tokenizer), data_dir, "the decoding tokenizer")
    examples = prepare_split(records, data_dir, split, tokenizer, max_length, keep_suffix_on_truncation=False)
    return ([response_text(tokenizer, e) for e in examples], [e.label for e in examples],
            sum(e.truncated for e in examples))


def main(data_args: LexicalDataArguments, settings: LexicalSettings) -> Path:
    """Fit on the training split, save the floor and its summary; returns the output folder.

    Raises:
        ValueError: bad settings, one class only, or a tokenizer that does not fit the data.
        FileNotFoundError / DataFormatError: a missing or malformed data folder.
        FileExistsError: an output folder holding files this command did not write.
    """
    import numpy
    import safetensors
    import sklearn
    import transformers

    from utils.data_process import load_tokenizer
    from utils.evaluation.lexical_text import check_tokenizer_fits, tokenizer_source
    from utils.metrics import classification_report
    from utils.data.processed_data import load_meta

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings.check()
    require_at_least(data_args, 1, "limit_train", hint="or left out")
    require_at_least(data_args, 2, "max_length")
    started = time.perf_counter()
    source = tokenizer_source(data_args.data_dir, data_args.tokenizer_path)
    tokenizer = load_tokenizer(source)
    check_tokenizer_fits(tokenizer, data_args.data_dir, source)
    texts, labels, truncated = _split_texts(data_args.data_dir, "train", tokenizer, data_args.max_length,
                                            data_args.limit_train)
    logger.info("fitting on %d training responses (%d harmful)", len(texts), sum(labels))
    detector = LexicalDetector.fit(texts, labels, settings, seed=data_args.seed)
    fit_seconds = round(time.perf_counter() - started, 2)
    meta = load_meta(data_args.data_dir)
    versions = {"python": platform.python_version(), "scikit-learn": sklearn.__version__,
                "numpy": numpy.__version__, "safetensors": safetensors.__version__,
                "transformers": transformers.__version__}
    detector.info.update({
        "text": {"what": "decoded processed response token ids (prompt excluded)", "skip_special_tokens": True,
                 "tokenizer": source, "tokenizer_class": type(tokenizer).__name__, "vocab_size": len(tokenizer)},
        "data": {"data_dir": data_args.data_dir, "split": "train", "examples": len(texts), "harmful": sum(labels),
                 "truncated": truncated, "max_length": data_args.max_length, "limit_train": data_args.limit_train,
                 "meta": {k: v for k, v in meta.items() if k != "splits"}},
        "defaults": {"theta": 0.5},
        "versions": versions,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
    validation = None
    if data_args.validation and (Path(data_args.data_dir) / "val.jsonl").is_file():
        val_texts, val_labels, _ = _split_texts(data_args.data_dir, "val", tokenizer, data_args.max_length, None)
        predicted = [int(s >= 0.5) for s in detector.score(val_texts)]
        validation = {"split": "val", "theta": 0.5, **classification_report(val_labels, predicted)}
        logger.info("val (full responses, theta 0.5): macro-F1 %.4f", validation["macro_f1"])
    summary = {
        "format_version": 1, "script": SCRIPT, "command": " ".join([f"python -m {SCRIPT}", *sys.argv[1:]]),
        "arguments": {**asdict(data_args), **asdict(settings)},
        "model": {"task": "lexical", "model_type": "scm-lexical", "n_features": len(detector.vocabulary),
                  "fit": detector.info["fit"]},
        "data": detector.info["data"], "validation": validation, "versions": versions,
        "timings": {"fit_seconds": fit_seconds, "total_seconds": round(time.perf_counter() - started, 2)},
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    with staged_output_dir(data_args.output_dir, (*FILE_NAMES, SUMMARY_NAME)) as tmp:
        detector.save_pretrained(tmp)
        write_json(tmp / SUMMARY_NAME, summary)
    logger.info("saved the lexical floor (%d features) to %s in %.1f s", len(detector.vocabulary),
                data_args.output_dir, time.perf_counter() - started)
    return Path(data_args.output_dir)


if __name__ == "__main__":
    main(*parse_args())
