"""Tests for utils/data_process.py against labels worked out by hand, for each kind of tokenizer the project meets:
Qwen2.5's byte-level BPE (no BOS, EOS appended), SmolLM2's (BOS <|im_start|>, EOS <|im_end|>), a WordPiece one
(MiniLM: "\\n" encodes to nothing, CLS/SEP) and a ModernBERT-style BPE with [CLS]/[SEP]."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from utils import data_process
from model.assets import minilm_path, qwen_tokenizer_path, smollm2_path
from utils.data_process import (
    DataProcessArguments,
    ExampleEncoder,
    TokenizerLoadError,
    boundary_token_ids,
    load_tokenizer,
    main,
    parse_args,
    sentence_token_labels,
)
from utils.data.fineharm import SPLIT_FILES
from utils.io_utils import DataFormatError, read_json, read_jsonl, staged_output_dir

X = -100  # short for the ignore label in the expected lists below

# One example used against every tokenizer. Sentence 2 has the interesting cases: a word cut into several tokens
# ("Steal", "unguarded"), a double space that byte-level BPE turns into a bare " " token (aligned to no word ->
# -100), and "):" which is one BPE token covering a harmful ")" and a benign ":" (any harmful word -> 1).
EXAMPLE = {
    "prompt": "Hi",
    "response": "Sure, here it is. Steal  the unguarded car):",
    "sentences": ["Sure, here it is.", "Steal  the unguarded car):"],
    "sentence_labels": [0, 1],
    "words": [["Sure", ",", "here", "it", "is", "."], ["Steal", "the", "unguarded", "car", ")", ":"]],
    "word_labels": [[0, 0, 0, 0, 0, 0], [1, 0, 1, 1, 1, 0]],
}


def write_fineharm(folder: Path, records: list[dict] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in SPLIT_FILES.values():
        (folder / name).write_text(json.dumps(records if records is not None else [EXAMPLE]))
    return folder


@pytest.fixture(scope="module")
def qwen():
    return AutoTokenizer.from_pretrained(qwen_tokenizer_path())


@pytest.fixture(scope="module")
def minilm():
    return AutoTokenizer.from_pretrained(minilm_path())


@pytest.fixture(scope="module")
def modernbert_style(tmp_path_factory):
    """A byte-level BPE with [CLS]/[SEP] and no BOS/EOS, like ModernBERT's, built offline with a tiny vocabulary:
    ids 0-4 are the special tokens, 5-260 the 256 byte symbols in sorted order, then one id per merge."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {token: i for i, token in enumerate(specials + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    merges = [("Ġ", "t"), ("Ġt", "h"), ("Ġth", "e"), ("Ġ", "c"), ("Ġc", "a"), ("Ġca", "r"), (")", ":"), ("Ċ", "Ċ")]
    for left, right in merges:
        vocab[left + right] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    wrapped = PreTrainedTokenizerFast(tokenizer_object=backend, cls_token="[CLS]", sep_token="[SEP]",
                                      pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]")
    folder = tmp_path_factory.mktemp("modernbert-style-tokenizer")
    wrapped.save_pretrained(folder)
    return folder, vocab


# --------------------------------------------------------------------------------------------------- alignment


def test_alignment_direction_is_tokens_to_words():
    # One word, three tokens: the token->word side has three entries. Reading the other side of get_alignments
    # (word->tokens) would give one entry and fail here.
    assert sentence_token_labels(["abc"], [1], ["a", "b", "c"]) == [1, 1, 1]
    assert sentence_token_labels(["ab", "cd"], [0, 1], ["a", "bc", "d"]) == [0, 1, 1]


def test_token_covering_words_is_harmful_if_any_word_is():
    assert sentence_token_labels([")", ":"], [1, 0], ["):"]) == [1]
    assert sentence_token_labels([")", ":"], [0, 0], ["):"]) == [0]


def test_unaligned_tokens_get_ignore_label():
    # whitespace, a replacement character from a split multi-byte symbol, and text missing from the words
    assert sentence_token_labels(["go", "home"], [1, 1], ["go", " ", "\ufffd", " home", " now"]) == [1, X, X, 1, X]


def test_alignment_ignores_case_and_accents_and_wordpiece_markers():
    assert sentence_token_labels(["Café", "running"], [1, 0], ["cafe", "run", "##ning"]) == [1, 0, 0]


# ------------------------------------------------------------------------------------------ hand-computed examples


