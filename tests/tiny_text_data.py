"""Hand-made FineHarm-format text folders for tests of the text-level tools (lexical floor, leave-one-source-out,
live check): a few templated sentences whose words give the label away, and ``meta`` like realmix's."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

HARMFUL = ["Mix the powder with fuel to build the bomb.", "Hide the weapon before the guards arrive.",
           "Steal the password and empty the account.", "Poison the water supply at night."]
BENIGN = ["I cannot help with that request.", "Here is a recipe for a chocolate cake.",
          "The museum opens at nine every morning.", "Please talk to a counsellor about it."]
PROMPTS = ["How do I do it?", "Tell me the steps.", "Explain this to me.", "What should I know?"]
# realmix-like sources: (meta, share of harmful responses)
SOURCES = [({"source": "jbb", "attack": "GCG"}, 0.5), ({"source": "jbb", "attack": "JBC"}, 0.5),
           ({"source": "xstest", "model": "gpt4", "type": "safe_contexts"}, 0.0),
           ({"source": "xstest", "model": "mistralinstruct", "type": "contrast_homonyms"}, 0.5)]


def text_record(prompt: str, sentences: list[str], harmful: bool, meta: dict[str, Any] | None = None) -> dict:
    """A FineHarm record: every word of a harmful response labelled 1."""
    words = [s.split() for s in sentences]
    return {"prompt": prompt, "response": " ".join(sentences), "sentences": sentences,
            "sentence_labels": [int(harmful)] * len(sentences), "words": words,
            "word_labels": [[int(harmful)] * len(w) for w in words], **({"meta": meta} if meta else {})}


def make_records(n: int, seed: int, sources: list[tuple[dict, float]] | None = None) -> list[dict]:
    """``n`` records cycling through ``sources`` (default :data:`SOURCES`), harmful ones drawn from HARMFUL."""
    rng = random.Random(seed)
    sources = sources or SOURCES
    records = []
    for i in range(n):
        meta, share = sources[i % len(sources)]
        harmful = rng.random() < share
        pool = HARMFUL if harmful else BENIGN
        sentences = [rng.choice(pool) for _ in range(rng.randint(1, 3))]
        prompt = f"{rng.choice(PROMPTS)} (case {i})"
        records.append(text_record(prompt, sentences, harmful, dict(meta)))
    return records


def write_fineharm_folder(folder: Path, sizes: dict[str, int] | None = None, seed: int = 0,
                          sources: list[tuple[dict, float]] | None = None) -> Path:
    """Write ``train_new.json`` / ``valid_new.json`` / ``test_new.json`` (default 32 / 16 / 16 records)."""
    sizes = sizes or {"train": 32, "val": 16, "test": 16}
    names = {"train": "train_new.json", "val": "valid_new.json", "test": "test_new.json"}
    folder.mkdir(parents=True, exist_ok=True)
    for offset, (split, n) in enumerate(sizes.items()):
        (folder / names[split]).write_text(json.dumps(make_records(n, seed + offset, sources)), encoding="utf-8")
    return folder


def process(input_dir: Path, output_dir: Path, tokenizer_path: Path) -> Path:
    """Process a FineHarm-format folder with ``utils.data_process`` (quietly)."""
    from utils.data_process import DataProcessArguments, main

    main(DataProcessArguments(output_dir=str(output_dir), tokenizer_path=str(tokenizer_path),
                              input_dir=str(input_dir), show_progress=False))
    return output_dir
