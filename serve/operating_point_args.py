"""The monitor's operating-point flags, shared by every command that runs a ``StreamingMonitor`` (the gateway and
the streaming CLI), so that both spell and default them the same way."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class OperatingPointArguments:
    """``--theta``, ``--k``, ``--rule`` and ``--scorer``; None means the checkpoint's own setting."""

    theta: float | None = field(default=None, metadata={"help": "Flagging threshold (default: the checkpoint's)."})
    k: int | None = field(default=None, metadata={
        "help": "k of delay-k (default: the checkpoint's delay_k) or n of consecutive-n (default 2)."})
    rule: str = field(default="delay-k", metadata={"help": "Decision rule.", "choices": ["delay-k", "consecutive-n"]})
    scorer: str | None = field(default=None, metadata={
        "help": "token or holistic (default: the checkpoint's).", "choices": ["token", "holistic"]})
