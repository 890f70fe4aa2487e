"""Convert between the paper code's released SCM checkpoints and this project's SCM checkpoints, both ways, and
upgrade this project's own early SCM folders.

The paper's authors released SCM-0.5B / 1.5B / 7B (Qwen2.5 backbones) in the layout of their code's dual-task model
(``QwenForDualTask`` in their ``model/modeling_qwen4dual_2CE_w_logic.py``, loaded there with remote code):

- ``config.json``: a Qwen2 config (``model_type: qwen2``) plus ``num_token_labels``, ``num_sequence_labels`` (2 and
  2), ``alpha``, ``beta`` (= 1 - alpha), ``gamma``, ``logic_reduce`` and ``pad_token_id``;
- weights: the backbone under ``model.`` (a ``Qwen2Model``), ``token_classifier.weight/bias`` (the token scorer, a
  dropout before it holds no weights) and ``sequence_classifier.weight`` (the holistic scorer, no bias).

This project's checkpoint (``model/modeling_qwen4dual_2CE_w_logic.py``, ``SCMModel``/``SCMConfig``) holds the same
tensors as ``backbone.*``, ``token_scorer.1.*`` and ``holistic_scorer.weight`` with an ``scm`` config around the
backbone's. Conversion only renames tensors and rewrites the config: the numbers are the released ones, so the
converted model gives the released model's token scores and, where its pooling agrees, holistic scores.

Safety: nothing from SRC is imported or executed. ``config.json`` is read as JSON (an ``auto_map`` pointing at
remote code is dropped), weights are read with ``safetensors`` (one file or shards with
``model.safetensors.index.json``), the tokenizer files are copied as files (an ``auto_map`` in
``tokenizer_config.json`` is dropped) and no ``*.py`` is copied. A checkpoint that has only pickle weights
(``pytorch_model.bin``, ``*.pt``, ``*.pth``, ``*.ckpt``) is refused: unpickling can run code.

Holistic pooling: the paper's model reads the holistic head at the last position whose token id is not the pad id
(Qwen's pad is its EOS, so the appended EOS is skipped). The converted config records that rule
(``holistic_pooling: last-non-pad``) with the released ``pad_token_id`` (``pooling_pad_token_id``), so the converted
model's holistic scores are the released model's too; the reverse direction writes ``pooling_pad_token_id`` back as
``pad_token_id``.

Commands::

    # a released checkpoint (downloaded elsewhere, e.g. `hf download liyang-ict/SCM-0.5B --local-dir SCM-0.5B`)
    python -m model.convert_checkpoint SCM-0.5B scm-0.5b                 # -> a folder run-scm.sh test loads
    python -m model.convert_checkpoint SCM-0.5B scm-0.5b --theta 0.5 --delay-k 1
    # back to the paper code's layout, for sharing a checkpoint trained here (Qwen2 backbones only)
    python -m model.convert_checkpoint runs/scm-0.5b scm-0.5b-paper-layout
    # an SCM folder of this project whose config.json lacks holistic_pooling or max_prompt_tokens (trained before
    # they existed): the same weights, with the rule it was trained with and its data's prompt cut recorded
    python -m model.convert_checkpoint runs/old-scm runs/old-scm-upgraded --direction upgrade

The direction is read from SRC's ``config.json`` (``model_type: scm`` -> paper layout, else -> SCM);
``--direction`` forces it (``upgrade`` is never guessed). DST is written beside its final place and renamed into
place only when complete.

Upgrade: SCM folders saved before ``holistic_pooling`` existed were trained with their holistic head at the last
attended position (the EOS), so ``upgrade`` records ``holistic_pooling: last-attended``; folders saved before
``max_prompt_tokens`` existed get the prompt cut of their training data, read from the ``training_summary.json``
beside them (its data meta; none: whole prompts). The loaders read neither from anywhere else: loaded without
the upgrade, such a folder would pool at the paper's position and be served whole prompts.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from utils.cli import require_at_least
from utils.io_utils import DataFormatError, read_json, staged_output_dir, write_json

PAPER_ARCHITECTURE = "QwenForDualTask"
# Keys the paper code adds to the Qwen2 config (and remote-code plumbing), never part of the backbone's config.
PAPER_KEYS = ("num_token_labels", "num_sequence_labels", "alpha", "beta", "gamma", "logic_reduce", "ignore_index",
              "auto_map", "architectures", "_name_or_path", "transformers_version")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "merges.txt", "vocab.txt", "tokenizer.model", "chat_template.jinja",
                   "chat_template.json")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
INDEX_NAME = "model.safetensors.index.json"
SUMMARY_NAME = "training_summary.json"
DIRECTIONS = ("auto", "to-scm", "to-paper", "upgrade")
# Paper name prefix -> project name prefix (the reverse direction swaps them).
PAPER_TO_SCM = (("model.", "backbone."), ("token_classifier.", "token_scorer.1."),
                ("sequence_classifier.", "holistic_scorer."))


class ConversionError(DataFormatError):
    """SRC cannot be converted; the message names the file or tensor and what to do."""


# ------------------------------------------------------------------------------------------------ reading SRC


def weight_files(src: Path) -> list[Path]:
    """The safetensors files of a checkpoint folder (the shards of its index, else ``*.safetensors``).

    Raises:
        ConversionError: only pickle weights, no weights at all, or an index naming missing shards.
    """
    index = src / INDEX_NAME
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ConversionError(f"{index}: no 'weight_map'; the index of a sharded checkpoint maps every tensor "
                                  f"to its shard file")
        files = sorted({src / name for name in weight_map.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ConversionError(f"{index} names shard(s) {missing} that are not in {src}; download them all")
        return files
    files = sorted(src.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted(p.name for p in src.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ConversionError(
            f"{src} holds only pickle weights ({', '.join(pickles)}); loading a pickle can run arbitrary code, so "
            f"this converter reads safetensors only. Convert them first where you trust the file, e.g. python -c "
            f"\"import torch; from safetensors.torch import save_file; "
            f"save_file(torch.load('{pickles[0]}', weights_only=True), 'model.safetensors', metadata={{'format': "
            f"'pt'}})\" in that folder, or download the safetensors release"
        )
    raise ConversionError(f"{src} holds no weights (*.safetensors or {INDEX_NAME})")


def read_config(src: Path) -> dict[str, Any]:
    """SRC's ``config.json`` as a dict.

    Raises:
        FileNotFoundError: SRC or its config is missing. DataFormatError: invalid JSON.
    """
    if not src.is_dir():
        raise FileNotFoundError(f"{src} is not a folder; give a checkpoint folder (config.json + *.safetensors)")
    path = src / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; a checkpoint folder has a config.json beside its weights")
    config = read_json(path)
    if not isinstance(config, dict):
        raise ConversionError(f"{path}: expected a JSON object")
    return config


def rename_prefix(name: str, table: tuple[tuple[str, str], ...]) -> Optional[str]:
    """``name`` with its first matching prefix replaced, or None when no prefix matches."""
    for old, new in table:
        if name.startswith(old):
            return new + name[len(old):]
    return None


def convert_weights(files: list[Path], rename: Callable[[str], Optional[str]], expected: dict[str, tuple],
                    dst: Path, what: str) -> None:
    """Copy every tensor of ``files`` into ``dst`` under its new name, shard by shard, checking names and shapes.

    Args:
        files: source safetensors files.
        rename: source name -> destination name (None: not a tensor of this model).
        expected: destination name -> shape, from the destination model built on the meta device.
        dst: the (staged) destination folder.
        what: the source format, for messages.

    Raises:
        ConversionError: an unknown or missing tensor, or a shape that does not fit the config.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    seen: set[str] = set()
    weight_map: dict[str, str] = {}
    total = 0
    for file in files:
        tensors = {}
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                new = rename(name)
                if new is None or new not in expected:
                    prefixes = ", ".join(sorted({k.split(".")[0] + "." for k in expected}))
                    raise ConversionError(f"{file}: tensor {name!r} is not part of {what} (its tensors are named "
                                          f"{prefixes}* after renaming); is SRC the right kind of checkpoint?")
                tensor = handle.get_tensor(name)
                if tuple(tensor.shape) != expected[new]:
                    raise ConversionError(f"{file}: tensor {name!r} has shape {tuple(tensor.shape)}, but config.json "
                                          f"implies {expected[new]} for {new!r}")
                tensors[new] = tensor.contiguous()
                total += tensor.numel() * tensor.element_size()
        seen.update(tensors)
        out_name = "model.safetensors" if len(files) == 1 else file.name
        save_file(tensors, str(dst / out_name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, out_name))
    missing = sorted(set(expected) - seen)
    if missing:
        raise ConversionError(f"{what}: SRC lacks tensor(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}; "
                              f"the checkpoint is incomplete")
    if len(files) > 1:
        write_json(dst / INDEX_NAME,
                   {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))})


