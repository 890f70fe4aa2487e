"""The data card (``README.md``) of an annotated folder: sources, counts, label rules and versions.

``utils/annotation/annotate.py`` gathers the facts into one dictionary (also written as ``annotation.json``); this module only
renders them, so the card and the machine-readable file never disagree.
"""

from __future__ import annotations

from typing import Any

from utils.annotation.text import DISCLAIMER_STARTS, REFUSAL_ANYWHERE, REFUSAL_STARTS

MAX_LISTED_PROBLEMS = 20

JUDGE_RULES = {
    "given": "given in the input (field `{sentences}` / `{sentence_labels}`); the sentences were tokenised as given, "
             "not re-split",
    "propagate": "propagated from the response label: every sentence of a benign response is benign; every sentence "
                 "of a harmful response is harmful{refusal}",
    "scm": "judged by the SCM checkpoint `{checkpoint}`: a sentence is harmful when the {aggregate} of its tokens' "
           "harmful scores (token head, one causal pass over the processed layout) is at least theta = {theta}",
    "openai": "judged by the OpenAI-compatible chat model `{model}` at `{url}` with the judging prompt of "
              "`utils/annotation/judges.py` (JUDGE_SYSTEM_PROMPT), temperature 0, one request per response",
}


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def sentence_rule_text(facts: dict[str, Any]) -> str:
    """One sentence describing where the sentence labels came from."""
    judge = facts["judge"]
    refusal = (", except refusal and disclaimer sentences, which are benign (rule `is_refusal_or_disclaimer` in "
               "`utils/annotation/text.py`)") if judge.get("refusal_rule") else " (no refusal rule)"
    return JUDGE_RULES[judge["kind"]].format(refusal=refusal, **facts["fields"], **judge)


def _response_rule(facts: dict[str, Any]) -> str:
    if not facts.get("has_response_label"):
        return "any sentence label (the input has no response label)."
    if not facts["consistency_filter"]:
        return "the input's label, kept even where the sentence labels disagree (`--no-consistency-filter`)."
    return ("the input's label (or any given sentence label); responses whose sentence labels disagree with it were "
            "dropped (consistency filter: a harmful response needs a harmful sentence, a benign one has none).")


def render_card(facts: dict[str, Any]) -> str:
    """The card's markdown.

    Args:
        facts: the dictionary ``utils.annotation.annotate.main`` writes to ``annotation.json``.

    Returns:
        The text of ``README.md``.
    """
    counts = facts["counts"]
    lines = [
        f"# {facts['title']}",
        "",
        "FineHarm-format data (`train_new.json`, `valid_new.json`, `test_new.json`) written by the SCM project's "
        "annotation pipeline (`utils/annotation/annotate.py`). Train on it with `bash scripts/run-data.sh OUT TOKENIZER "
        "--input-dir THIS_FOLDER` (add `FineHarm` as a second `--input-dir` to mix).",
        "",
        "## Command",
        "",
        "```",
        facts["command"],
        "```",
        "",
        f"Written {facts['written_at']}.",
        "",
        "## Sources",
        "",
    ]
    lines += _table(["input", "records read", "usable", "sha256"],
                    [[f"`{s['path']}`", s["read"], s["usable"], s["sha256"][:16] if s["sha256"] else "-"]
                     for s in facts["sources"]])
    fields = ", ".join(f"{name} = `{value}`" for name, value in facts["fields"].items() if value)
    lines += ["", f"Fields (preset `{facts['preset']}`): {fields}.", "", "## Label rules", ""]
    lines += [
        "- **Sentences and words:** " + (
            "the given sentences, tokenised by spaCy" if facts["judge"]["kind"] == "given" else
            "the response split on newlines, then each line by spaCy's sentence splitter"
        ) + "; words are spaCy tokens without whitespace (punctuation marks are words).",
        f"- **Sentence labels:** {sentence_rule_text(facts)}.",
        f"- **Word labels:** in a harmful sentence the notional words, spaCy Universal POS in "
        f"{', '.join(facts['notional_pos'])}, are 1 and every other word 0; every word of a benign sentence is 0.",
        "- **Response label:** " + _response_rule(facts),
        f"- **Splits:** {facts['split_rule']}.",
    ]
    if facts["judge"]["kind"] == "propagate" and facts["judge"].get("refusal_rule"):
        lines += ["", "Refusal/disclaimer patterns (case-insensitive; after list markers, quotes and discourse words):",
                  f"{len(REFUSAL_STARTS)} refusal starts, {len(DISCLAIMER_STARTS)} disclaimer starts and "
                  f"{len(REFUSAL_ANYWHERE)} phrases matched anywhere; see `utils/annotation/text.py`."]
    lines += ["", "## Counts", ""]
    lines += _table(["step", "responses"], [
        ["read", counts["read"]],
        ["bad records skipped (`--on-error skip`)", counts["problems"]],
        ["exact duplicates dropped (same prompt and response)", counts["duplicates"]],
        *[[f"dropped: {reason}", n] for reason, n in counts["dropped"].items()],
        ["kept", counts["kept"]],
    ])
    lines += ["", ""]
    lines += _table(["split", "file", "responses", "harmful", "sentences", "harmful sentences", "words",
                     "harmful words"],
                    [[name, f"`{s['file']}`", s["responses"], s["harmful"], s["sentences"], s["harmful_sentences"],
                      s["words"], s["harmful_words"]] for name, s in facts["splits"].items()])
    if facts["problems"]:
        lines += ["", f"## Skipped records (first {min(len(facts['problems']), MAX_LISTED_PROBLEMS)} of "
                      f"{counts['problems']})", ""]
        lines += [f"- {problem}" for problem in facts["problems"][:MAX_LISTED_PROBLEMS]]
    lines += ["", "## Versions", ""]
    lines += [f"- {name}: {value}" for name, value in facts["versions"].items()]
    return "\n".join(lines) + "\n"
