"""model/convert_checkpoint.py on tiny synthetic checkpoints written in the paper code's layout: the converted model
gives the scores of a reference forward written here (the paper's rule: token head on every position, holistic head
at the last non-pad token, so an appended EOS that is the pad token is skipped), shards and tokenizer are handled,
nothing from SRC runs, pickles are refused, and the reverse direction restores the original tensors; an early
project folder is upgraded with the rule and prompt cut it was trained with."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoTokenizer, Qwen2Model

from model import SCMModel
from tests.tiny_models import tiny_qwen2_config
from model.convert_checkpoint import ConversionError, ConvertArguments, main, parse_args, run

PAD = 0
EVIL = "import pathlib\npathlib.Path(__file__).with_name('EXECUTED').write_text('yes')\n"


def write_paper_checkpoint(folder, tokenizer_dir, shards: int = 1, seed: int = 0, **config_overrides):
    """A tiny QwenForDualTask-layout checkpoint; returns (folder, backbone, heads) for the reference forward."""
    folder.mkdir(parents=True)
    torch.manual_seed(seed)
    config = tiny_qwen2_config()
    config.pad_token_id = PAD
    backbone = Qwen2Model(config).eval()
    heads = {"token_classifier.weight": torch.randn(2, 32), "token_classifier.bias": torch.randn(2),
             "sequence_classifier.weight": torch.randn(2, 32)}
    tensors = {**{f"model.{k}": v.clone() for k, v in backbone.state_dict().items()}, **heads}
    names = sorted(tensors)
    if shards == 1:
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for i in range(shards):
            file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            part = {n: tensors[n] for n in names[i::shards]}
            save_file(part, str(folder / file), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(part, file))
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    paper_config = {**config.to_dict(), "architectures": ["QwenForDualTask"],
                    "auto_map": {"AutoModel": "modeling_evil.QwenForDualTask"}, "num_token_labels": 2,
                    "num_sequence_labels": 2, "alpha": 0.6, "beta": 0.4, "gamma": 1.0, "logic_reduce": "max",
                    **config_overrides}
    (folder / "config.json").write_text(json.dumps(paper_config))
    (folder / "modeling_evil.py").write_text(EVIL)
    for file in tokenizer_dir.iterdir():
        if file.is_file():
            shutil.copy(file, folder / file.name)
    config_file = folder / "tokenizer_config.json"
    (config_file.write_text(json.dumps({**json.loads(config_file.read_text()),
                                        "auto_map": {"AutoTokenizer": ["modeling_evil.T", None]}})))
    return folder, backbone, heads


def reference_scores(backbone, heads, ids, mask):
    """The paper model's forward, written out: token probabilities and the holistic one at the last non-pad id."""
    with torch.no_grad():
        hidden = backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        token = torch.softmax(hidden @ heads["token_classifier.weight"].T + heads["token_classifier.bias"], -1)[..., 1]
        last = (torch.arange(ids.shape[1]) * (ids != PAD)).argmax(-1)
        pooled = hidden[torch.arange(ids.shape[0]), last]
        holistic = torch.softmax(pooled @ heads["sequence_classifier.weight"].T, -1)[:, 1]
    return token, holistic


# Row 2 ends with an attended EOS whose id is the pad id (as Qwen's data does), then two padding positions.
BATCH = torch.tensor([[5, 17, 300, 42, 7, 99, 12], [8, 250, 31, 77, PAD, PAD, PAD]])
MASK = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0]])


def converted_scores(folder):
    model = SCMModel.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model(input_ids=BATCH, attention_mask=MASK)
    return torch.softmax(out.token_logits, -1)[..., 1], torch.softmax(out.sequence_logits, -1)[:, 1]


@pytest.mark.parametrize("shards", [1, 3])
def test_converted_model_scores_like_the_reference(tmp_path, qwen_tokenizer_dir, shards):
    src, backbone, heads = write_paper_checkpoint(tmp_path / "paper", qwen_tokenizer_dir, shards=shards)
    summary = main(ConvertArguments(src=str(src), dst=str(tmp_path / "scm"), theta=0.7, delay_k=3))
    assert summary == {"direction": "to-scm", "tensors": len(backbone.state_dict()) + 3, "shards": shards,
                       "tokenizer_files": summary["tokenizer_files"]}
    token, holistic = converted_scores(tmp_path / "scm")
    ref_token, ref_holistic = reference_scores(backbone, heads, BATCH, MASK)
    real = MASK.bool()
    assert torch.allclose(token[real], ref_token[real], atol=1e-6)
    assert torch.allclose(holistic, ref_holistic, atol=1e-6)
    # The EOS position is not where the paper reads row 2: the rule matters for this input.
    with torch.no_grad():
        at_eos = SCMModel.from_pretrained(tmp_path / "scm", holistic_pooling="last-attended").eval()(
            input_ids=BATCH, attention_mask=MASK).sequence_logits.softmax(-1)[1, 1]
    assert abs(at_eos.item() - ref_holistic[1].item()) > 1e-4
    config = json.loads((tmp_path / "scm" / "config.json").read_text())
    assert (config["model_type"], config["task"], config["alpha"], config["gamma"]) == ("scm", "scm", 0.6, 1.0)
    assert (config["theta"], config["delay_k"], config["scorer"]) == (0.7, 3, "token")
    assert (config["holistic_pooling"], config["pooling_pad_token_id"]) == ("last-non-pad", PAD)
    assert config["converted_from"]["layout"] == "paper code (QwenForDualTask)"
    if shards > 1:
        index = json.loads((tmp_path / "scm" / "model.safetensors.index.json").read_text())
        assert set(index["weight_map"]) == set(SCMModel.from_pretrained(tmp_path / "scm").state_dict())


