"""Harm categories at serving time: which categories stop a stream, which are only annotated, and how they look on
the wire.

A checkpoint with a category head (``SCMConfig.category_labels``, trained with ``--category-head``) gives every
scored token, besides its harmful score, a distribution over the head's categories: ``softmax(category_logits)``,
read as p(category | harmful). The runtime (``serve/monitor.py``) turns it into OpenAI-style category scores:

    category_scores[c] = score x p(c | harmful)      (score: the monitor's harmful score of that token)

so that a category score is p(harmful and of category c) at that token, and the scores of all categories add up to
the token's harmful score. The category *named* at a token is the argmax of the distribution.

Policy (:class:`CategoryPolicy`, flags :class:`CategoryArguments`). When the decision rule (delay-k, consecutive-n)
fires at a token, the category named there decides what happens:

- a **blocked** category (``--block-categories``; default: every category the head knows) whose category score at
  that token reaches its threshold (``--category-thresholds illicit=0.6``; default: none, so any) stops the stream,
  as the rule alone does without a head;
- an **annotated** category (``--annotate-categories``) never stops it: the firing is recorded as an annotation
  (reason ``annotated``) and the stream goes on; so does a blocked category below its threshold (reason
  ``below_threshold``);
- after a firing that did not stop, the rule's state carries on unchanged (delay-k's count keeps counting,
  consecutive-n's run keeps running) and every later *flagged* token at which the rule's condition holds is
  re-evaluated the same way: with delay-k, each later token scoring at least theta; with consecutive-n, each later
  flagged token of a run of at least n. The stream stops at the first of them whose category blocks.

One of the two lists alone takes the rest of the head's categories for the other action; given together they must
name every category, each once. With the default policy (everything blocked, no thresholds) a stop is exactly
where the rule alone stops. A checkpoint without a head has no category to decide on: the category flags are an
error there, and every wire shape is the head-less one.

Wire shapes: :func:`wire_categories` lists OpenAI's thirteen moderation keys always, the project's extra ones
(``utils/data/categories.py``: privacy, misinformation, specialised-advice, other) beside them, then any other
category the head knows; a category the head does not know is ``False`` / ``0.0``. ``harmful`` (the monitor's own
verdict, the only key of a head-less checkpoint) stays first. :func:`azure_filter_results` gives Azure's
``content_filter_results`` with the severity cut-offs of :data:`SEVERITY_CUTOFFS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from utils.data.categories import OPENAI_CATEGORIES, TAXONOMY, parse_category_list

BLOCK, ANNOTATED, BELOW_THRESHOLD = "block", "annotated", "below_threshold"
HARMFUL = "harmful"
ANNOTATION_FORMATS = ("none", "azure")
# Azure severity from a category score (p(harmful and of the category) at a token): the first cut-off the score
# reaches, else "safe". Azure's own scale has four levels (0-7 in steps); these split [0, 1] into four equal bands.
SEVERITY_CUTOFFS = ((0.75, "high"), (0.5, "medium"), (0.25, "low"))
SAFE = "safe"
NO_HEAD_HINT = ("this checkpoint has no category head (config.json category_labels is null); train one with "
                "--category-head (`bash scripts/run-scm.sh ... --category-head`) or leave the category flags out")


@dataclass(frozen=True)
class CategoryPolicy:
    """What a firing of the decision rule does, by the category named at the firing token.

    Attributes:
        labels: the head's categories, in its output order.
        block: categories that stop a stream.
        annotate: categories that never stop a stream (recorded as annotations).
        thresholds: per blocked category, the category score its firing token must reach to stop the stream.

    Raises:
        ValueError: a name the head does not know, a category in both sets or in neither, a threshold outside
            [0, 1] or on a category that is not blocked.
    """

    labels: tuple[str, ...]
    block: frozenset[str]
    annotate: frozenset[str] = frozenset()
    thresholds: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        known = set(self.labels)
        for name in (*self.block, *self.annotate, *self.thresholds):
            if name not in known:
                raise ValueError(f"unknown category {name!r}; this checkpoint's head knows {', '.join(self.labels)}")
        both = sorted(self.block & self.annotate)
        if both:
            raise ValueError(f"categories both blocked and annotated: {', '.join(both)}; name each in one list")
        neither = [name for name in self.labels if name not in self.block and name not in self.annotate]
        if neither:
            raise ValueError(f"categories neither blocked nor annotated: {', '.join(neither)}; give one list alone "
                             f"(the other takes the rest) or name every category")
        for name, value in self.thresholds.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"--category-thresholds {name}={value}: a threshold is a category score in [0, 1]")
            if name not in self.block:
                raise ValueError(f"--category-thresholds {name}={value}: {name} is annotated, and thresholds apply "
                                 f"to blocked categories only (an annotated category never stops a stream)")

    @classmethod
    def block_all(cls, labels: Sequence[str]) -> "CategoryPolicy":
        """The default: every category blocks, no thresholds (stops exactly where the rule alone stops)."""
        return cls(tuple(labels), frozenset(labels))

    @property
    def stops_wherever_the_rule_fires(self) -> bool:
        """Whether every firing stops the stream (then the runtime needs no per-token decision)."""
        return not self.annotate and not self.thresholds

    def decide(self, category: str, category_score: float) -> str:
        """:data:`BLOCK`, :data:`ANNOTATED` or :data:`BELOW_THRESHOLD` for a firing token named ``category``."""
        if category in self.annotate:
            return ANNOTATED
        threshold = self.thresholds.get(category)
        if threshold is not None and category_score < threshold:
            return BELOW_THRESHOLD
        return BLOCK

    def public(self) -> dict[str, Any]:
        """The policy for ``/health`` and reports."""
        return {"block": [n for n in self.labels if n in self.block],
                "annotate": [n for n in self.labels if n in self.annotate],
                "thresholds": {n: self.thresholds[n] for n in self.labels if n in self.thresholds}}


def parse_thresholds(text: str, known: Sequence[str]) -> dict[str, float]:
    """``illicit=0.6,self-harm=0.3`` -> ``{"illicit": 0.6, "self-harm": 0.3}``.

    Raises:
        ValueError: a part without ``=``, a value that is not a number, an unknown name (the known ones listed),
            a category named twice.
    """
    thresholds: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, sep, value = part.rpartition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"--category-thresholds: {part!r} is not CATEGORY=SCORE (e.g. illicit=0.6,self-harm=0.3)")
        if name not in known:
            raise ValueError(f"--category-thresholds: unknown category {name}; known: {', '.join(known)}")
        if name in thresholds:
            raise ValueError(f"--category-thresholds: {name} is given twice")
        try:
            thresholds[name] = float(value)
        except ValueError:
            raise ValueError(f"--category-thresholds {name}={value.strip()}: the threshold is not a number") from None
    return thresholds


def policy_from_flags(labels: Sequence[str] | None, block: str | None = None, annotate: str | None = None,
                      thresholds: str | None = None) -> CategoryPolicy | None:
    """The policy the category flags describe for a head over ``labels`` (None: a head-less checkpoint).

    Args:
        labels: the checkpoint's ``category_labels`` (None or empty: no head).
        block: ``--block-categories`` (comma-separated, ``all``; None: not given).
        annotate: ``--annotate-categories`` (None: not given).
        thresholds: ``--category-thresholds`` (None: not given).

    Returns:
        The policy; None for a head-less checkpoint with no category flag.

    Raises:
        ValueError: a category flag with a head-less checkpoint (naming ``--category-head``), unknown names (the
            message lists the known ones), overlapping or incomplete lists, bad thresholds.
    """
    given = [flag for flag, value in (("--block-categories", block), ("--annotate-categories", annotate),
                                      ("--category-thresholds", thresholds)) if value is not None]
    if not labels:
        if given:
            raise ValueError(f"{', '.join(given)}: {NO_HEAD_HINT}")
        return None
    labels = list(labels)
    blocked = parse_category_list(block, labels, "--block-categories") if block is not None else None
    annotated = parse_category_list(annotate, labels, "--annotate-categories") if annotate is not None else None
    if blocked is None and annotated is None:
        blocked, annotated = labels, []
    elif blocked is None:
        blocked = [name for name in labels if name not in annotated]
    elif annotated is None:
        annotated = [name for name in labels if name not in blocked]
    parsed = parse_thresholds(thresholds, labels) if thresholds is not None else {}
    return CategoryPolicy(tuple(labels), frozenset(blocked), frozenset(annotated), parsed)


@dataclass
class CategoryArguments:
    """The category policy's flags, shared by the gateway (``python -m serve.gateway``) and the streaming CLI
    (``python -m test.stream_monitor``). They need a checkpoint with a category head."""

    block_categories: str | None = field(default=None, metadata={
        "help": "Categories that stop a stream when the rule fires on a token that names them, comma-separated "
                "(e.g. illicit,illicit/violent,self-harm; default: every category the checkpoint's category head "
                "knows, minus --annotate-categories). Needs a checkpoint with a category head."})
    annotate_categories: str | None = field(default=None, metadata={
        "help": "Categories that never stop a stream: a firing there is reported in the final moderation object "
                "and counted in /metrics, and the stream goes on (default: none, or the categories "
                "--block-categories leaves out)."})
    category_thresholds: str | None = field(default=None, metadata={
        "help": "Per blocked category, the category score (harmful score x p(category)) its firing token must "
                "reach to stop the stream, e.g. illicit=0.6,self-harm=0.3 (default: none)."})


def policy_from_args(args: Any, labels: Sequence[str] | None) -> CategoryPolicy | None:
    """:func:`policy_from_flags` over a :class:`CategoryArguments` (or any object with its fields)."""
    return policy_from_flags(labels, args.block_categories, args.annotate_categories, args.category_thresholds)


# --------------------------------------------------------------------------------------------------- wire shapes

def wire_keys(labels: Iterable[str] | None) -> list[str]:
    """The category keys of the wire shape: OpenAI's, the project's extra ones, then the head's others."""
    return list(TAXONOMY) + [name for name in (labels or ()) if name not in TAXONOMY]