def test_qwen_ids_and_labels_match_hand_computation(qwen):
    # Expected pieces (byte-level BPE, Ġ = space, Ċ = newline), ids from Qwen's vocab.json:
    #   prompt "Hi\n\n"  -> Hi 13048, ĊĊ 271                                          labels -100, -100
    #   "Sure, here it is." -> Sure 39814 , 11 Ġhere 1588 Ġit 432 Ġis 374 . 13           all benign words -> 0
    #   "\n" -> Ċ 198                                                                    newline -> 0
    #   "Steal  the unguarded car):" -> Ste 20903 al 278 (Steal=1) Ġ 220 (no word) Ġthe 279 (0)
    #                                   Ġun 650 guarded 96303 (unguarded=1) Ġcar 1803 (1) ): 1648 ()=1, :=0 -> 1)
    #   "\n" -> Ċ 198 (0), then EOS <|endoftext|> 151643 (-100); no BOS in Qwen2.5 base.
    assert qwen.convert_ids_to_tokens([20903, 278, 220, 279, 650, 96303, 1803, 1648]) == [
        "Ste", "al", "Ġ", "Ġthe", "Ġun", "guarded", "Ġcar", "):"]
    (record,) = ExampleEncoder(qwen).encode_examples([EXAMPLE])
    assert record == {
        "input_ids": [13048, 271, 39814, 11, 1588, 432, 374, 13, 198,
                      20903, 278, 220, 279, 650, 96303, 1803, 1648, 198, 151643],
        "token_labels": [X, X, 0, 0, 0, 0, 0, 0, 0,
                         1, 1, X, 0, 1, 1, 1, 1, 0, X],
        "sequence_labels": 1,
        "response_start": 2,
    }


def test_smollm2_prepends_bos_and_appends_eos(smollm2_tokenizer):
    # SmolLM2: bos <|im_start|> = 1, eos <|im_end|> = 2; its BPE splits "unguarded" as Ġun gu arded.
    (record,) = ExampleEncoder(smollm2_tokenizer).encode_examples([EXAMPLE])
    assert record["input_ids"] == [1, 26843, 1116, 34355, 28, 1535, 357, 314, 30, 198,
                                   16949, 272, 216, 260, 551, 6058, 11969, 1076, 727, 198, 2]
    assert record["token_labels"] == [X, X, X, 0, 0, 0, 0, 0, 0, 0,
                                      1, 1, X, 0, 1, 1, 1, 1, 1, 0, X]
    assert record["response_start"] == 3


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    return AutoTokenizer.from_pretrained(smollm2_path())


def test_wordpiece_has_no_newline_token_and_uses_cls_sep(minilm):
    # MiniLM lower-cases; "\n" encodes to nothing, so no newline tokens; [CLS] 101 first, [SEP] 102 last.
    #   "Hi\n\n" -> hi 7632;  "Sure, here it is." -> sure 2469 , 1010 here 2182 it 2009 is 2003 . 1012
    #   "Steal  the unguarded car):" -> steal 8954 (1) the 1996 (0) un 4895 ##guard 18405 ##ed 2098 (unguarded: 1)
    #                                   car 2482 (1) ) 1007 (1) : 1024 (0)     -- the double space vanishes
    assert minilm.encode("\n", add_special_tokens=False) == []
    (record,) = ExampleEncoder(minilm).encode_examples([EXAMPLE])
    assert record == {
        "input_ids": [101, 7632, 2469, 1010, 2182, 2009, 2003, 1012,
                      8954, 1996, 4895, 18405, 2098, 2482, 1007, 1024, 102],
        "token_labels": [X, X, 0, 0, 0, 0, 0, 0,
                         1, 0, 1, 1, 1, 1, 1, 0, X],
        "sequence_labels": 1,
        "response_start": 2,
    }


def test_modernbert_style_bpe_with_cls_sep(modernbert_style):
    folder, vocab = modernbert_style
    tokenizer = load_tokenizer(folder)
    assert boundary_token_ids(tokenizer) == (2, 3)  # no BOS/EOS: CLS and SEP instead
    # "Hi\n\n" -> H i ĊĊ; words without merges fall apart into bytes (S t e a l); a space with no merge after it is
    # a bare Ġ token, which aligns to no word (-100); Ġthe, Ġcar and ): are merged.
    pieces = (["[CLS]", "H", "i", "ĊĊ"]
              + ["S", "u", "r", "e", ",", "Ġ", "h", "e", "r", "e", "Ġ", "i", "t", "Ġ", "i", "s", ".", "Ċ"]
              + ["S", "t", "e", "a", "l", "Ġ", "Ġthe", "Ġ"]
              + ["u", "n", "g", "u", "a", "r", "d", "e", "d", "Ġcar", "):", "Ċ"]
              + ["[SEP]"])
    expected_labels = ([X, X, X, X]
                       + [0, 0, 0, 0, 0, X, 0, 0, 0, 0, X, 0, 0, X, 0, 0, 0, 0]
                       + [1, 1, 1, 1, 1, X, 0, X] + [1] * 9 + [1, 1, 0]
                       + [X])
    (record,) = ExampleEncoder(tokenizer).encode_examples([EXAMPLE])
    assert record["input_ids"] == [vocab[p] for p in pieces]
    assert record["token_labels"] == expected_labels
    assert record["response_start"] == 4


