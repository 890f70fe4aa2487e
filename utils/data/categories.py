"""Harm categories: the taxonomy that data, the category head, evaluation and the gateway share.

OpenAI's moderation object names thirteen categories; the project keeps those keys unchanged (so a client written
for ``/v1/moderations`` reads ours) and adds four that realmix2 labels and OpenAI's keys do not cover: ``privacy``,
``misinformation``, ``specialised-advice`` and ``other``. A checkpoint's category head predicts the categories its
training data named (``SCMConfig.category_labels``), in :data:`TAXONOMY` order; the wire shape always lists every
OpenAI key (False / 0.0 for the ones the head does not know) and the extra ones beside them.
"""

from __future__ import annotations

from typing import Iterable

# OpenAI's moderation keys, in the order its documentation lists them.
OPENAI_CATEGORIES = (
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit", "illicit/violent",
    "self-harm", "self-harm/instructions", "self-harm/intent", "sexual", "sexual/minors", "violence",
    "violence/graphic",
)
# Categories realmix2 labels beyond OpenAI's keys.
EXTRA_CATEGORIES = ("privacy", "misinformation", "specialised-advice", "other")
TAXONOMY = OPENAI_CATEGORIES + EXTRA_CATEGORIES


def ordered_categories(names: Iterable[str]) -> list[str]:
    """The distinct ``names`` in taxonomy order (unknown names after, alphabetically), so that a head's label list
    does not depend on which record came first.

    Args:
        names: category names as found in data (None entries are skipped).

    Returns:
        The sorted distinct names.
    """
    distinct = {name for name in names if name is not None}
    known = [name for name in TAXONOMY if name in distinct]
    return known + sorted(distinct - set(TAXONOMY))


def parse_category_list(text: str, known: Iterable[str], flag: str) -> list[str]:
    """Parse a comma-separated category list of a flag (``--block-categories illicit,self-harm``).

    Args:
        text: the flag's value; ``all`` means every known category, an empty string none.
        known: the categories that may be named (a checkpoint's labels, or the taxonomy).
        flag: the flag's name, for the error message.

    Returns:
        The named categories, in the order of ``known``.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    known = list(known)
    if text.strip() == "all":
        return known
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"{flag}: unknown categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}; "
                         f"known: {', '.join(known)} (or 'all')")
    return [name for name in known if name in names]