def category_scores(score: float, probabilities: Sequence[float], labels: Sequence[str]) -> dict[str, float]:
    """``{label: score x p(label | harmful)}`` over the head's labels (see the module docstring)."""
    return {label: score * p for label, p in zip(labels, probabilities)}


def named_category(probabilities: Sequence[float], labels: Sequence[str]) -> str:
    """The category named at a token: the argmax of its distribution (the first on a tie)."""
    best = max(range(len(labels)), key=lambda i: (probabilities[i], -i))
    return labels[best]


def wire_categories(labels: Sequence[str] | None, scores: Mapping[str, float] | None, named: str | None,
                    harmful: bool, harmful_score: float) -> dict[str, Any]:
    """``categories``, ``category_scores`` and ``category_applied_input_types`` in OpenAI's moderation shape.

    Args:
        labels: the head's categories (None: a head-less checkpoint: ``harmful`` alone, today's shape).
        scores: the category scores at the reported token (None: all 0.0).
        named: the category that is ``True`` (the one named at the stop), or None.
        harmful, harmful_score: the monitor's own verdict and score under the ``harmful`` key.

    Returns:
        The three objects, every key present in each.
    """
    keys = [HARMFUL] + (wire_keys(labels) if labels else [])
    values = {HARMFUL: float(harmful_score), **{k: float((scores or {}).get(k, 0.0)) for k in keys[1:]}}
    return {"categories": {k: (harmful if k == HARMFUL else k == named) for k in keys},
            "category_scores": {k: values[k] for k in keys},
            "category_applied_input_types": {k: ["text"] for k in keys}}


