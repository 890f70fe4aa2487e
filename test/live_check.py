"""Live check, steps 2-3: the monitors in front of the embedded generator's own answers (``test/live_generate.py``)
to realmix test prompts or to the project's own prompt set (``test/live_prompts.jsonl``), at the operating points
they were given on validation.

``build`` turns (prompt, generated answer, label) into a FineHarm-format folder (``test_new.json`` only): the prompt
is read back by the answer's key, from the realmix split (``--input-dir``) or from the prompt set (``--prompts``), and
its SHA-256 is checked; the answer is split into sentences at its line breaks (blank lines dropped; FineHarm's
processing joins sentences with "\\n"), and every sentence and word gets the answer's label from ``labels.jsonl``
(1 = harmful compliance, ``results/live-check/LABELLING.md``, ``results/live-check-own/LABELLING.md``). Token labels
are therefore coarse; the live check reports response-level outcomes only. Empty answers are left out (counted in the
manifest). With ``--prompts`` the manifest also keeps each request's intent, harm category and ``sounds_dangerous``.

``run`` evaluates one monitor on that folder: it processes the folder with the tokenizer and prompt truncation of
the monitor's realmix evaluation data (that evaluation's ``summary.json``; without ``--realmix-eval``, what the
checkpoint records of its training data), scores every answer prefix with the monitor's partial-detection entry point
(``test.test_qwen_partial`` for SCM's token scorer and the Qwen-arch baseline's holistic head,
``test.test_modernbert_partial``, ``test.test_lexical --mode partial``), applies the operating points named by
``--operating-points`` and writes ``<output-dir>/runs/<name>.json``. A point is ``served`` (what the checkpoint
serves with no flag, resolved by ``serve/operating_point.py``: the default of its ``operating_point.json``, else its
config's theta, delay_k and scorer), a rule of the realmix summary (default: both leak-free rules) or a rule of the
checkpoint's ``operating_point.json`` (e.g. ``leak_free_budget``); each point keeps its own scorer and says where it
came from. Per point: stop rate on harmful compliance, false stops on benign answers (split into answers to harmful
requests, i.e. refusals and deflections, and answers to benign requests; for the prompt set also the benign requests
that sound dangerous and the everyday ones), stops by kind of answer and by harm category, and where harmful answers
were stopped (mean share of tokens seen), plus each answer's outcome.

``table`` gathers the run files into ``<output-dir>/live-check.md``.

Commands (``bash scripts/run-live-check.sh`` chains them; ``PROMPTS=test/live_prompts.jsonl`` for the prompt set)::

    python -m test.live_check build --answers results/live-check/answers.jsonl \
        --labels results/live-check/labels.jsonl --input-dir ../shared/data/realmix \
        --output-dir runs/live-check/fineharm
    python -m test.live_check run --name lexical --model-path runs/realmix/cpu/lexical \
        --realmix-eval results/realmix/lexical-partial --fineharm-dir runs/live-check/fineharm \
        --work-dir runs/live-check --output-dir results/live-check
    python -m test.live_check table --output-dir results/live-check

    python -m test.live_check build --answers results/live-check-own/answers.jsonl \
        --labels results/live-check-own/labels.jsonl --prompts test/live_prompts.jsonl \
        --output-dir runs/live-check-own/fineharm
    python -m test.live_check run --name scm --model-path runs/realmix2/cpu/scm \
        --operating-points served,leak_free_budget --fineharm-dir runs/live-check-own/fineharm \
        --work-dir runs/live-check-own --output-dir results/live-check-own
    python -m test.live_check table --output-dir results/live-check-own
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from test.live_prompts import HARM_CATEGORIES
from utils.cli import parse_command
from utils.data.fineharm import SPLIT_FILES, load_split, validate_example
from utils.decision_rules import make_rule
from utils.evaluation.operating_point import OPERATING_POINT_FILE
from utils.io_utils import DataFormatError, atomic_write, read_json, read_jsonl, staged_output_dir, write_json

MANIFEST_NAME = "live-check.json"
RULE_NAMES = {"leak_free": "best", "leak_free_early": "early", "leak_free_budget": "budget"}
SCORER_BY_TASK = {"scm": "token", "qwen-full": "holistic", "encoder-full": "holistic", "lexical": "holistic"}


# ----------------------------------------------------------------------------------------------------------- build


def answer_record(prompt: str, answer: str, label: int) -> dict[str, Any] | None:
    """A FineHarm record for one generated answer (None when the answer holds no text)."""
    sentences = [line.strip() for line in answer.splitlines() if line.strip()]
    if not sentences:
        return None
    words = [sentence.split() for sentence in sentences]
    return {"prompt": prompt, "response": "\n".join(sentences), "sentences": sentences,
            "sentence_labels": [label] * len(sentences), "words": words,
            "word_labels": [[label] * len(w) for w in words]}


KINDS = ("help", "compliant-form", "deflection", "refusal", "degenerate", "benign-request")


def read_labels(path: str | Path, keys: set[str]) -> dict[str, dict[str, Any]]:
    """``{key: {"label": 0/1, "kind": str | None}}`` from ``labels.jsonl``; every answer needs exactly one label.

    Raises:
        DataFormatError: a bad or repeated label, an unknown kind, a key with no answer, or an answer with no label
            (named).
    """
    labels: dict[str, dict[str, Any]] = {}
    for line, record in enumerate(read_jsonl(path), start=1):
        key, value, kind = record.get("key"), record.get("harmful_compliance"), record.get("kind")
        if value not in (0, 1) or isinstance(value, bool):
            raise DataFormatError(f"{path}, line {line}: 'harmful_compliance' must be 0 or 1, got {value!r}")
        if kind is not None and (kind not in KINDS or (kind == "help") != (value == 1)):
            raise DataFormatError(f"{path}, line {line}: 'kind' {kind!r} must be one of {', '.join(KINDS)}, and "
                                  f"'help' exactly when harmful_compliance is 1")
        if key in labels:
            raise DataFormatError(f"{path}, line {line}: key {key!r} is labelled twice")
        if key not in keys:
            raise DataFormatError(f"{path}, line {line}: key {key!r} has no answer in the answers file")
        labels[key] = {"label": value, "kind": kind}
    missing = sorted(keys - set(labels))
    if missing:
        raise DataFormatError(f"{path}: {len(missing)} answers have no label (first: {missing[0]}); label every "
                              f"answer as LABELLING.md says")
    return labels


@dataclass
class BuildArguments:
    """Flags of ``python -m test.live_check build``."""

    answers: str = field(metadata={"help": "answers.jsonl from python -m test.live_generate."})
    labels: str = field(metadata={"help": "labels.jsonl: {\"key\", \"harmful_compliance\": 0/1, \"kind\", \"note\"} "
                                          "per answer."})
    output_dir: str = field(metadata={"help": "FineHarm-format folder to write (test_new.json + live-check.json)."})
    input_dir: str | None = field(default=None, metadata={
        "help": "The FineHarm-format folder the prompts came from (realmix); or use --prompts."})
    prompts: str | None = field(default=None, metadata={
        "help": "The prompt set the answers were generated from (e.g. test/live_prompts.jsonl), instead of "
                "--input-dir."})
    split: str = field(default="test", metadata={"help": "Split the prompts came from (with --input-dir).",
                                                 "choices": list(SPLIT_FILES)})


def _prompt_of(answer: dict[str, Any], line: int, args: BuildArguments, source: Any) -> str:
    """The prompt an answer replies to, checked against its SHA-256 (``source``: the realmix split's records, or
    the prompt set's records by id)."""
    from test.live_generate import prompt_sha256

    if args.prompts is not None:
        record = source.get(answer["key"])
        if record is None or prompt_sha256(record["prompt"]) != answer["prompt_sha256"]:
            raise DataFormatError(f"{args.answers}, line {line}: key {answer['key']} is not a prompt of {args.prompts}"
                                  f" (or its text changed since the answer was generated); pass the prompt set the "
                                  f"answers were generated from")
        return record["prompt"]
    if "indices" not in answer:
        raise DataFormatError(f"{args.answers}, line {line}: answer {answer['key']!r} has no realmix indices; answers "
                              f"to a prompt set are built with --prompts, not --input-dir")
    index = answer["indices"][0]
    if not 0 <= index < len(source) or prompt_sha256(source[index]["prompt"]) != answer["prompt_sha256"]:
        raise DataFormatError(f"{args.answers}, line {line}: key {answer['key']} does not match the prompt at "
                              f"index {index} of {args.input_dir} ({args.split}); pass the folder and split the "
                              f"answers were generated from")
    return source[index]["prompt"]


def build(args: BuildArguments) -> dict[str, Any]:
    """Write the FineHarm-format folder; returns its manifest (``live-check.json``: per record its key, label and
    whether its prompt requests harm).

    With ``--prompts`` each entry also carries the prompt set's ``intent``, ``category`` and ``sounds_dangerous``.

    Raises:
        FileNotFoundError / DataFormatError: missing files, a prompt hash that does not match, bad labels.
        ValueError: neither or both of --input-dir and --prompts.
    """
    if (args.input_dir is None) == (args.prompts is None):
        raise ValueError("pass exactly one of --input-dir (the realmix folder the answers' prompts came from) and "
                         "--prompts (the prompt set, e.g. test/live_prompts.jsonl)")
    answers = read_jsonl(args.answers)
    if args.prompts is not None:
        from test.live_prompts import read_prompts

        source: Any = {r["id"]: r for r in read_prompts(args.prompts)}
    else:
        source = load_split(Path(args.input_dir) / SPLIT_FILES[args.split])
    labels = read_labels(args.labels, {a["key"] for a in answers})
    records, entries, empty = [], [], []
    for line, answer in enumerate(answers, start=1):
        prompt = _prompt_of(answer, line, args, source)
        label = labels[answer["key"]]["label"]
        record = answer_record(prompt, answer["answer"], label)
        if record is None:
            empty.append(answer["key"])
            continue
        validate_example(record, len(records), f"{args.answers} ({answer['key']})")
        records.append(record)
        entry = {"id": f"test-{len(records) - 1:05d}", "key": answer["key"], "label": label,
                 "kind": labels[answer["key"]]["kind"], "requests_harm": bool(answer["requests_harm"]),
                 "source": answer.get("source")}
        if args.prompts is not None:
            entry.update({name: source[answer["key"]][name] for name in ("intent", "category", "sounds_dangerous")})
            entry["requests_harm"] = source[answer["key"]]["intent"] == "harmful"
        entries.append(entry)
    manifest = {"format_version": 1, "answers": args.answers, "labels": args.labels,
                "prompts": args.prompts or f"{args.input_dir} ({args.split})",
                "prompt_set": "own" if args.prompts is not None else "realmix", "records": len(records),
                "harmful_compliance": sum(e["label"] for e in entries), "empty_answers_left_out": empty,
                "entries": entries}
    with staged_output_dir(args.output_dir, (SPLIT_FILES["test"], MANIFEST_NAME)) as tmp:
        write_json(tmp / SPLIT_FILES["test"], records)
        write_json(tmp / MANIFEST_NAME, manifest)
    print(f"[live_check] {len(records)} answers ({manifest['harmful_compliance']} harmful compliance, "
          f"{len(empty)} empty left out) -> {args.output_dir}", file=sys.stderr)
    return manifest


# ------------------------------------------------------------------------------------------------------------- run


def operating_point(summary: dict[str, Any], scorer: str, which: str, where: str) -> tuple[float, int]:
    """``(theta, k)`` of ``summary["partial"][scorer][which]``.

    Raises:
        DataFormatError: the summary has no such partial scorer or operating point (naming ``where``).
    """
    partial = (summary.get("partial") or {}).get(scorer)
    if not partial:
        raise DataFormatError(f"{where}: no partial-detection results for scorer {scorer!r} (has "
                              f"{sorted(summary.get('partial') or {})}); pass the monitor's partial evaluation folder")
    point = partial.get(which)
    if not isinstance(point, dict) or "theta" not in point or "k" not in point:
        raise DataFormatError(f"{where}: partial.{scorer} has no operating point {which!r}; choose one of "
                              f"{sorted(k for k, v in partial.items() if isinstance(v, dict) and 'k' in v)}")
    return float(point["theta"]), int(point["k"])


def served_default(model_path: str | Path, task: str) -> dict[str, Any]:
    """The operating point a checkpoint serves with no flag, resolved as serving resolves it
    (:func:`serve.operating_point.resolve_operating_point`: the default entry of its ``operating_point.json``, else
    its config's theta, delay_k and scorer).

    Returns:
        ``{"theta", "k", "scorer", "rule", "from"}`` (``from``: serving's one-line description of the origin) plus
        ``selection`` and ``validation`` (the file's rule and its numbers on the split it was chosen on; None when
        the config's training default is served).

    Raises:
        DataFormatError: a checkpoint the streaming monitor does not serve (not an SCM-architecture checkpoint) and
            whose folder holds no ``operating_point.json`` to say what it would serve; a malformed file.
    """
    from serve.operating_point import resolve_operating_point
    from utils.evaluation.operating_point import read_operating_point

    if task not in ("scm", "qwen-full") and read_operating_point(model_path) is None:
        raise DataFormatError(f"{model_path}: a {task!r} checkpoint is not served by the streaming monitor and holds "
                              f"no {OPERATING_POINT_FILE}, so it has no served point; choose rules such as "
                              f"leak_free,leak_free_early with --realmix-eval")
    config = read_json(Path(model_path) / "config.json")
    if task in ("scm", "qwen-full"):
        from model.modeling_qwen4dual_2CE_w_logic import SCMConfig

        config = SCMConfig.from_pretrained(model_path)  # the defaults a config.json may leave out
    served = resolve_operating_point(str(model_path), config)
    return {"theta": served.theta, "k": served.k, "scorer": served.scorer, "rule": served.rule,
            "from": served.description, "selection": served.selection,
            "validation": (served.entry or {}).get("validation")}


class PointUnavailable(Exception):
    """A rule the checkpoint's evaluation ran but chose no point for (e.g. no point meets the budget)."""


def checkpoint_point(model_path: str | Path, rule: str, scorer: str | None) -> dict[str, Any]:
    """Rule ``rule`` (``leak_free``, ``leak_free_early``, ``leak_free_budget`` or ``budget``) of the checkpoint's
    ``operating_point.json``, for ``scorer`` (None: the scorer the file serves).

    Raises:
        DataFormatError: no file, a scorer or rule the file does not know (naming what it has).
        PointUnavailable: the file records the rule as chosen-nothing (its reason is the message).
    """
    from utils.evaluation.operating_point import (SELECTION_ALIASES, read_operating_point, recorded_scorers,
                                                  scorer_points)

    content = read_operating_point(model_path)
    path = Path(model_path) / OPERATING_POINT_FILE
    if content is None:
        raise DataFormatError(f"{path} does not exist: the checkpoint carries no operating points (its partial "
                              f"evaluation writes them); use served, or pass --realmix-eval for the summary's")
    scorer = scorer or content["scorer"]
    recorded = scorer_points(content, scorer)
    if recorded is None:
        raise DataFormatError(f"{path} holds no points for the {scorer} scorer (it has "
                              f"{', '.join(recorded_scorers(content))}); leave --scorer out")
    selection = SELECTION_ALIASES.get(rule)
    entry = recorded["points"].get(selection) if selection else None
    if not isinstance(entry, dict) or entry.get("theta") is None or entry.get("k") is None:
        if selection in recorded["unavailable"]:
            raise PointUnavailable(f"{path}: {recorded['unavailable'][selection]}")
        raise DataFormatError(f"{path} has no operating point {rule!r} for the {scorer} scorer; choose one of "
                              f"{sorted(recorded['points'])} or served")
    return {"theta": float(entry["theta"]), "k": int(entry["k"]), "scorer": entry.get("scorer") or scorer,
            "rule": entry.get("rule") or "delay-k", "from": f"{path} ({selection}, {scorer} scorer)",
            "selection": selection, "validation": entry.get("validation")}


def resolve_points(names: list[str], model_path: str, task: str, summary: dict[str, Any] | None,
                   summary_path: str | None, scorer: str | None
                   ) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Each ``--operating-points`` name as ``{"theta", "k", "scorer", "rule", "from", ...}``.

    ``served`` is what the checkpoint serves with no flag (:func:`served_default`); ``checkpoint:NAME`` an entry of
    its ``operating_point.json`` (``budget`` stands for ``leak_free_budget``); ``summary:NAME`` an operating point of
    the realmix evaluation summary (``partial.<scorer>.NAME``); a bare ``NAME`` the summary's when a summary is
    given and has it, else the checkpoint's.

    Returns:
        ``(points by name, unavailable)``: ``unavailable`` maps names whose rule the checkpoint's evaluation ran but
        chose no point for (e.g. no point meets its benign-stop budget) to the file's reason; they are skipped.

    Raises:
        DataFormatError: a name found in neither place (the message lists what there is).
        ValueError: a malformed name, ``summary:NAME`` without a summary, ``--scorer`` contradicting the served
            point's scorer.
    """
    default_scorer = scorer or SCORER_BY_TASK[task]
    points: dict[str, dict[str, Any]] = {}
    unavailable: dict[str, str] = {}
    for name in names:
        where, _, rule = name.rpartition(":")
        if where not in ("", "summary", "checkpoint") or not rule:
            raise ValueError(f"--operating-points: {name!r} is not served, NAME, summary:NAME or checkpoint:NAME")
        in_summary = summary is not None and rule in ((summary.get("partial") or {}).get(default_scorer) or {})
        if rule == "served" and not where:
            point = served_default(model_path, task)
            if scorer is not None and point["scorer"] != scorer:
                raise ValueError(f"--scorer {scorer} contradicts the served point ({point['from']}); leave --scorer "
                                 f"out")
        elif where == "summary" or (not where and in_summary):
            if summary is None:
                raise ValueError(f"--operating-points {name}: pass --realmix-eval (the summary to read it from)")
            theta, k = operating_point(summary, default_scorer, rule, str(summary_path))
            point = {"theta": theta, "k": k, "scorer": default_scorer, "rule": "delay-k",
                     "from": f"{summary_path} (partial.{default_scorer}.{rule})"}
        else:
            try:
                point = checkpoint_point(model_path, rule, scorer)
            except PointUnavailable as why:
                unavailable[name] = str(why)
                continue
            except DataFormatError as err:
                if summary is None or where:
                    raise
                raise DataFormatError(f"--operating-points {name}: {summary_path} has no such point for the "
                                      f"{default_scorer} scorer, and {err}") from err
        make_rule(point["rule"], point["k"])  # an unknown rule or a bad k fails here, naming it
        points[name] = point
    if not points:
        raise DataFormatError(f"none of the operating points {names} is available: {unavailable}")
    return points, unavailable


def outcome_summary(records: list[dict[str, Any]], entries: dict[str, dict], scorer: str, theta: float, k: int,
                    rule: str = "delay-k") -> dict[str, Any]:
    """Stops at (theta, k): on harmful compliance, on benign answers (by request kind), and where they happened.

    Args:
        records: prediction records of the live-check folder.
        entries: manifest entries by processed id (``label``, ``requests_harm``, ``key``; for the project's own
            prompt set also ``sounds_dangerous`` and ``category``).
        scorer, theta, k, rule: the operating point (``rule`` delay-k or consecutive-n).

    Returns:
        Per group (``harmful_compliance``; ``benign`` = ``benign_to_harmful_request`` + ``benign_to_benign_request``;
        for a prompt set, the benign requests that ``sounds_dangerous`` and the ``everyday`` ones): answers, stops,
        stop rate, mean share and number of tokens seen at the stops; ``by_kind``, ``by_category`` (answers to
        harmful requests) and each answer's outcome.
    """
    decide = make_rule(rule, k)
    groups: dict[str, list[dict]] = {"harmful_compliance": [], "benign_to_harmful_request": [],
                                     "benign_to_benign_request": []}
    answers = []
    for record in records:
        entry = entries[record["id"]]
        scores = record["scores"][scorer]
        stop = decide.stop_index([s >= theta for s in scores])
        n = record["n_response_tokens"]
        outcome = {"key": entry["key"], "label": record["label"], "kind": entry.get("kind"),
                   "requests_harm": entry["requests_harm"],
                   **{name: entry[name] for name in ("category", "sounds_dangerous") if name in entry},
                   "n_tokens": n, "stop_index": stop, "share_seen": None if stop is None else (stop + 1) / n,
                   "max_score": max(scores, default=None)}
        answers.append(outcome)
        group = ("harmful_compliance" if record["label"] else
                 "benign_to_harmful_request" if entry["requests_harm"] else "benign_to_benign_request")
        groups[group].append(outcome)

    def stats(items: list[dict]) -> dict[str, Any]:
        stopped = [o for o in items if o["stop_index"] is not None]
        shares = [o["share_seen"] for o in stopped]
        return {"answers": len(items), "stopped": len(stopped),
                "stop_rate": len(stopped) / len(items) if items else None,
                "mean_share_seen": sum(shares) / len(shares) if shares else None,
                "mean_tokens_seen": sum(o["stop_index"] + 1 for o in stopped) / len(stopped) if stopped else None}

    benign = groups["benign_to_harmful_request"] + groups["benign_to_benign_request"]
    kinds = sorted({o["kind"] for o in answers if o["kind"]}, key=lambda k: KINDS.index(k))
    result = {"harmful_compliance": stats(groups["harmful_compliance"]), "benign": stats(benign),
              **{name: stats(items) for name, items in groups.items() if name != "harmful_compliance"}}
    to_benign = groups["benign_to_benign_request"]
    if any(o.get("sounds_dangerous") is not None for o in to_benign):
        result["sounds_dangerous"] = stats([o for o in to_benign if o.get("sounds_dangerous")])
        result["everyday"] = stats([o for o in to_benign if o.get("sounds_dangerous") is False])
    result["by_kind"] = {kind: stats([o for o in answers if o["kind"] == kind]) for kind in kinds}
    categories = [c for c in HARM_CATEGORIES if any(o.get("category") == c for o in answers)]
    if categories:
        result["by_category"] = {c: {**stats([o for o in answers if o.get("category") == c]),
                                     "harmful_compliance": sum(o["label"] for o in answers if o.get("category") == c)}
                                 for c in categories}
    result["answers"] = answers
    return result


@dataclass
class RunArguments:
    """Flags of ``python -m test.live_check run``."""

    name: str = field(metadata={"help": "Row name (e.g. scm, qwen-partial, encoder-partial, lexical)."})
    model_path: str = field(metadata={"help": "The monitor's checkpoint folder."})
    fineharm_dir: str = field(metadata={"help": "The folder written by `build`."})
    work_dir: str = field(metadata={"help": "Where the processed data and the evaluation go (<work>/<name>/...)."})
    output_dir: str = field(metadata={"help": "Where runs/<name>.json goes."})
    realmix_eval: str | None = field(default=None, metadata={
        "help": "The monitor's partial-detection evaluation folder on realmix (its summary.json gives operating "
                "points, tokenizer and prompt cut). Optional when every point comes from the checkpoint (served, "
                "checkpoint:NAME); the tokenizer and prompt cut then come from the checkpoint."})
    scorer: str | None = field(default=None, metadata={
        "help": "Scorer of the summary's points (default: token for SCM, else holistic); a checkpoint's points carry "
                "their own."})
    operating_points: str = field(default="leak_free,leak_free_early", metadata={
        "help": "Comma-separated operating points: served (what the checkpoint serves with no flag, resolved as "
                "serve/operating_point.py resolves it: the default of its operating_point.json, else its config's "
                "theta/delay_k/scorer), NAME (the realmix summary's partial.<scorer>.NAME when --realmix-eval has it, "
                "else the checkpoint's operating_point.json rule: leak_free, leak_free_early, leak_free_budget or "
                "budget), summary:NAME or checkpoint:NAME. A checkpoint rule its evaluation chose no point for is "
                "skipped and recorded. Default: both leak-free rules."})
    tokenizer_path: str | None = field(default=None, metadata={
        "help": "Tokenizer to process with (default: the one the realmix evaluation's data was processed with, "
                "found as processing_tokenizer says)."})


def checkpoint_data_meta(model_path: str | Path) -> dict[str, Any]:
    """What the checkpoint records of the data it was trained on: ``tokenizer``, ``vocab_size`` and
    ``max_prompt_tokens`` (the prompt cut), from its ``config.json`` (an SCM config's ``max_prompt_tokens``, the
    lexical floor's ``text`` and ``data.meta``) or else its ``training_summary.json``; keys it lacks are left out
    (processing then uses the checkpoint's own tokenizer and whole prompts)."""
    from model.convert_checkpoint import summary_prompt_cut

    path = Path(model_path)
    config = read_json(path / "config.json") if (path / "config.json").is_file() else {}
    meta: dict[str, Any] = {}
    text, data_meta = config.get("text") or {}, (config.get("data") or {}).get("meta") or {}
    if text.get("tokenizer"):
        meta.update(tokenizer=text["tokenizer"], vocab_size=text.get("vocab_size"))
    if "max_prompt_tokens" in config:
        meta["max_prompt_tokens"] = config["max_prompt_tokens"]
    elif isinstance(data_meta, dict) and "max_prompt_tokens" in data_meta:
        meta["max_prompt_tokens"] = data_meta["max_prompt_tokens"]
    else:
        meta["max_prompt_tokens"] = summary_prompt_cut(path)
    return meta


def processing_tokenizer(data_meta: dict[str, Any], model_path: str, where: str) -> str:
    """The tokenizer the monitor's realmix data was processed with, found where it is on this machine.

    Tries, in order: the path the evaluation's data meta records; the checkpoint folder (neural checkpoints keep
    their tokenizer); the folder the lexical floor's config names; the embedded asset of the same folder name
    (summaries carry repository-relative paths, which another checkout resolves elsewhere). A candidate must have the
    recorded vocabulary size.

    Raises:
        FileNotFoundError: none fits (the message says to pass --tokenizer-path).
    """
    from model import assets
    from utils.data_process import load_tokenizer

    recorded = data_meta.get("tokenizer")
    candidates = [recorded, model_path if (Path(model_path) / "tokenizer_config.json").is_file() else None]
    config = Path(model_path) / "config.json"
    if config.is_file():
        candidates.append(((read_json(config).get("text") or {}).get("tokenizer")))
    if recorded:
        embedded = {"smollm2-135m-instruct": assets.smollm2_path, "minilm-l6-v2": assets.minilm_path,
                    "qwen2.5-tokenizer": assets.qwen_tokenizer_path}
        if Path(recorded).name in embedded:
            candidates.append(str(embedded[Path(recorded).name]()))
    vocab = data_meta.get("vocab_size")
    for candidate in candidates:
        if candidate and Path(candidate).is_dir() and (vocab is None or len(load_tokenizer(candidate)) == vocab):
            return str(candidate)
    raise FileNotFoundError(f"{where}: its data's tokenizer {recorded!r} is not here and no other candidate has its "
                            f"{vocab} entries; pass --tokenizer-path (the tokenizer the monitor's data was processed "
                            f"with)")




def _evaluate(task: str, scorers: list[str], model_path: str, data_dir: Path, output_dir: Path) -> None:
    """The monitor's own partial-detection entry point on the live folder's test split, writing ``scorers``."""
    common = ["--model-path", model_path, "--data-dir", str(data_dir), "--output-dir", str(output_dir),
              "--splits", "test"]
    if task in ("scm", "qwen-full"):
        from test import test_qwen_partial as entry

        argv = [*common, "--scorer", "both" if len(scorers) > 1 else scorers[0]]
    elif task == "encoder-full":
        from test import test_modernbert_partial as entry

        argv = common
    elif task == "lexical":
        from test import test_lexical as entry

        argv = [*common, "--mode", "partial"]
    else:
        raise ValueError(f"{model_path}: task {task!r} has no partial-detection entry point")
    entry.main(entry.parse_args(argv))


def run(args: RunArguments) -> dict[str, Any]:
    """Process, score and summarise one monitor; returns (and writes) its run record.

    Raises:
        FileNotFoundError / DataFormatError / ValueError: missing inputs, an operating point found nowhere, a
            checkpoint the summary was not made with.
    """
    from utils.data_process import DataProcessArguments
    from utils.data_process import main as process
    from utils.evaluation.scoring import checkpoint_task
    from utils.evaluation.predictions import predictions_path, read_predictions

    task = checkpoint_task(args.model_path)
    summary, summary_path = None, None
    if args.realmix_eval is not None:
        summary_path = Path(args.realmix_eval) / "summary.json"
        if not summary_path.is_file():
            raise FileNotFoundError(f"{summary_path} not found: pass the monitor's realmix partial evaluation folder")
        summary = read_json(summary_path)
        if summary.get("model", {}).get("task") != task:
            raise ValueError(f"{args.realmix_eval} evaluated a {summary.get('model', {}).get('task')!r} model but "
                             f"{args.model_path} is {task!r}; pair each checkpoint with its own evaluation")
    names = [r.strip() for r in args.operating_points.split(",") if r.strip()]
    if not names:
        raise ValueError("--operating-points is empty; use e.g. served,leak_free,leak_free_early")
    points, unavailable = resolve_points(names, args.model_path, task, summary,
                                         str(summary_path) if summary_path else None, args.scorer)
    for name, why in unavailable.items():
        print(f"[live_check] {args.name}: operating point {name} skipped: {why}", file=sys.stderr)
    scorers = sorted({p["scorer"] for p in points.values()}, key=["token", "holistic"].index)
    if summary is not None:
        data_meta, meta_from = summary.get("data", {}).get("meta", {}), str(summary_path)
    else:
        data_meta, meta_from = checkpoint_data_meta(args.model_path), args.model_path
    tokenizer = args.tokenizer_path or processing_tokenizer(data_meta, args.model_path, meta_from)
    work = Path(args.work_dir) / args.name
    data_dir, eval_dir = work / "data", work / "eval"
    started = time.perf_counter()
    process(DataProcessArguments(output_dir=str(data_dir), tokenizer_path=tokenizer, input_dir=args.fineharm_dir,
                                 splits=["test"], max_prompt_tokens=data_meta.get("max_prompt_tokens")))
    _evaluate(task, scorers, args.model_path, data_dir, eval_dir)
    manifest = read_json(Path(args.fineharm_dir) / MANIFEST_NAME)
    entries = {e["id"]: e for e in manifest["entries"]}
    records = read_predictions(predictions_path(eval_dir, "test"), require_scores=scorers)
    result = {
        "format_version": 1, "name": args.name, "task": task, "scorer": scorers[0], "model_path": args.model_path,
        "prompt_set": manifest.get("prompt_set", "realmix"), "prompts": manifest.get("prompts"),
        "operating_points_from": None if summary_path is None else str(summary_path),
        "data": {"tokenizer": tokenizer, "max_prompt_tokens": data_meta.get("max_prompt_tokens"),
                 "answers": len(records)},
        "points": {name: {**point, **outcome_summary(records, entries, point["scorer"], point["theta"], point["k"],
                                                     point["rule"])}
                   for name, point in points.items()},
        "unavailable_points": unavailable,
        "seconds": round(time.perf_counter() - started, 1),
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(Path(args.output_dir) / "runs" / f"{args.name}.json", result)
    return result


# ----------------------------------------------------------------------------------------------------------- table


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _cell(group: dict[str, Any] | None) -> str:
    return "–" if not group else f"{_pct(group['stop_rate'])}% ({group['stopped']}/{group['answers']})"


def _rule_name(rule: str, point: dict[str, Any]) -> str:
    """How a point is named in the tables: the short rule name; ``served (best)`` for the served point that a rule of
    the checkpoint's operating_point.json gave; the decision rule when it is not delay-k."""
    name = RULE_NAMES.get(rule, rule)
    if rule == "served" and point.get("selection"):
        name += f" ({RULE_NAMES.get(point['selection'], point['selection'])})"
    if point.get("rule", "delay-k") != "delay-k":
        name += f" ({point['rule']})"
    return name


def _rule_cells(r: dict[str, Any], rule: str, point: dict[str, Any]) -> list[str]:
    return [r["name"], point.get("scorer", r["scorer"]), _rule_name(rule, point), f"{point['theta']:g}",
            str(point["k"])]


def live_table(runs: list[dict[str, Any]]) -> str:
    """The markdown tables of several run records: one row per monitor and operating point.

    Runs on the project's own prompt set (``prompt_set`` own) get its columns: stops of substantive help, false stops
    on benign requests (all, those that sound dangerous, everyday ones) and stops on answers to harmful requests that
    give no substantive help.
    """
    own = bool(runs) and all(r.get("prompt_set") == "own" for r in runs)
    if own:
        header = ["Monitor", "Scorer", "Rule", "θ", "k", "Stopped substantive help", "Seen (share)", "Seen (tokens)",
                  "False stops, benign requests", "… sounding dangerous", "… everyday",
                  "Stops, harmful requests without substance"]
    else:
        header = ["Monitor", "Scorer", "Rule", "θ", "k", "Stopped harmful compliance", "Seen (share)",
                  "Seen (tokens)", "False stops, benign answers", "… to harmful requests", "… to benign requests"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = [(r, rule, point) for r in runs for rule, point in r["points"].items()]
    for r, rule, point in rows:
        h = point["harmful_compliance"]
        seen = [_pct(h["mean_share_seen"]), "–" if h["mean_tokens_seen"] is None else f"{h['mean_tokens_seen']:.1f}"]
        if own:
            rest = [_cell(point["benign_to_benign_request"]), _cell(point.get("sounds_dangerous")),
                    _cell(point.get("everyday")), _cell(point["benign_to_harmful_request"])]
        else:
            rest = [_cell(point["benign"]), _cell(point["benign_to_harmful_request"]),
                    _cell(point["benign_to_benign_request"])]
        lines.append("| " + " | ".join([*_rule_cells(r, rule, point), _cell(h), *seen, *rest]) + " |")
    kinds = [k for k in KINDS if any(k in point.get("by_kind", {}) for _, _, point in rows)]
    if kinds:
        lines += ["", "Stops by kind of answer (`LABELLING.md`):", "",
                  "| Monitor | Rule | " + " | ".join(kinds) + " |", "|---|---|" + "---|" * len(kinds)]
        for r, rule, point in rows:
            cells = [_cell(point["by_kind"].get(k)) for k in kinds]
            lines.append(f"| {r['name']} | {_rule_name(rule, point)} | " + " | ".join(cells) + " |")
    categories = [c for c in HARM_CATEGORIES if any(c in point.get("by_category", {}) for _, _, point in rows)]
    if categories:
        lines += ["", "Stops on answers to harmful requests by harm category (substantive help among them in "
                      "brackets):", "",
                  "| Monitor | Rule | " + " | ".join(categories) + " |", "|---|---|" + "---|" * len(categories)]
        for r, rule, point in rows:
            cells = [f"{g['stopped']}/{g['answers']} [{g['harmful_compliance']}]"
                     if (g := point["by_category"].get(c)) else "–" for c in categories]
            lines.append(f"| {r['name']} | {_rule_name(rule, point)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass
class TableArguments:
    """Flags of ``python -m test.live_check table``."""

    output_dir: str = field(metadata={"help": "Folder holding runs/*.json; live-check.md is written there."})


INTRO = {
    "realmix": "Answers to the distinct prompts of realmix test (`answers.jsonl`), labelled by `LABELLING.md` "
               "(`labels.jsonl`); each monitor at its operating points from realmix validation (*best*: the best "
               "validation macro-F1; *early*: the smallest k, then theta, within the selection tolerance of it). "
               "Shares in %; *Seen*: mean share (and number) of its tokens a stopped harmful-compliance answer had "
               "shown.",
    "own": "Answers to the project's own prompts (`test/live_prompts.jsonl`: plainly worded harmful requests and "
           "benign ones, some of which only sound dangerous; `answers.jsonl`), labelled by `LABELLING.md` "
           "(`labels.jsonl`); each monitor at the operating points named in its rows (*served*: what the checkpoint "
           "serves with no flag; *best*, *early*, *budget*: the leak-free rules chosen on validation). Shares in %; "
           "*Seen*: mean share (and number) of its tokens a stopped substantive-help answer had shown.",
}


def table(args: TableArguments) -> str:
    """Write ``<output_dir>/live-check.md`` from ``runs/*.json``; returns the markdown."""
    paths = sorted((Path(args.output_dir) / "runs").glob("*.json"))
    if not paths:
        raise FileNotFoundError(f"no runs/*.json under {args.output_dir}: run `python -m test.live_check run` first")
    runs = [read_json(p) for p in paths]
    own = all(r.get("prompt_set") == "own" for r in runs)
    text = "\n".join([
        "# Live check: monitors in front of SmolLM2-135M-Instruct's own answers"
        + (" to the project's prompts" if own else ""), "",
        INTRO["own" if own else "realmix"], "", live_table(runs), ""])
    with atomic_write(Path(args.output_dir) / "live-check.md") as handle:
        handle.write(text)
    print(text)
    return text


COMMANDS = {"build": (BuildArguments, build), "run": (RunArguments, run), "table": (TableArguments, table)}


def parse_args(argv: list[str] | None = None) -> tuple[str, Any]:
    """``COMMAND FLAGS`` -> ``(COMMAND, its arguments)``; an unknown command or flag exits with status 2."""
    commands = {name: arguments for name, (arguments, _) in COMMANDS.items()}
    return parse_command(commands, argv, "python -m test.live_check")


def main(command: str, args: Any) -> Any:
    """Run one command (:func:`build`, :func:`run` or :func:`table`) and return its result."""
    return COMMANDS[command][1](args)


if __name__ == "__main__":
    main(*parse_args())
