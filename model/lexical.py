"""The lexical floor: TF-IDF over word n-grams + logistic regression (scikit-learn), a bag-of-words detector that
any monitor should beat.

It reads text, not token ids: the training and evaluation flows decode the processed response ids with the
tokenizer the data was processed with (``utils/evaluation/lexical_text.py``), so it judges exactly the responses (and, in
partial mode, exactly the prefixes) the neural monitors judge. Its score is ``sigmoid(w . x + b)`` where ``x`` is
the L2-normalised TF-IDF vector of the text, i.e. scikit-learn's ``LogisticRegression.predict_proba`` over
``TfidfVectorizer.transform``.

A saved detector is a folder with no pickles and nothing to execute:

- ``config.json``: ``model_type`` ``scm-lexical``, ``task`` ``lexical``, every vectorizer and classifier setting,
  the feature count, plus whatever the trainer adds (data, tokenizer, versions);
- ``vocabulary.json``: the n-gram terms, in feature-column order;
- ``weights.safetensors``: ``idf`` (one per term), ``coef`` (one per term) and ``intercept`` (1), float64.

``LexicalDetector.from_pretrained(folder)`` rebuilds it from these files alone (scikit-learn's ``TfidfVectorizer``
with a fixed vocabulary and ``idf_``), and scores equal the fitted scikit-learn pipeline's (tested to 1e-12).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from utils.cli import require_at_least, require_positive

MODEL_TYPE = "scm-lexical"
TASK = "lexical"
CONFIG_NAME = "config.json"
VOCABULARY_NAME = "vocabulary.json"
WEIGHTS_NAME = "weights.safetensors"
FILE_NAMES = (CONFIG_NAME, VOCABULARY_NAME, WEIGHTS_NAME)
FORMAT_VERSION = 1
# scikit-learn's default word pattern (two or more word characters), written out so the config names it.
TOKEN_PATTERN = r"(?u)\b\w\w+\b"
CLASS_WEIGHTS = ("balanced", "none")


@dataclass
class LexicalSettings:
    """Vectorizer and classifier settings; the defaults are the ones realmix's README measured its floor with."""

    ngram_min: int = field(default=1, metadata={"help": "Smallest word n-gram."})
    ngram_max: int = field(default=2, metadata={"help": "Largest word n-gram (2 = unigrams and bigrams)."})
    sublinear_tf: bool = field(default=True, metadata={"help": "Use 1 + log(tf) instead of tf."})
    min_df: int = field(default=2, metadata={"help": "Keep n-grams found in at least this many training texts."})
    max_features: int | None = field(default=None, metadata={"help": "Keep only the most frequent n-grams."})
    lowercase: bool = field(default=True, metadata={"help": "Lowercase before tokenising."})
    C: float = field(default=4.0, metadata={"help": "Inverse L2 regularisation strength of the logistic regression."})
    class_weight: str = field(default="balanced", metadata={"help": "balanced (weights inverse to class frequency) "
                                                                    "or none.", "choices": list(CLASS_WEIGHTS)})
    solver: str = field(default="lbfgs", metadata={"help": "scikit-learn LogisticRegression solver."})
    max_iter: int = field(default=1000, metadata={"help": "Most solver iterations."})

    def check(self) -> None:
        """Raises ValueError naming the flag when a setting is out of range."""
        if not 1 <= self.ngram_min <= self.ngram_max:
            raise ValueError(f"--ngram-min {self.ngram_min} / --ngram-max {self.ngram_max}: need 1 <= min <= max")
        require_at_least(self, 1, "min_df", "max_iter")
        require_at_least(self, 1, "max_features", hint="or left out")
        require_positive(self, "C")
        if self.class_weight not in CLASS_WEIGHTS:
            raise ValueError(f"--class-weight {self.class_weight!r}: use one of {', '.join(CLASS_WEIGHTS)}")