def test_benign_example_and_boundary_ids(qwen):
    benign = dict(EXAMPLE, sentence_labels=[0, 0], word_labels=[[0] * 6, [0] * 6])
    (record,) = ExampleEncoder(qwen).encode_examples([benign])
    assert record["sequence_labels"] == 0
    assert 1 not in record["token_labels"]
    assert boundary_token_ids(qwen) == (None, 151643)


def test_batched_encoding_equals_one_by_one(qwen):
    other = dict(EXAMPLE, prompt="A longer prompt,\nwith a newline", sentences=["Steal it.", "Ok"],
                 sentence_labels=[1, 0], words=[["Steal", "it", "."], ["Ok"]], word_labels=[[1, 0, 0], [0]])
    encoder = ExampleEncoder(qwen)
    together = encoder.encode_examples([EXAMPLE, other, EXAMPLE])
    alone = [encoder.encode_examples([e])[0] for e in (EXAMPLE, other, EXAMPLE)]
    assert together == alone


# ---------------------------------------------------------------------------------------------- the entry point


def run(tmp_path, input_dir, tokenizer_path, **kwargs) -> Path:
    out = tmp_path / "out"
    main(DataProcessArguments(output_dir=str(out), tokenizer_path=str(tokenizer_path), input_dir=str(input_dir),
                              show_progress=False, **kwargs))
    return out


def test_main_writes_splits_and_meta(tmp_path):
    benign = dict(EXAMPLE, sentence_labels=[0, 0], word_labels=[[0] * 6, [0] * 6])
    input_dir = write_fineharm(tmp_path / "fh", [EXAMPLE, benign])
    out = run(tmp_path, input_dir, qwen_tokenizer_path())
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "test.jsonl", "train.jsonl", "val.jsonl"]
    records = read_jsonl(out / "val.jsonl")
    assert [r["id"] for r in records] == ["val-00000", "val-00001"]
    assert [r["sequence_labels"] for r in records] == [1, 0]
    assert records[0]["token_labels"][-1] == X and records[0]["input_ids"][-1] == 151643
    meta = read_json(out / "meta.json")
    assert meta["format_version"] == 1
    assert meta["eos_appended"] is True and meta["bos_prepended"] is False
    assert (meta["bos_token_id"], meta["eos_token_id"], meta["pad_token_id"]) == (None, 151643, 151643)
    assert meta["vocab_size"] == 151665 and meta["tokenizer_class"] == "Qwen2Tokenizer"
    assert meta["newline_token_ids"] == [198]
    assert meta["source"] == str(input_dir.resolve())
    # 19 tokens per example (see the hand computation), 15 labelled response tokens (16 minus the bare " "); the
    # harmful ones: Ste al Ġun guarded Ġcar ): in EXAMPLE, none in the benign copy
    assert meta["splits"]["test"] == {"examples": 2, "harmful": 1, "tokens": 38,
                                      "labelled_response_tokens": 30, "harmful_tokens": 6}
    # published with ordinary permissions, not mkdtemp's private 0700
    assert out.stat().st_mode & 0o755 == 0o755


def test_splits_and_limit(tmp_path):
    input_dir = write_fineharm(tmp_path / "fh", [EXAMPLE] * 5)
    out = run(tmp_path, input_dir, minilm_path(), splits=["test"], limit=2)
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "test.jsonl"]
    assert [r["id"] for r in read_jsonl(out / "test.jsonl")] == ["test-00000", "test-00001"]
    meta = read_json(out / "meta.json")
    assert list(meta["splits"]) == ["test"] and meta["limit"] == 2
    assert (meta["start_token_id"], meta["end_token_id"], meta["eos_appended"]) == (101, 102, True)
    assert meta["newline_token_ids"] == []


