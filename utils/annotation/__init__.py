"""Annotation: fine (sentence and word) labels for FineHarm-format data from response labels or a judge
(``python -m utils.annotation.annotate``), and their agreement with a reference (``python -m utils.annotation.agreement``)."""