def vectorizer_config(settings: LexicalSettings) -> dict[str, Any]:
    """Every ``TfidfVectorizer`` parameter that shapes the features (recorded in ``config.json``)."""
    return {"class": "sklearn.feature_extraction.text.TfidfVectorizer", "analyzer": "word",
            "token_pattern": TOKEN_PATTERN, "ngram_range": [settings.ngram_min, settings.ngram_max],
            "lowercase": settings.lowercase, "strip_accents": None, "sublinear_tf": settings.sublinear_tf,
            "use_idf": True, "smooth_idf": True, "norm": "l2", "min_df": settings.min_df, "max_df": 1.0,
            "max_features": settings.max_features, "dtype": "float64"}


def classifier_config(settings: LexicalSettings) -> dict[str, Any]:
    """Every ``LogisticRegression`` parameter that shapes the weights (recorded in ``config.json``)."""
    return {"class": "sklearn.linear_model.LogisticRegression", "penalty": "l2", "C": settings.C,
            "class_weight": None if settings.class_weight == "none" else settings.class_weight,
            "solver": settings.solver, "max_iter": settings.max_iter, "fit_intercept": True}


def _vectorizer(settings: LexicalSettings, vocabulary: Sequence[str] | None = None):
    from sklearn.feature_extraction.text import TfidfVectorizer

    config = vectorizer_config(settings)
    return TfidfVectorizer(
        analyzer=config["analyzer"], token_pattern=config["token_pattern"], ngram_range=tuple(config["ngram_range"]),
        lowercase=config["lowercase"], strip_accents=config["strip_accents"], sublinear_tf=config["sublinear_tf"],
        use_idf=True, smooth_idf=True, norm="l2", min_df=config["min_df"], max_df=config["max_df"],
        max_features=config["max_features"], dtype=np.float64,
        vocabulary=None if vocabulary is None else {term: i for i, term in enumerate(vocabulary)},
    )


