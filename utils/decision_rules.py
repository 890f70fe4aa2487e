"""When to stop a stream: decision rules over per-token "harmful" flags.

A token is flagged when its score reaches ``theta``. A rule turns the sequence of flags into a stop position:

- :class:`DelayK` (the paper's rule): stop at the first response token where the *cumulative* number of flagged
  tokens reaches ``k``. ``k = 1`` is the paper's "naive" rule.
- :class:`ConsecutiveN`: stop when ``n`` flagged tokens occur in a row (Qwen3Guard-Stream flags after two
  consecutive unsafe tokens).

Both offline evaluation (``utils/metrics.py``, over a whole list of scores) and the streaming runtime
(``serve/monitor.py``, a few tokens at a time) use the same rule objects, so they cannot disagree: the offline
:meth:`DecisionRule.stop_index` is defined by feeding the incremental :meth:`DecisionRule.update`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence


@dataclass
class RuleState:
    """Running state of one stream under a rule.

    Attributes:
        seen: number of response tokens consumed so far.
        count: the rule's counter (cumulative flags for delay-k, current run length for consecutive-n).
        stop_index: 0-based index (among response tokens) where the rule fired, or None.
    """

    seen: int = 0
    count: int = 0
    stop_index: int | None = None


class DecisionRule(Protocol):
    """Interface of a stopping rule: a fresh state, and an update over newly scored tokens."""

    name: str

    def new_state(self) -> RuleState:
        """A state for a new stream."""

    def update(self, state: RuleState, flags: Sequence[bool]) -> int | None:
        """Consume the flags of new tokens; return the stop index once the rule fires (then ignore further calls)."""


def _validate_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


class _CountingRule:
    name = "rule"

    def new_state(self) -> RuleState:
        return RuleState()

    def _step(self, state: RuleState, flag: bool) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def update(self, state: RuleState, flags: Sequence[bool]) -> int | None:
        if state.stop_index is not None:
            return state.stop_index
        for flag in flags:
            fired = self._step(state, bool(flag))
            state.seen += 1
            if fired:
                state.stop_index = state.seen - 1
                return state.stop_index
        return None

    def stop_index(self, flags: Sequence[bool]) -> int | None:
        """Offline: the 0-based response-token index where the rule fires on ``flags``, or None."""
        return self.update(self.new_state(), flags)


class DelayK(_CountingRule):
    """Stop when the cumulative number of flagged response tokens reaches ``k``."""

    def __init__(self, k: int = 1) -> None:
        _validate_positive("k", k)
        self.k = k
        self.name = f"delay-{k}"

    def _step(self, state: RuleState, flag: bool) -> bool:
        state.count += int(flag)
        return state.count >= self.k


class ConsecutiveN(_CountingRule):
    """Stop when ``n`` consecutive response tokens are flagged."""

    def __init__(self, n: int = 2) -> None:
        _validate_positive("n", n)
        self.n = n
        self.name = f"consecutive-{n}"

    def _step(self, state: RuleState, flag: bool) -> bool:
        state.count = state.count + 1 if flag else 0
        return state.count >= self.n


def make_rule(name: str, value: int) -> DecisionRule:
    """Build a rule from its CLI name (``delay-k`` or ``consecutive-n``) and its integer parameter.

    Raises:
        ValueError: on an unknown name or a non-positive value.
    """
    if name in ("delay-k", "delay_k", "delay"):
        return DelayK(value)
    if name in ("consecutive-n", "consecutive_n", "consecutive"):
        return ConsecutiveN(value)
    raise ValueError(f"unknown decision rule {name!r}; use 'delay-k' or 'consecutive-n'")


def delay_k_stop_index(scores: Sequence[float], theta: float, k: int) -> int | None:
    """The paper's rule on a whole list of scores: first index where ``#{scores[:i+1] >= theta} == k``."""
    return DelayK(k).stop_index([s >= theta for s in scores])
