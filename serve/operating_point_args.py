"""The monitor's operating-point flags, shared by every command that runs a ``StreamingMonitor`` (the gateway and
the streaming CLI), so that both spell and default them the same way. How they combine with the checkpoint's
``operating_point.json`` and its config is ``serve/operating_point.py``."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class OperatingPointArguments:
    """``--theta``, ``--k``, ``--rule``, ``--scorer``, ``--operating-point`` and ``--max-benign-stop-rate``; None
    means: the checkpoint's ``operating_point.json`` entry, else its config's training default."""

    theta: float | None = field(default=None, metadata={
        "help": "Flagging threshold (default: the checkpoint's operating_point.json point, else its training "
                "default)."})
    k: int | None = field(default=None, metadata={
        "help": "k of delay-k (default: the operating_point.json point, else the checkpoint's delay_k) or n of "
                "consecutive-n (default 2)."})
    rule: str = field(default="delay-k", metadata={"help": "Decision rule.", "choices": ["delay-k", "consecutive-n"]})
    scorer: str | None = field(default=None, metadata={
        "help": "token or holistic (default: the operating_point.json scorer, else the checkpoint's).",
        "choices": ["token", "holistic"]})
    operating_point: str | None = field(default=None, metadata={
        "help": "Which point of the checkpoint's operating_point.json (written by its evaluation, e.g. `bash "
                "scripts/run-scm.sh test`) to serve: leak_free (max validation macro-F1), leak_free_early, budget "
                "(best under the false-stop budget), or checkpoint (the training default). Default: the file's "
                "default entry (leak_free) when the file exists. --theta/--k/--scorer still win.",
        "choices": ["leak_free", "leak_free_early", "budget", "checkpoint"]})
    max_benign_stop_rate: float | None = field(default=None, metadata={
        "help": "Serve the budget point and require that operating_point.json's budget is this share of benign "
                "responses (e.g. 0.02); the evaluation's --max-benign-stop-rate sets it."})
