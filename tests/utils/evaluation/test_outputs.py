"""utils/evaluation/outputs.py: portable paths in summaries (relative as given, absolute ones relative to the repository)
and the command line as a user would type it. The outputs themselves are checked through the evaluation entry points
(tests/test/test_eval_entrypoints.py) and re-scoring (tests/utils/evaluation/test_rescore.py)."""

from __future__ import annotations

from utils.evaluation.outputs import REPO_ROOT, portable_command, portable_path, portable_tree


def test_portable_path():
    assert portable_path("runs/scm") == "runs/scm"  # as the user gave it
    assert portable_path("../shared/data") == "../shared/data"
    assert portable_path(REPO_ROOT / ".cache" / "data" / "x") == ".cache/data/x"
    assert portable_path("/machine/repo/runs/scm", root="/machine/repo") == "runs/scm"
    assert portable_path("/machine/shared/data/realmix", root="/machine/repo") == "../shared/data/realmix"
    assert portable_path("/machine/repo", root="/machine/repo") == "."
    assert portable_path(None) is None


def test_portable_command():
    argv = ["/machine/repo/test/test_qwen_partial.py", "--model-path", "/machine/repo/runs/scm", "--data-dir",
            "data dir", "--limit", "5"]
    assert portable_command(argv, "test.test_qwen_partial", root="/machine/repo") == (
        "python -m test.test_qwen_partial --model-path runs/scm --data-dir 'data dir' --limit 5")
    # Idempotent: a command already in that form is unchanged.
    again = ["python", "-m", "test.test_qwen_partial", "--model-path", "runs/scm"]
    assert portable_command(again, "test.test_qwen_partial") == "python -m test.test_qwen_partial --model-path runs/scm"


def test_portable_tree_makes_a_runs_facts_portable_and_leaves_the_input_alone():
    facts = {"script": "test.test_qwen_full",
             "arguments": {"model_path": "/r/runs/a", "data_dir": "d", "output_dir": "/r/out", "limit": None},
             "model": {"path": "/r/runs/a", "name": "a"},
             "data": {"data_dir": "/r/.cache/data/d", "meta": {"tokenizer": "/r/tok", "source": "/s/realmix",
                                                               "vocab_size": 5}}}
    out = portable_tree(facts, root="/r")
    assert out["arguments"] == {"model_path": "runs/a", "data_dir": "d", "output_dir": "out", "limit": None}
    assert out["model"] == {"path": "runs/a", "name": "a"}
    assert out["data"] == {"data_dir": ".cache/data/d", "meta": {"tokenizer": "tok", "source": "../s/realmix",
                                                                 "vocab_size": 5}}
    assert facts["model"]["path"] == "/r/runs/a" and facts["arguments"]["output_dir"] == "/r/out"


def test_portable_tree_makes_nested_paths_and_command_words_relative(tmp_path):
    root = tmp_path / "repo"
    facts = {"data": {"sources": [{"path": str(tmp_path / "shared" / "realmix"), "weight": 1.0}]},
             "command": f"{root}/train/train_qwen.py --data-dir {root}/.cache/data/x --output-dir runs/y",
             "note": "a/b with spaces", "n": 3, "url": "http://127.0.0.1:8000/v1"}
    out = portable_tree(facts, root)
    assert out["data"]["sources"][0] == {"path": "../shared/realmix", "weight": 1.0}
    assert out["command"] == "train/train_qwen.py --data-dir .cache/data/x --output-dir runs/y"
    assert out["note"] == "a/b with spaces" and out["n"] == 3 and out["url"] == "http://127.0.0.1:8000/v1"
    assert facts["data"]["sources"][0]["path"].startswith(str(tmp_path))  # the input is not changed