def test_worker_processes_give_identical_output(tmp_path):
    records = [EXAMPLE, dict(EXAMPLE, prompt="Another prompt")] * 70  # more than two chunks
    input_dir = write_fineharm(tmp_path / "fh", records)
    one = run(tmp_path / "a", input_dir, qwen_tokenizer_path(), splits=["val"])
    two = run(tmp_path / "b", input_dir, qwen_tokenizer_path(), splits=["val"], num_workers=2)
    assert (one / "val.jsonl").read_bytes() == (two / "val.jsonl").read_bytes()
    assert len(read_jsonl(one / "val.jsonl")) == 140


def test_rerun_replaces_the_output_folder(tmp_path):
    input_dir = write_fineharm(tmp_path / "fh")
    run(tmp_path, input_dir, qwen_tokenizer_path())
    out = run(tmp_path, input_dir, qwen_tokenizer_path(), splits=["val"])
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "val.jsonl"]  # no stale train/test files
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


# ----------------------------------------------------------------------------------------------- failures


def test_bad_input_writes_nothing(tmp_path):
    bad = dict(EXAMPLE, word_labels=[[0] * 6, [1, 0, 1]])
    input_dir = write_fineharm(tmp_path / "fh", [EXAMPLE, bad])
    with pytest.raises(DataFormatError, match=r"train_new\.json, record 1, field 'word_labels\[1\]'"):
        run(tmp_path, input_dir, qwen_tokenizer_path())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fh"]  # no output folder, no temporary folder


def test_missing_input_file_writes_nothing(tmp_path):
    input_dir = write_fineharm(tmp_path / "fh")
    (input_dir / "test_new.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"lacks test_new\.json.*FineHarm/README\.md"):
        run(tmp_path, input_dir, qwen_tokenizer_path())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fh"]


@pytest.mark.parametrize("make_path", [lambda tmp: tmp / "no-such-tokenizer", lambda tmp: tmp / "fh"])
def test_tokenizer_that_does_not_load_names_the_path(tmp_path, make_path):
    input_dir = write_fineharm(tmp_path / "fh")
    bad_path = make_path(tmp_path)  # a missing folder, then a folder without tokenizer files
    with pytest.raises(TokenizerLoadError, match=rf"could not load a tokenizer from '{bad_path}'.*pass a folder"):
        run(tmp_path, input_dir, bad_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fh"]


def test_failure_while_writing_keeps_previous_output(tmp_path, monkeypatch):
    input_dir = write_fineharm(tmp_path / "fh")
    out = run(tmp_path, input_dir, qwen_tokenizer_path())
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def explode(self, examples):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(ExampleEncoder, "encode_examples", explode)
    with pytest.raises(RuntimeError, match="disk on fire"):
        run(tmp_path, input_dir, qwen_tokenizer_path())
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fh", "out"]


def test_output_folder_with_foreign_files_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"already holds notes\.txt, which this command did not write"):
        with staged_output_dir(out, data_process.OUTPUT_NAMES):
            pass
    assert (out / "notes.txt").read_text() == "mine"


def test_cli_flags_and_errors(capsys):
    args = parse_args(["--output-dir", "o", "--tokenizer-path", "t", "--splits", "val", "test", "--limit", "3"])
    assert (args.output_dir, args.tokenizer_path, args.splits, args.limit, args.num_workers) == (
        "o", "t", ["val", "test"], 3, 1)
    assert len(args.input_dir) == 1 and args.input_dir[0].endswith("FineHarm") and args.source_weights == [1.0]
    with pytest.raises(SystemExit):
        parse_args(["--output-dir", "o", "--tokenizer-path", "t", "--bogus", "1"])
    assert "not used by the HfArgumentParser: ['--bogus', '1']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--output-dir", "o", "--tokenizer-path", "t", "--limit", "0"])
    assert "--limit must be a positive number" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--output-dir", "o", "--tokenizer-path", "t", "--splits", "valid"])
    assert "invalid choice: 'valid'" in capsys.readouterr().err


def test_max_prompt_tokens_keeps_the_end_of_the_prompt_and_every_response_token(qwen_tokenizer_dir, tmp_path):
    from utils.data_process import DataProcessArguments, main
    from utils.io_utils import read_jsonl
    from utils.data.sample_data import write_sample

    sample = write_sample(tmp_path / "fh", seed=3, sizes={"train": 4, "val": 2, "test": 2})
    full_meta = main(DataProcessArguments(output_dir=str(tmp_path / "full"), tokenizer_path=str(qwen_tokenizer_dir),
                                          input_dir=str(sample), show_progress=False))
    cut_meta = main(DataProcessArguments(output_dir=str(tmp_path / "cut"), tokenizer_path=str(qwen_tokenizer_dir),
                                         input_dir=str(sample), show_progress=False, max_prompt_tokens=3))
    assert full_meta["max_prompt_tokens"] is None and cut_meta["max_prompt_tokens"] == 3
    for full, cut in zip(read_jsonl(tmp_path / "full" / "test.jsonl"), read_jsonl(tmp_path / "cut" / "test.jsonl")):
        assert cut["response_start"] == min(full["response_start"], 3)  # Qwen has no BOS
        assert cut["input_ids"][: cut["response_start"]] == full["input_ids"][full["response_start"] - 3 : full["response_start"]]
        assert cut["input_ids"][cut["response_start"]:] == full["input_ids"][full["response_start"]:]
        assert cut["token_labels"][cut["response_start"]:] == full["token_labels"][full["response_start"]:]