def copy_tokenizer(src: Path, dst: Path) -> list[str]:
    """Copy the tokenizer files (never code); drop ``auto_map`` from ``tokenizer_config.json``.

    Returns:
        The names copied.
    """
    copied = []
    for name in TOKENIZER_FILES:
        path = src / name
        if not path.is_file():
            continue
        if name == "tokenizer_config.json":
            config = read_json(path)
            config.pop("auto_map", None)
            write_json(dst / name, config)
        else:
            shutil.copyfile(path, dst / name)
        copied.append(name)
    return copied


def _shapes(model) -> dict[str, tuple]:
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------------- to SCM


def paper_to_scm_config(config: dict[str, Any], theta: float, delay_k: int, source: str):
    """The project's ``SCMConfig`` for a paper-layout ``config.json``.

    Raises:
        ConversionError: not the paper's dual-task layout, or label counts other than 2.
    """
    from transformers import AutoConfig

    from model.modeling_qwen4dual_2CE_w_logic import PAPER_POOLING, SCMConfig

    model_type = config.get("model_type")
    if model_type in (None, "scm"):
        raise ConversionError(f"config.json has model_type {model_type!r}; the paper code's checkpoints are Qwen2 "
                              f"configs (model_type 'qwen2') with num_token_labels/num_sequence_labels")
    for key in ("num_token_labels", "num_sequence_labels"):
        if config.get(key, 2) != 2:
            raise ConversionError(f"config.json: {key} = {config[key]}; SCM's heads have 2 classes (benign, harmful)")
    backbone = {k: v for k, v in config.items() if k not in PAPER_KEYS}
    try:
        backbone_config = AutoConfig.for_model(**backbone)
    except (ValueError, KeyError) as err:
        raise ConversionError(f"config.json: backbone model_type {model_type!r} is not known to this transformers "
                              f"({err})") from err
    # The paper's holistic head reads the last position whose id is not config.pad_token_id.
    scm = SCMConfig(backbone_config=backbone_config, alpha=float(config.get("alpha", 0.6)),
                    gamma=float(config.get("gamma", 1.0)), logic_reduce=config.get("logic_reduce", "max"),
                    theta=theta, delay_k=delay_k, scorer="token", task="scm", holistic_pooling=PAPER_POOLING,
                    pooling_pad_token_id=config.get("pad_token_id"))
    # Self-describing: where the weights came from.
    scm.converted_from = {"layout": f"paper code ({PAPER_ARCHITECTURE})", "source": source, "beta": config.get("beta")}
    return scm