def test_nothing_from_src_runs_and_the_tokenizer_is_kept(tmp_path, qwen_tokenizer_dir):
    src, _, _ = write_paper_checkpoint(tmp_path / "paper", qwen_tokenizer_dir)
    assert run([str(src), str(tmp_path / "scm")]) == 0
    dst = tmp_path / "scm"
    assert not (src / "EXECUTED").exists() and not list(dst.glob("*.py"))
    assert "auto_map" not in json.loads((dst / "config.json").read_text())
    assert "auto_map" not in json.loads((dst / "tokenizer_config.json").read_text())
    original, kept = AutoTokenizer.from_pretrained(qwen_tokenizer_dir), AutoTokenizer.from_pretrained(dst)
    assert len(kept) == len(original) and kept("Hello world")["input_ids"] == original("Hello world")["input_ids"]


def test_streaming_runtime_loads_the_converted_checkpoint(tmp_path, qwen_tokenizer_dir):
    from serve.monitor import StreamingMonitor

    src, backbone, heads = write_paper_checkpoint(tmp_path / "paper", qwen_tokenizer_dir, seed=4)
    main(ConvertArguments(src=str(src), dst=str(tmp_path / "scm")))
    monitor = StreamingMonitor.from_pretrained(tmp_path / "scm", device="cpu", dtype="float32", theta=1.0, k=1)
    state = monitor.start(prompt_ids=BATCH[0, :3].tolist())
    streamed = [monitor.push(state, [t]).token_scores[0] for t in BATCH[0, 3:].tolist()]
    ref_token, _ = reference_scores(backbone, heads, BATCH[:1], MASK[:1])
    assert streamed == pytest.approx(ref_token[0, 3:].tolist(), abs=1e-5)


def test_round_trip_restores_the_papers_tensors_and_config(tmp_path, qwen_tokenizer_dir):
    src, _, _ = write_paper_checkpoint(tmp_path / "paper", qwen_tokenizer_dir, shards=2)
    main(ConvertArguments(src=str(src), dst=str(tmp_path / "scm")))
    assert main(ConvertArguments(src=str(tmp_path / "scm"), dst=str(tmp_path / "back")))["direction"] == "to-paper"
    back = tmp_path / "back"
    for shard in src.glob("*.safetensors"):
        with safe_open(str(shard), "pt") as original, safe_open(str(back / shard.name), "pt") as restored:
            assert set(original.keys()) == set(restored.keys())
            assert all(torch.equal(original.get_tensor(k), restored.get_tensor(k)) for k in original.keys())
    config = json.loads((back / "config.json").read_text())
    assert config["architectures"] == ["QwenForDualTask"] and config["model_type"] == "qwen2"
    assert (config["num_token_labels"], config["alpha"], config["beta"], config["gamma"]) == (2, 0.6, 0.4, 1.0)
    # The pad id the paper's holistic head skips survives the round trip.
    assert config["pad_token_id"] == PAD