class LexicalDetector:
    """A fitted TF-IDF + logistic-regression detector: ``score(texts)`` gives harmful probabilities.

    Args:
        settings: the settings it was fitted with.
        vocabulary: n-gram terms in feature order.
        idf, coef: one float per term. intercept: the bias.
        info: extra ``config.json`` content (data, tokenizer, versions, fit diagnostics).

    Raises:
        ValueError: arrays whose lengths differ from the vocabulary's, or repeated terms.
    """

    def __init__(self, settings: LexicalSettings, vocabulary: Sequence[str], idf: np.ndarray, coef: np.ndarray,
                 intercept: float, info: dict[str, Any] | None = None) -> None:
        idf, coef = np.asarray(idf, dtype=np.float64), np.asarray(coef, dtype=np.float64)
        if not vocabulary:
            raise ValueError("the vocabulary is empty")
        if idf.shape != (len(vocabulary),) or coef.shape != (len(vocabulary),):
            raise ValueError(f"idf {idf.shape} and coef {coef.shape} must both have one value per vocabulary term "
                             f"({len(vocabulary)})")
        if len(set(vocabulary)) != len(vocabulary):
            raise ValueError("the vocabulary repeats a term")
        self.settings, self.vocabulary = settings, list(vocabulary)
        self.idf, self.coef, self.intercept = idf, coef, float(intercept)
        self.info = dict(info or {})
        self._tfidf = _vectorizer(settings, self.vocabulary)
        self._tfidf.idf_ = idf

    @classmethod
    def fit(cls, texts: Sequence[str], labels: Sequence[int], settings: LexicalSettings, seed: int = 42
            ) -> "LexicalDetector":
        """Fit the vectorizer and the classifier on ``texts`` with 0/1 ``labels``.

        Raises:
            ValueError: bad settings, a length mismatch, one class only, or no term left after ``min_df``.
        """
        from sklearn.linear_model import LogisticRegression

        settings.check()
        if len(texts) != len(labels):
            raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
        if set(int(y) for y in labels) != {0, 1}:
            raise ValueError("the training split needs both benign (0) and harmful (1) responses")
        vectorizer = _vectorizer(settings)
        try:
            features = vectorizer.fit_transform(texts)
        except ValueError as err:  # "empty vocabulary; perhaps the documents only contain stop words", min_df
            raise ValueError(f"no n-gram survives --min-df {settings.min_df} ({err}); lower --min-df or use more "
                             f"training data") from None
        config = classifier_config(settings)
        classifier = LogisticRegression(C=config["C"], class_weight=config["class_weight"], solver=config["solver"],
                                        max_iter=config["max_iter"], random_state=seed)
        classifier.fit(features, np.asarray(labels, dtype=np.int64))
        n_iter = int(np.max(classifier.n_iter_))
        info = {"fit": {"examples": len(texts), "harmful": int(np.sum(labels)), "n_iter": n_iter,
                        "converged": n_iter < settings.max_iter, "seed": seed}}
        return cls(settings, list(vectorizer.get_feature_names_out()), vectorizer.idf_, classifier.coef_[0],
                   float(classifier.intercept_[0]), info)

    def features(self, texts: Iterable[str]):
        """The L2-normalised TF-IDF matrix (scipy CSR, float64) of ``texts``."""
        return self._tfidf.transform(list(texts))

    def score(self, texts: Iterable[str]) -> np.ndarray:
        """Harmful probability of each text (``predict_proba[:, 1]`` of the fitted pipeline)."""
        from scipy.special import expit

        return expit(self.features(texts) @ self.coef + self.intercept)

    def config(self) -> dict[str, Any]:
        """The ``config.json`` content."""
        return {"model_type": MODEL_TYPE, "task": TASK, "format_version": FORMAT_VERSION,
                "label_names": ["benign", "harmful"], "settings": asdict(self.settings),
                "vectorizer": vectorizer_config(self.settings), "classifier": classifier_config(self.settings),
                "n_features": len(self.vocabulary),
                "files": {"vocabulary": VOCABULARY_NAME, "weights": WEIGHTS_NAME}, **self.info}

    def save_pretrained(self, folder: str | Path) -> None:
        """Write ``config.json``, ``vocabulary.json`` and ``weights.safetensors`` into ``folder`` (created)."""
        from safetensors.numpy import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"idf": self.idf, "coef": self.coef, "intercept": np.asarray([self.intercept], dtype=np.float64)},
                  str(folder / WEIGHTS_NAME), metadata={"format": "scm-lexical", "dtype": "float64"})
        (folder / VOCABULARY_NAME).write_text(json.dumps(self.vocabulary, ensure_ascii=False), encoding="utf-8")
        (folder / CONFIG_NAME).write_text(json.dumps(self.config(), indent=2, ensure_ascii=False) + "\n",
                                          encoding="utf-8")

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "LexicalDetector":
        """Rebuild a saved detector from its folder alone.

        Raises:
            FileNotFoundError: a missing file. ValueError: a folder that holds another kind of model, or files that
                do not fit together (the message names the folder).
        """
        from safetensors.numpy import load_file

        folder = Path(folder)
        missing = [name for name in FILE_NAMES if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder} lacks {', '.join(missing)}: not a lexical-floor folder; train one with "
                                    f"bash scripts/run-lexical.sh --data-dir DIR --output-dir {folder}")
        config = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
        if config.get("model_type") != MODEL_TYPE:
            raise ValueError(f"{folder} holds a {config.get('model_type')!r} model, not a lexical floor "
                             f"({MODEL_TYPE!r})")
        known = {f.name for f in fields(LexicalSettings)}
        settings = LexicalSettings(**{k: v for k, v in config.get("settings", {}).items() if k in known})
        weights = load_file(str(folder / WEIGHTS_NAME))
        vocabulary = json.loads((folder / VOCABULARY_NAME).read_text(encoding="utf-8"))
        info = {k: v for k, v in config.items() if k not in cls._CONFIG_OWN}
        try:
            return cls(settings, vocabulary, weights["idf"], weights["coef"], float(weights["intercept"][0]), info)
        except (KeyError, ValueError) as err:
            raise ValueError(f"{folder}: the saved files do not fit together ({err}); retrain the floor") from None

    _CONFIG_OWN = frozenset({"model_type", "task", "format_version", "label_names", "settings", "vectorizer",
                             "classifier", "n_features", "files"})