def to_scm(src: Path, dst: Path, theta: float, delay_k: int) -> dict[str, Any]:
    """Paper layout -> project SCM checkpoint (see the module docstring).

    Returns:
        What was done (for the summary line).
    """
    import torch

    from model import SCMModel

    config = read_config(src)
    files = weight_files(src)
    scm_config = paper_to_scm_config(config, theta, delay_k, str(src))
    with torch.device("meta"):
        expected = _shapes(SCMModel(scm_config))
    with staged_output_dir(dst, _dst_names(files)) as tmp:
        convert_weights(files, lambda n: rename_prefix(n, PAPER_TO_SCM), expected, tmp,
                        f"the paper's {PAPER_ARCHITECTURE} checkpoint")
        scm_config.save_pretrained(tmp)
        copied = copy_tokenizer(src, tmp)
    return {"direction": "to-scm", "tensors": len(expected), "shards": len(files), "tokenizer_files": copied}


# -------------------------------------------------------------------------------------------------- to paper


def scm_to_paper_config(config: dict[str, Any], pad_token_id: Optional[int]) -> dict[str, Any]:
    """The paper code's ``config.json`` for a project SCM config (``pad_token_id``: the checkpoint's
    ``pooling_pad_token_id`` when set, else the one given, else the backbone's).

    Raises:
        ConversionError: a backbone that the paper's Qwen2-only model cannot hold, or a non-SCM checkpoint.
    """
    if config.get("model_type") != "scm":
        raise ConversionError(f"config.json has model_type {config.get('model_type')!r}, not 'scm'")
    backbone = dict(config.get("backbone_config") or {})
    if backbone.get("model_type") != "qwen2":
        raise ConversionError(f"the backbone is {backbone.get('model_type')!r}; the paper code's {PAPER_ARCHITECTURE} "
                              f"holds a Qwen2 backbone only, so only Qwen2-based checkpoints can be shared in its "
                              f"layout")
    alpha = float(config.get("alpha", 0.6))
    backbone.pop("_name_or_path", None)
    return {**backbone, "architectures": [PAPER_ARCHITECTURE], "num_token_labels": 2, "num_sequence_labels": 2,
            "alpha": alpha, "beta": 1.0 - alpha, "gamma": float(config.get("gamma", 1.0)),
            "logic_reduce": config.get("logic_reduce", "max"),
            "pad_token_id": next((p for p in (config.get("pooling_pad_token_id"), pad_token_id,
                                              backbone.get("pad_token_id")) if p is not None), None)}