def test_pickle_only_checkpoint_is_refused(tmp_path):
    src = tmp_path / "pickled"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "qwen2", "num_token_labels": 2}))
    (src / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ConversionError, match="only pickle weights \\(pytorch_model.bin\\).*can run arbitrary code"):
        main(ConvertArguments(src=str(src), dst=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()


def test_wrong_layouts_are_refused(tmp_path, qwen_tokenizer_dir):
    src, _, _ = write_paper_checkpoint(tmp_path / "three", qwen_tokenizer_dir, num_token_labels=3)
    with pytest.raises(ConversionError, match="num_token_labels = 3"):
        main(ConvertArguments(src=str(src), dst=str(tmp_path / "o1")))
    src, _, _ = write_paper_checkpoint(tmp_path / "extra", qwen_tokenizer_dir)
    save_file({"lm_head.weight": torch.zeros(512, 32)}, str(src / "zz-extra.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ConversionError, match="tensor 'lm_head.weight' is not part of"):
        main(ConvertArguments(src=str(src), dst=str(tmp_path / "o2")))
    assert not (tmp_path / "o2").exists()


def test_reverse_refuses_a_non_qwen2_backbone(tmp_path):
    from tests.tiny_checkpoints import build_tiny_scm
    from model.assets import smollm2_path

    folder = build_tiny_scm(tmp_path / "llama-scm", smollm2_path())
    with pytest.raises(ConversionError, match="backbone is 'llama'.*Qwen2 backbone only"):
        main(ConvertArguments(src=str(folder), dst=str(tmp_path / "out")))


def _old_project_folder(folder, summary_meta=None):
    """A tiny SCM folder as this project saved them before config.json recorded holistic_pooling and
    max_prompt_tokens (with a training summary holding ``summary_meta`` as its data meta, when given)."""
    from model.assets import smollm2_path
    from tests.tiny_checkpoints import build_tiny_scm

    build_tiny_scm(folder, smollm2_path())
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(
        {k: v for k, v in config.items() if k not in ("holistic_pooling", "max_prompt_tokens")}))
    if summary_meta is not None:
        (folder / "training_summary.json").write_text(json.dumps({"data": {"meta": summary_meta}, "best": 0.1}))
    return folder


@pytest.mark.parametrize("meta, cut", [({"max_prompt_tokens": 4}, 4), ([{"max_prompt_tokens": 0}] * 2, 0),
                                       (None, None)])
def test_upgrade_records_what_an_old_project_folder_was_trained_with(tmp_path, capsys, meta, cut):
    from serve.monitor import StreamingMonitor

    src = _old_project_folder(tmp_path / "old", meta)
    assert run([str(src), str(tmp_path / "new"), "--direction", "upgrade"]) == 0
    assert f"recorded holistic_pooling='last-attended', max_prompt_tokens={cut!r}" in capsys.readouterr().err
    dst = tmp_path / "new"
    config = json.loads((dst / "config.json").read_text())
    assert (config["holistic_pooling"], config["max_prompt_tokens"]) == ("last-attended", cut)
    assert (dst / "training_summary.json").exists() == (meta is not None)
    old_weights = SCMModel.from_pretrained(src).state_dict()
    new_model = SCMModel.from_pretrained(dst)
    assert new_model.config.holistic_pooling == "last-attended"
    assert all(torch.equal(tensor, old_weights[name]) for name, tensor in new_model.state_dict().items())
    monitor = StreamingMonitor.from_pretrained(dst, device="cpu")
    assert monitor.max_prompt_tokens == cut
    assert AutoTokenizer.from_pretrained(dst)("Hello")["input_ids"] == AutoTokenizer.from_pretrained(src)("Hello")[
        "input_ids"]


def test_upgrade_keeps_a_recorded_rule_and_refuses_what_it_cannot_upgrade(tmp_path, qwen_tokenizer_dir):
    src = _old_project_folder(tmp_path / "half", {"max_prompt_tokens": 64})
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "holistic_pooling": "last-non-pad"}))
    summary = main(ConvertArguments(src=str(src), dst=str(tmp_path / "new"), direction="upgrade"))
    assert summary["note"] == "recorded max_prompt_tokens=64 in config.json"
    assert json.loads((tmp_path / "new" / "config.json").read_text())["holistic_pooling"] == "last-non-pad"
    with pytest.raises(ConversionError, match="already records holistic_pooling and max_prompt_tokens"):
        main(ConvertArguments(src=str(tmp_path / "new"), dst=str(tmp_path / "again"), direction="upgrade"))
    paper, _, _ = write_paper_checkpoint(tmp_path / "paper", qwen_tokenizer_dir)
    with pytest.raises(ConversionError, match="model_type 'qwen2'; --direction upgrade takes this project's SCM"):
        main(ConvertArguments(src=str(paper), dst=str(tmp_path / "o"), direction="upgrade"))
    assert not (tmp_path / "again").exists() and not (tmp_path / "o").exists()


def test_cli_arguments(capsys):
    args = parse_args(["a", "b", "--theta", "0.6"])
    assert (args.src, args.dst, args.theta, args.direction) == ("a", "b", 0.6, "auto")
    with pytest.raises(SystemExit):
        parse_args(["a", "b", "--theat", "0.2"])
    assert "did you mean --theta" in capsys.readouterr().err
    assert run(["missing-src", "out"]) == 1
    assert "missing-src is not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["a", "b", "--delay-k", "0"])
    assert "--delay-k must be >= 1, got 0" in capsys.readouterr().err
