"""The lexical floor (model/lexical.py): fitted scores equal scikit-learn's pipeline, the saved folder is pickle-free
and rebuilds the same detector, and bad input fails with a message."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from model.lexical import FILE_NAMES, LexicalDetector, LexicalSettings

from tests.tiny_text_data import make_records

TEXTS = [r["response"] for r in make_records(40, seed=3)]
LABELS = [int(any(r["sentence_labels"])) for r in make_records(40, seed=3)]
PROBE = ["Hide the bomb before the guards arrive.", "A chocolate cake recipe, please.", "nothing known here", "",
         "Mix the pow"]


def _reference_probabilities(settings: LexicalSettings, texts) -> np.ndarray:
    vectorizer = TfidfVectorizer(ngram_range=(settings.ngram_min, settings.ngram_max), sublinear_tf=True,
                                 min_df=settings.min_df)
    classifier = LogisticRegression(C=settings.C, class_weight="balanced", max_iter=1000, random_state=42)
    classifier.fit(vectorizer.fit_transform(TEXTS), LABELS)
    return classifier.predict_proba(vectorizer.transform(texts))[:, 1]


def test_scores_equal_the_scikit_learn_pipeline():
    settings = LexicalSettings()
    detector = LexicalDetector.fit(TEXTS, LABELS, settings)
    np.testing.assert_allclose(detector.score(PROBE), _reference_probabilities(settings, PROBE), rtol=0, atol=1e-12)
    assert detector.score(["Poison the water supply at night."])[0] > 0.5 > detector.score(
        ["The museum opens at nine every morning."])[0]
    assert detector.info["fit"] == {"examples": 40, "harmful": sum(LABELS), "n_iter": detector.info["fit"]["n_iter"],
                                    "converged": True, "seed": 42}


def test_saved_folder_is_pickle_free_and_rebuilds_the_same_detector(tmp_path):
    detector = LexicalDetector.fit(TEXTS, LABELS, LexicalSettings(C=2.0))
    detector.info["data"] = {"data_dir": "somewhere"}
    detector.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILE_NAMES)
    for path in tmp_path.iterdir():
        assert b"\x80\x04" not in path.read_bytes()[:2]  # no pickle protocol header
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "scm-lexical" and config["task"] == "lexical"
    assert config["vectorizer"]["ngram_range"] == [1, 2] and config["vectorizer"]["sublinear_tf"] is True
    assert config["classifier"]["C"] == 2.0 and config["classifier"]["class_weight"] == "balanced"
    assert config["n_features"] == len(json.loads((tmp_path / "vocabulary.json").read_text()))
    loaded = LexicalDetector.from_pretrained(tmp_path)
    np.testing.assert_array_equal(loaded.score(PROBE), detector.score(PROBE))
    assert loaded.info["data"] == {"data_dir": "somewhere"} and loaded.settings == detector.settings


def test_load_refuses_other_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="lacks config.json, vocabulary.json, weights.safetensors"):
        LexicalDetector.from_pretrained(tmp_path)
    LexicalDetector.fit(TEXTS, LABELS, LexicalSettings()).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "scm"}))
    with pytest.raises(ValueError, match="holds a 'scm' model, not a lexical floor"):
        LexicalDetector.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "vocabulary.json").write_text(json.dumps(["only", "two"]))
    with pytest.raises(ValueError, match="do not fit together"):
        LexicalDetector.from_pretrained(tmp_path)


def test_fit_errors_name_the_fix():
    with pytest.raises(ValueError, match="needs both benign"):
        LexicalDetector.fit(TEXTS[:3], [0, 0, 0], LexicalSettings())
    with pytest.raises(ValueError, match="--ngram-min 3 / --ngram-max 2"):
        LexicalDetector.fit(TEXTS, LABELS, LexicalSettings(ngram_min=3))
    with pytest.raises(ValueError, match="--C must be > 0"):
        LexicalDetector.fit(TEXTS, LABELS, LexicalSettings(C=0))
    with pytest.raises(ValueError, match="lower --min-df"):
        LexicalDetector.fit(["alpha beta", "gamma delta"], [0, 1], LexicalSettings(min_df=2))