def _tokenizer_pad_id(src: Path) -> Optional[int]:
    """The pad id the paper code would set (the tokenizer's pad, else its EOS), from SRC's own tokenizer."""
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(src))
    except Exception:  # noqa: BLE001 - a checkpoint without tokenizer files keeps the backbone's pad id
        return None
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def to_paper(src: Path, dst: Path) -> dict[str, Any]:
    """Project SCM checkpoint -> the paper code's layout (see the module docstring).

    Returns:
        What was done.
    """
    import torch
    from transformers import Qwen2Config, Qwen2Model

    config = read_config(src)
    files = weight_files(src)
    paper = scm_to_paper_config(config, _tokenizer_pad_id(src))
    # Shapes only: the pad id plays no part in them (and a tokenizer's may lie outside a test model's vocabulary).
    backbone = Qwen2Config(**{k: v for k, v in paper.items() if k not in (*PAPER_KEYS, "model_type", "pad_token_id")})
    with torch.device("meta"):
        expected = {f"model.{k}": v for k, v in _shapes(Qwen2Model(backbone)).items()}
    hidden = backbone.hidden_size
    expected.update({"token_classifier.weight": (2, hidden), "token_classifier.bias": (2,),
                     "sequence_classifier.weight": (2, hidden)})
    reverse = tuple((new, old) for old, new in PAPER_TO_SCM)
    with staged_output_dir(dst, _dst_names(files)) as tmp:
        convert_weights(files, lambda n: rename_prefix(n, reverse), expected, tmp, "this project's SCM checkpoint")
        write_json(tmp / "config.json", paper)
        copied = copy_tokenizer(src, tmp)
    summary = {"direction": "to-paper", "tensors": len(expected), "shards": len(files), "tokenizer_files": copied}
    if config.get("holistic_pooling", "last-attended") != "last-non-pad":
        # The paper's code pools at the last non-pad id; this checkpoint's holistic head was trained elsewhere.
        summary["note"] = ("this checkpoint's holistic head reads the last attended position; the paper's code will "
                           "read the last non-pad position (token scores are unaffected)")
    return summary


def _dst_names(files: list[Path]) -> set[str]:
    return {"config.json", "model.safetensors", INDEX_NAME, *TOKENIZER_FILES, *(f.name for f in files)}


# ---------------------------------------------------------------------------------------------------- upgrade


def summary_prompt_cut(folder: Path) -> Optional[int]:
    """The prompt cut of the data a checkpoint was trained on, from the ``training_summary.json`` beside it (its
    data's ``meta.max_prompt_tokens``); None (whole prompts) without one. A run mixing several data folders records
    one meta per folder: they agree (training refuses otherwise)."""
    path = folder / SUMMARY_NAME
    if not path.is_file():
        return None
    meta = (read_json(path).get("data") or {}).get("meta") or {}
    metas = meta if isinstance(meta, list) else [meta]
    return next((m.get("max_prompt_tokens") for m in metas if isinstance(m, dict)), None)