def test_several_input_folders_are_mixed_with_weights(tmp_path):
    benign = {**EXAMPLE, "sentence_labels": [0, 0], "word_labels": [[0] * 6, [0] * 6]}
    first = write_fineharm(tmp_path / "first", [EXAMPLE, EXAMPLE])
    second = write_fineharm(tmp_path / "second", [benign] * 4)
    out = tmp_path / "out"
    meta = main(parse_args(["--output-dir", str(out), "--tokenizer-path", str(qwen_tokenizer_path()),
                            "--input-dir", str(first), str(second), "--source-weights", "2", "0.5",
                            "--no-show-progress"]))
    train, test = read_jsonl(out / "train.jsonl"), read_jsonl(out / "test.jsonl")
    # Training: the first folder twice (4), the second at half (2); test: both unweighted (2 + 4).
    assert [r["source"] for r in train] == [0, 0, 0, 0, 1, 1]
    assert [r["sequence_labels"] for r in train] == [1, 1, 1, 1, 0, 0]
    assert [r["source"] for r in test] == [0, 0, 1, 1, 1, 1]
    assert [r["id"] for r in test] == [f"test-{i:05d}" for i in range(6)]
    assert meta["source"] == [str(first.resolve()), str(second.resolve())]
    assert meta["sources"][0]["weight"] == 2.0
    assert meta["sources"][1]["splits"] == {"train": {"read": 4, "used": 2}, "val": {"read": 4, "used": 4},
                                            "test": {"read": 4, "used": 4}}
    assert meta["splits"]["train"]["examples"] == 6
    with pytest.raises(SystemExit):
        parse_args(["--output-dir", "o", "--tokenizer-path", "t", "--input-dir", "a", "b", "--source-weights", "1"])


def test_max_prompt_tokens_zero_keeps_only_bos_before_the_response(tmp_path):
    from utils.data.sample_data import write_sample

    tokenizer = smollm2_path()  # SmolLM2 has a BOS token
    sample = write_sample(tmp_path / "fh", seed=3, sizes={"train": 2, "val": 2, "test": 2})
    meta = main(DataProcessArguments(output_dir=str(tmp_path / "p0"), tokenizer_path=str(tokenizer),
                                     input_dir=str(sample), show_progress=False, max_prompt_tokens=0))
    assert meta["max_prompt_tokens"] == 0
    for record in read_jsonl(tmp_path / "p0" / "test.jsonl"):
        assert record["response_start"] == 1 and record["input_ids"][0] == meta["bos_token_id"]
    with pytest.raises(ValueError, match="needs a tokenizer with a BOS or CLS token"):
        ExampleEncoder(load_tokenizer(qwen_tokenizer_path()), max_prompt_tokens=0)  # Qwen has no BOS
    with pytest.raises(ValueError, match="must be 0 .no prompt. or more"):
        DataProcessArguments(output_dir="o", tokenizer_path="t", max_prompt_tokens=-1)


def test_harm_categories_travel_into_the_processed_records(tmp_path):
    harmful = dict(EXAMPLE, meta={"source": "x", "category": "illicit"})
    benign = dict(EXAMPLE, sentence_labels=[0, 0], word_labels=[[0] * 6, [0] * 6], meta={"category": None})
    out = run(tmp_path, write_fineharm(tmp_path / "fh", [harmful, benign]), qwen_tokenizer_path())
    records = read_jsonl(out / "test.jsonl")
    assert [r["category"] for r in records] == ["illicit", None]
    assert read_json(out / "meta.json")["splits"]["test"]["categories"] == {"illicit": 1}


def test_data_without_categories_writes_no_category_field(tmp_path):
    out = run(tmp_path, write_fineharm(tmp_path / "fh"), qwen_tokenizer_path())
    assert "category" not in read_jsonl(out / "test.jsonl")[0]
    assert "categories" not in read_json(out / "meta.json")["splits"]["test"]