def severity(score: float) -> str:
    """Azure's severity of a category score: ``high`` from 0.75, ``medium`` from 0.5, ``low`` from 0.25, else
    ``safe`` (:data:`SEVERITY_CUTOFFS`)."""
    for cutoff, name in SEVERITY_CUTOFFS:
        if score >= cutoff:
            return name
    return SAFE


def azure_filter_results(keys: Sequence[str], scores: Mapping[str, float], filtered: str | None) -> dict[str, Any]:
    """Azure's ``content_filter_results``: per key ``{"filtered", "severity"}``.

    Args:
        keys: the categories to list (:func:`wire_keys`, or ``["harmful"]`` for a head-less checkpoint).
        scores: the highest category score of each key over the text the result covers (missing keys: 0.0).
        filtered: the category the monitor stopped the stream for (``filtered: true``), or None.
    """
    return {key: {"filtered": key == filtered, "severity": severity(float(scores.get(key, 0.0)))} for key in keys}


__all__ = ["ANNOTATED", "ANNOTATION_FORMATS", "BELOW_THRESHOLD", "BLOCK", "CategoryArguments", "CategoryPolicy",
           "HARMFUL", "NO_HEAD_HINT", "OPENAI_CATEGORIES", "SEVERITY_CUTOFFS", "azure_filter_results",
           "category_scores", "named_category", "parse_thresholds", "policy_from_args", "policy_from_flags",
           "severity", "wire_categories", "wire_keys"]