def upgrade(src: Path, dst: Path) -> dict[str, Any]:
    """This project's SCM folder saved before ``holistic_pooling`` / ``max_prompt_tokens`` existed -> the same
    weights, tokenizer and training summary with both recorded in ``config.json`` (see the module docstring).

    Returns:
        What was done (``note`` names the fields added).

    Raises:
        ConversionError: SRC is not an SCM folder, or already records both fields.
    """
    from safetensors import safe_open

    config = read_config(src)
    if config.get("model_type") != "scm":
        raise ConversionError(f"{src / 'config.json'} has model_type {config.get('model_type')!r}; --direction "
                              f"upgrade takes this project's SCM folders (model_type 'scm')")
    added: dict[str, Any] = {}
    if "holistic_pooling" not in config:
        added["holistic_pooling"] = "last-attended"  # the rule every SCM checkpoint was trained with before the field
    if "max_prompt_tokens" not in config:
        added["max_prompt_tokens"] = summary_prompt_cut(src)
    if not added:
        raise ConversionError(f"{src / 'config.json'} already records holistic_pooling and max_prompt_tokens: "
                              f"nothing to upgrade; load the folder as it is")
    files = weight_files(src)
    tensors = 0
    with staged_output_dir(dst, _dst_names(files) | {SUMMARY_NAME}) as tmp:
        for path in files:
            with safe_open(str(path), framework="pt") as handle:
                tensors += len(handle.keys())
            shutil.copyfile(path, tmp / path.name)
        for name in (INDEX_NAME, SUMMARY_NAME):
            if (src / name).is_file():
                shutil.copyfile(src / name, tmp / name)
        write_json(tmp / "config.json", {**config, **added})
        copied = copy_tokenizer(src, tmp)
    recorded = ", ".join(f"{key}={value!r}" for key, value in added.items())
    return {"direction": "upgrade", "tensors": tensors, "shards": len(files), "tokenizer_files": copied,
            "note": f"recorded {recorded} in config.json"}


# -------------------------------------------------------------------------------------------------------- CLI


@dataclass
class ConvertArguments:
    """Arguments of ``python -m model.convert_checkpoint SRC DST [flags]``."""

    src: str = field(metadata={"help": "Checkpoint folder to convert (config.json + *.safetensors + tokenizer)."})
    dst: str = field(metadata={"help": "Folder to write (replaced as a whole; must be new or a converter output)."})
    direction: str = field(default="auto", metadata={
        "help": "to-scm, to-paper, auto (from SRC's model_type), or upgrade (this project's SCM folder saved before "
                "config.json recorded holistic_pooling and max_prompt_tokens).",
        "choices": list(DIRECTIONS)})
    theta: float = field(default=0.5, metadata={"help": "to-scm: the checkpoint's default harmful-token threshold."})
    delay_k: int = field(default=1, metadata={"help": "to-scm: the checkpoint's default delay-k."})

    def __post_init__(self) -> None:
        if not 0.0 <= self.theta <= 1.0:
            raise ValueError(f"--theta must be in [0, 1], got {self.theta}")
        require_at_least(self, 1, "delay_k")


def main(args: ConvertArguments) -> dict[str, Any]:
    """Convert SRC into DST.

    Returns:
        A summary (direction, tensors, shards, tokenizer files).

    Raises:
        FileNotFoundError, ConversionError, FileExistsError: see the module docstring and the messages.
    """
    src, dst = Path(args.src), Path(args.dst)
    if src.resolve() == dst.resolve():
        raise ValueError("SRC and DST are the same folder; write the converted checkpoint to a new folder")
    direction = args.direction
    if direction == "auto":
        direction = "to-paper" if read_config(src).get("model_type") == "scm" else "to-scm"
    if direction == "to-scm":
        summary = to_scm(src, dst, args.theta, args.delay_k)
    elif direction == "to-paper":
        summary = to_paper(src, dst)
    else:
        summary = upgrade(src, dst)
    print(f"[convert_checkpoint] {args.src} -> {args.dst} ({summary['direction']}: {summary['tensors']} tensors "
          f"from {summary['shards']} file(s), tokenizer files: {', '.join(summary['tokenizer_files']) or 'none'})",
          file=sys.stderr)
    if "note" in summary:
        print(f"[convert_checkpoint] note: {summary['note']}", file=sys.stderr)
    return summary


def parse_args(argv: list[str] | None = None) -> ConvertArguments:
    """``SRC DST [flags]`` (or ``--src SRC --dst DST``).

    Raises:
        SystemExit: an unknown flag or a bad value, with the fix.
    """
    from utils.cli import parse_dataclasses

    argv = list(sys.argv[1:] if argv is None else argv)
    positional = []
    while argv and not argv[0].startswith("-") and len(positional) < 2:
        positional.append(argv.pop(0))
    argv = [*(item for pair in zip(("--src", "--dst"), positional) for item in pair), *argv]
    (args,) = parse_dataclasses((ConvertArguments,), argv, prog="python -m model.convert_checkpoint SRC DST")
    return args


def run(argv: list[str] | None = None) -> int:
    """Command-line entry: a user mistake ends in one message (exit 1), never a traceback."""
    try:
        main(parse_args(argv))
    except (FileNotFoundError, FileExistsError, DataFormatError, ValueError) as err:
        print(f"[convert_checkpoint] error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run())
