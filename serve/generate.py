"""Stop ``model.generate(...)`` as soon as the streaming monitor says so (the monitored LLM shares its tokenizer).

transformers calls a ``StoppingCriteria`` after every decoding step with the whole ``input_ids``; this one pushes
only the ids generated since its previous call into the monitor (so each step costs the monitor one incremental
forward), and marks a row done when the monitor stops it. Rows stop independently: generate keeps decoding the
other rows and pads the stopped ones (so the generation config needs a ``pad_token_id``). Text printed from the
``on_scored`` callback has always been scored already, so a caller that shows tokens from there never shows
unscored text.

Example::

    monitor = StreamingMonitor.from_pretrained(scm_path)
    states = [monitor.start(prompt) for prompt in prompts]      # the monitor's own prompt encoding
    criteria = MonitorStoppingCriteria(monitor, states, eos_token_id=generator.generation_config.eos_token_id)
    output = generator.generate(**chat_inputs, stopping_criteria=StoppingCriteriaList([criteria]))
    criteria.stops[row]   # StopEvent or None
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from transformers import StoppingCriteria

from serve.monitor import PushResult, StopEvent, StreamingMonitor, StreamState

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

    Attributes:
        stops: per row, the monitor's stop event or None.
        results: per row, every push result in order.
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
        self.monitor = monitor
        self.states = list(states)
        self._consumed = prompt_length
        if eos_token_id is None:
            eos_token_id = []
        elif isinstance(eos_token_id, int):
            eos_token_id = [eos_token_id]
        self.eos_token_ids = set(int(t) for t in eos_token_id)
        # generate() replaces the next tokens of finished rows by padding only when some criterion has an
        # `eos_token_id` attribute; without it a row the monitor stopped would keep receiving generated tokens
        # while other rows continue. Hence this attribute (the generation config then needs a pad_token_id; most
        # set it to the EOS id).
        self.eos_token_id = sorted(self.eos_token_ids)
        self.on_scored = on_scored
        self.finished = [False] * len(self.states)
        self.stops: list[StopEvent | None] = [None] * len(self.states)
        self.results: list[list[PushResult]] = [[] for _ in self.states]

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor | None = None, **kwargs
    ) -> torch.BoolTensor:
        """Push the tokens generated since the last call; return which rows the monitor stopped.

        Raises:
            ValueError: when the batch size differs from the number of stream states.
        """
        if input_ids.shape[0] != len(self.states):
            raise ValueError(f"generate runs {input_ids.shape[0]} rows but the criteria has {len(self.states)} stream "
                             f"states; start one stream per row (num_return_sequences and beams need one each)")
        if self._consumed is None:
            self._consumed = input_ids.shape[1] - 1
        new = input_ids[:, self._consumed:].tolist()
        self._consumed = input_ids.shape[1]
        rows, pushes = [], []
        for row, ids in enumerate(new):
            if self.finished[row]:
                continue
            for position, token in enumerate(ids):
                if token in self.eos_token_ids:
                    ids, self.finished[row] = ids[:position], True
                    break
            if ids:
                rows.append(row)
                pushes.append(ids)
        done = torch.zeros(len(self.states), dtype=torch.bool, device=input_ids.device)
        if not rows:
            return done
        for row, ids, result in zip(rows, pushes, self.monitor.push_many([self.states[r] for r in rows], pushes)):
            self.results[row].append(result)
            if self.on_scored is not None:
                self.on_scored(row, ids, result)
            if result.stopped:
                self.stops[row] = result.stop
                self.finished[row] = True
                done[row] = True
        return done
