"""Stop ``model.generate(...)`` as soon as the streaming monitor says so (the monitored LLM shares its tokenizer).

transformers calls a ``StoppingCriteria`` after every decoding step with the whole ``input_ids``; this one pushes
only the ids generated since its previous call into the monitor (so each step costs the monitor one incremental
forward), and marks a row done when the monitor stops it. Rows stop independently: generate keeps decoding the
other rows and pads the stopped ones (so with several rows the generation config needs a ``pad_token_id`` or an
``eos_token_id``; one row needs neither: generation simply ends). Text printed from the ``on_scored`` callback has
always been scored already, so a caller that shows tokens from there never shows unscored text.

One criteria follows one ``generate`` call with one fixed sequence per row. Every call checks that the rows it is
handed continue exactly the rows of its previous call, and refuses, with an error that names the cause, what breaks
that: beam search (``num_beams > 1``: generate hands the criteria ``2 * num_beams`` candidate rows per input and
re-orders them between steps, so a stream would receive tokens of different candidates), and a criteria reused for
a second ``generate`` (create a new one, with new stream states, per call). Beam search is refused rather than
supported: a stream state cannot be forked per candidate without copying its KV cache at every step.

Example::

    monitor = StreamingMonitor.from_pretrained(scm_path)       # the point its operating_point.json records
    states = [monitor.start(prompt) for prompt in prompts]      # the monitor's own prompt encoding
    criteria = MonitorStoppingCriteria(monitor, states, eos_token_id=generator.generation_config.eos_token_id)
    output = generator.generate(**chat_inputs, stopping_criteria=StoppingCriteriaList([criteria]))
    criteria.stops[row]   # StopEvent or None
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import torch
from transformers import StoppingCriteria

from serve.monitor import PushResult, StopEvent, StreamingMonitor, StreamState

logger = logging.getLogger(__name__)

# on_scored(row, new_ids, result): called after each push that scored at least one token of a row.
ScoredCallback = Callable[[int, list[int], PushResult], None]


class MonitorStoppingCriteria(StoppingCriteria):
    """A ``StoppingCriteria`` that feeds generated tokens to a :class:`StreamingMonitor` and stops flagged rows.

    Args:
        monitor: the monitor (its tokenizer must be the generator's: ids are pushed as they are).
        states: one open stream per generated row, started from each row's prompt.
        prompt_length: length of the generator's input ids (left-padded batch); when None it is taken at the
            first call as ``input_ids.shape[1] - 1`` (generate calls the criteria after each new token).
        eos_token_id: id(s) that end a row; they are not pushed (the monitor never scores end-of-sequence) and the
            row is ignored afterwards (generate pads finished rows).
        on_scored: optional ``callback(row, new_ids, result)`` after each push.

    Raises:
        ValueError: no stream states, or a state passed twice.

    Attributes:
        stops: per row, the monitor's stop event or None.
        results: per row, every push result in order.
        operating_point: where the monitor's theta/k/scorer came from (``monitor.operating_point``: by default the
            checkpoint's ``operating_point.json``, see ``serve/operating_point.py``); None for a monitor built in
            code. Logged once, at construction.
    """

    def __init__(
        self,
        monitor: StreamingMonitor,
        states: Sequence[StreamState],
        prompt_length: int | None = None,
        eos_token_id: int | Sequence[int] | None = None,
        on_scored: ScoredCallback | None = None,
    ) -> None:
        if not states:
            raise ValueError("MonitorStoppingCriteria needs one stream state per generated row")
        if len({id(state) for state in states}) != len(states):
            raise ValueError("MonitorStoppingCriteria got the same stream state for two rows; start one stream per "
                             "generated row")
        self.monitor = monitor
        self.operating_point = getattr(monitor, "operating_point", None)
        logger.info("generate() stopping criteria at %s", self.operating_point.description if self.operating_point
                    else f"theta {monitor.theta:g}, {monitor.rule.name}, {monitor.scorer} scorer (set in code)")
        self.states = list(states)
        self._consumed = prompt_length
        if eos_token_id is None:
            eos_token_id = []
        elif isinstance(eos_token_id, int):
            eos_token_id = [eos_token_id]
        self.eos_token_ids = set(int(t) for t in eos_token_id)
        # generate() replaces the next tokens of finished rows by padding only when some criterion has an
        # `eos_token_id` attribute; without it a row the monitor stopped would keep receiving generated tokens
        # while other rows continue. Hence this attribute with several rows (the generation config then needs a
        # pad_token_id, or an EOS that generate uses as one). One row needs no padding: generation ends when it
        # stops, and a generator with neither a pad nor an EOS token then works too.
        if len(self.states) > 1:
            self.eos_token_id = sorted(self.eos_token_ids)
        self.on_scored = on_scored
        self._previous: torch.Tensor | None = None  # the input_ids of the previous call
        self.finished = [False] * len(self.states)
        self.stops: list[StopEvent | None] = [None] * len(self.states)
        self.results: list[list[PushResult]] = [[] for _ in self.states]

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor | None = None, **kwargs
    ) -> torch.BoolTensor:
        """Push the tokens generated since the last call; return which rows the monitor stopped.

        Raises:
            ValueError: the batch size differs from the number of stream states; the rows do not continue the
                previous call's rows (beam search re-ordering its candidates, or a criteria reused for another
                ``generate`` call). Nothing is pushed then.
        """
        if input_ids.shape[0] != len(self.states):
            raise ValueError(
                f"generate runs {input_ids.shape[0]} rows but the criteria has {len(self.states)} stream states: start "
                f"one stream per generated row (batch size x num_return_sequences). Beam search (num_beams > 1) "
                f"is not supported: it hands the criteria 2 x num_beams candidate rows per input and re-orders them "
                f"at every step; generate with num_beams=1 (greedy or sampling)")
        self._check_continues(input_ids)
        consumed = input_ids.shape[1] - 1 if self._consumed is None else self._consumed
        new = input_ids[:, consumed:].tolist()
        rows, pushes, ended = [], [], []
        for row, ids in enumerate(new):
            if self.finished[row]:
                continue
            for position, token in enumerate(ids):
                if token in self.eos_token_ids:
                    ids = ids[:position]
                    ended.append(row)
                    break
            if ids:
                rows.append(row)
                pushes.append(ids)
        # Nothing above changed the criteria: a push that raises leaves it as it was (the caller may retry).
        results = self.monitor.push_many([self.states[r] for r in rows], pushes) if rows else []
        self._consumed, self._previous = input_ids.shape[1], input_ids
        for row in ended:
            self.finished[row] = True
        done = torch.zeros(len(self.states), dtype=torch.bool, device=input_ids.device)
        for row, ids, result in zip(rows, pushes, results):
            self.results[row].append(result)
            if self.on_scored is not None:
                self.on_scored(row, ids, result)
            if result.stopped:
                self.stops[row] = result.stop
                self.finished[row] = True
                done[row] = True
        return done

    def _check_continues(self, input_ids: torch.Tensor) -> None:
        """Refuse rows that are not the previous call's rows plus new tokens (see the module docstring)."""
        previous = self._previous
        if previous is None:
            if self._consumed is not None and input_ids.shape[1] <= self._consumed:
                raise ValueError(f"generate handed the criteria {input_ids.shape[1]} ids per row, but prompt_length is "
                                 f"{self._consumed}: pass the length of the generator's input ids")
            return
        if input_ids.shape[1] <= previous.shape[1]:
            raise ValueError(
                f"this MonitorStoppingCriteria already followed a generate() call up to {previous.shape[1]} ids per "
                f"row and now got {input_ids.shape[1]}: a criteria (and its stream states) serves one generate() "
                f"call; create a new one, with new stream states, for each call")
        if not torch.equal(input_ids[:, : previous.shape[1]], previous.to(input_ids.device)):
            rows = (input_ids[:, : previous.shape[1]] != previous.to(input_ids.device)).any(dim=1)
            changed = rows.nonzero().flatten().tolist()
            raise ValueError(
                f"rows {changed} of generate's input_ids no longer continue what the monitor already scored for "
                f"them: generate re-ordered or replaced its rows (beam search, num_beams > 1, does this at every "
                f"step), or this criteria was reused for another generate() call. A stream follows one fixed "
                f"sequence: generate with num_beams=1 and create a new criteria, with new stream states, per call")
