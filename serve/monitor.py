"""Streaming content monitor runtime: score an LLM's response token by token, for many streams at once.

The monitor keeps an explicit state per stream. ``start`` encodes the prompt exactly as the data processing does
(``[BOS] + tokens(prompt + "\\n\\n")``) and runs it through the backbone once; each ``push`` runs the backbone only on
the new tokens, reusing the KV cache, and returns their harmful scores, the decision rule's running count and,
once the rule fires, where to stop. ``push_many`` advances many streams of different lengths, each by its own number
of tokens, in one batched forward. Because the backbone is causal, the score of a token streamed this way is the
score the offline partial evaluation gives the same prefix in one full forward (checked by
``python -m test.verify_streaming``).

Example::

    monitor = StreamingMonitor.from_pretrained("runs/scm-default", theta=0.5, k=3)
    state = monitor.start("How do I make a cake?")
    for token_id in generated_ids:
        result = monitor.push(state, [token_id])
        if result.stopped:
            print("stop at response token", result.stop.index, "score", result.stop.score)
            break
    monitor.close(state)

Design notes:

- KV storage is a :class:`~serve.kv_slab.KVSlab` (per-row write offsets, explicit 4D masks, doubling
  capacity): per-token work is the attention over the row's own past and nothing else; the past is never copied
  on a step. Streams are moved between slabs (a copy of their past) only when the set of streams pushed together
  changes; a slab is reused as long as at least half of its rows take part in the push.
- The per-step compute is the single method :meth:`StreamingMonitor._run_step`; the CUDA fast path
  (``serve/cuda_step.py``: a static step over the same slab, captured in CUDA graphs) takes the one-token
  steps instead when ``fast_path`` selects it (``auto``: on CUDA for supported backbones) and keeps the rest.
  Nothing here assumes a device or a dtype; scores are returned in fp32.
- A checkpoint with a category head (``SCMConfig.category_labels``) also gives every scored token its category
  distribution (one more ``Linear(hidden, n_categories)`` and a softmax per token, in the eager step and inside the
  CUDA fast path's graph alike); a stop names the category at the stop token with per-category scores, and the
  category policy (``serve/category_policy.py``) may let a firing of the rule through as an annotation. Without a
  head nothing of this runs and every result is as before.
- Misuse raises a :class:`StreamingError` subclass with a message that says what to do; a push that raises changes
  no stream.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase

from model.modeling_qwen4dual_2CE_w_logic import SCMModel
from serve.category_policy import (BLOCK, CategoryPolicy, NO_HEAD_HINT, category_scores as _category_scores,
                                   named_category)
from serve.kv_slab import CAPACITY_QUANTUM, KVSlab, SlabCache, StepPlan, build_attention_mask
from serve.cuda_step import FastStep, make_fast_step
from utils.decision_rules import DecisionRule, RuleState, make_rule
from utils.text_encoding import check_unicode, cut_prompt, encode_text

logger = logging.getLogger(__name__)

SCORERS = ("token", "holistic")
RULES = ("delay-k", "consecutive-n")
# A slab whose capacity exceeds this many times its longest live stream is compacted (capacity grows by doubling,
# so a factor above 2 never undoes a growth at once).
SHRINK_FACTOR = 3
# Default n of consecutive-n when none is given: Qwen3Guard-Stream flags after two consecutive unsafe tokens.
DEFAULT_CONSECUTIVE_N = 2
_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


class StreamingError(Exception):
    """Base class of the runtime's misuse errors.

    Attributes:
        stream_id: the stream the error is about, when it is about one (else None).
    """

    def __init__(self, message: str, stream_id: int | None = None) -> None:
        super().__init__(message)
        self.stream_id = stream_id


class StreamClosedError(StreamingError, RuntimeError):
    """A closed stream was pushed."""


class StreamStoppedError(StreamingError, RuntimeError):
    """A stream that the rule already stopped was pushed again."""


class StreamLengthError(StreamingError, ValueError):
    """A stream would exceed the backbone's maximum length."""


class InvalidTokenError(StreamingError, ValueError):
    """A token id is not in the model's vocabulary (or is not an integer)."""


@dataclass(frozen=True)
class StopEvent:
    """Where and why a stream was stopped.

    Attributes:
        index: 0-based index of the stop token among the stream's response tokens.
        token_id: the stop token's id.
        score: its harmful score under the monitor's scorer.
        count: the rule's counter when it fired (flagged tokens for delay-k, the run length for consecutive-n).
        rule: the rule's name (``delay-3``, ``consecutive-2``).
        theta: the flagging threshold.
        scorer: ``token`` or ``holistic``.
        category: with a category head, the category named at the stop token (the argmax of its category
            distribution); None without a head.
        category_scores: with a head, ``score x p(category | harmful)`` at the stop token for every category the
            head knows (``serve/category_policy.py``); None without a head.
    """

    index: int
    token_id: int
    score: float
    count: int
    rule: str
    theta: float
    scorer: str
    category: str | None = None
    category_scores: dict[str, float] | None = None

    def describe(self) -> str:
        """One human-readable line, e.g. for a CLI report."""
        text = (f"stopped at response token {self.index} (id {self.token_id}): {self.scorer} score {self.score:.4f} "
                f">= theta {self.theta}, {self.rule} count reached {self.count}")
        if self.category is not None:
            text += f", category {self.category} ({self.category_scores[self.category]:.4f})"
        return text


@dataclass(frozen=True)
class CategoryAnnotation:
    """A firing of the decision rule that did not stop the stream because of the category named there
    (``serve/category_policy.py``).

    Attributes:
        index, token_id, score, count: as in :class:`StopEvent`, at the firing token.
        category: the category named at that token.
        category_score: its category score there (``score x p(category | harmful)``).
        reason: ``annotated`` (an annotated category) or ``below_threshold`` (a blocked category below its
            ``--category-thresholds`` value).
    """

    index: int
    token_id: int
    score: float
    count: int
    category: str
    category_score: float
    reason: str

    def public(self) -> dict[str, Any]:
        """The annotation as the gateway reports it (no token text: the id only)."""
        return {"response_token_index": self.index, "token_id": self.token_id, "score": self.score,
                "count": self.count, "category": self.category, "category_score": self.category_score,
                "reason": self.reason}


@dataclass
class PushResult:
    """What one push of new tokens into one stream produced.

    Attributes:
        scores: harmful score of each new token under the monitor's scorer (all pushed tokens, also those after a
            stop inside the same push).
        token_scores, holistic_scores: the scores of both heads, whichever scorer decides.
        count: the rule's running counter after this push (at the stop when the rule fired).
        seen: response tokens the rule has consumed so far (it consumes none after a stop).
        stop: the stop event when the rule fired in this push, else None.
        category_probs: with a category head, each new token's category distribution (``softmax`` of the head's
            logits, p(category | harmful), in ``monitor.category_labels`` order); None without a head.
        annotations: firings of the rule in this push that the category policy let through.
    """

    scores: list[float]
    token_scores: list[float]
    holistic_scores: list[float]
    count: int
    seen: int
    stop: StopEvent | None = None
    category_probs: list[list[float]] | None = None
    annotations: list[CategoryAnnotation] = field(default_factory=list)

    @property
    def stopped(self) -> bool:
        return self.stop is not None


@dataclass(eq=False)
class StreamState:
    """The state of one monitored stream; pass it back to the monitor's ``push``/``push_many``/``close``.

    Attributes:
        stream_id: unique id within its monitor (used in error messages).
        prompt_length: tokens of the encoded prompt (BOS included).
        length: tokens held in the KV cache (prompt + response).
        rule_state: the decision rule's running state.
        stop: the stop event once the rule fired.
        closed: True after :meth:`StreamingMonitor.close`.
        annotations: every firing of the rule the category policy let through so far.
    """

    stream_id: int
    prompt_length: int
    length: int = 0
    rule_state: RuleState = field(default_factory=RuleState)
    stop: StopEvent | None = None
    closed: bool = False
    annotations: list[CategoryAnnotation] = field(default_factory=list)
    _monitor: Any = field(default=None, repr=False)
    _slab: KVSlab | None = field(default=None, repr=False)
    _row: int = field(default=-1, repr=False)

    @property
    def stopped(self) -> bool:
        return self.stop is not None

    @property
    def n_response_tokens(self) -> int:
        return self.length - self.prompt_length


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``"bf16"``/``"bfloat16"``/``torch.bfloat16`` -> ``torch.bfloat16``; None stays None.

    Raises:
        ValueError: for an unknown name.
    """
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def default_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, max_prompt_tokens: int | None = None) -> list[int]:
    """Encode a prompt the way ``utils/data_process.py`` does: ``[BOS, else CLS, if any] + tokens(prompt + "\\n\\n")``.

    The prompt is encoded as plain text (``utils/text_encoding.py``): a prompt that contains ``<|im_end|>`` gets the
    ordinary pieces of that string, never the control token, exactly as in the training data.

    Args:
        tokenizer: the monitor's tokenizer.
        prompt: the user's prompt text.
        max_prompt_tokens: keep only the last N tokens of ``prompt + "\\n\\n"``, as the data processing's
            ``--max-prompt-tokens`` did for the checkpoint's training data (0: none; None: all).

    Returns:
        Token ids (special tokens other than the leading BOS/CLS are never added).

    Raises:
        TypeError: the prompt is not a str. ValueError: it holds a lone surrogate.
    """
    check_unicode(prompt, "the prompt")
    ids = cut_prompt(encode_text(tokenizer, prompt + "\n\n"), max_prompt_tokens)
    first = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    return ([first] if first is not None else []) + ids


def cache_argument_name(backbone_class: type) -> str:
    """Name of a backbone forward's KV-cache argument: ``cache`` on newer transformers, ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(backbone_class.forward).parameters else "past_key_values"


def _harmful_probability(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits.float(), dim=-1)[..., 1]


@torch.inference_mode()
def score_offline(model: SCMModel, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Score every position with one full causal forward (no cache): the offline partial evaluation's reference.

    Args:
        model: an SCM model in eval mode.
        input_ids: ``(batch, seq)`` ids (all rows real tokens, no padding).

    Returns:
        ``(token, holistic)`` harmful probabilities, each ``(batch, seq)`` fp32.
    """
    device = next(model.parameters()).device
    out = model(input_ids=input_ids.to(device))
    return _harmful_probability(out.token_logits), _harmful_probability(model.holistic_scorer(out.last_hidden_state))


def _normalise_ids(new_ids: Any, label: str) -> list[int]:
    """Token ids as a list of Python ints (from a list, tuple, 1D tensor or array); ``label`` names the stream."""
    single = isinstance(new_ids, (int, bool)) or (hasattr(new_ids, "ndim") and getattr(new_ids, "ndim") == 0)
    if single:
        raise InvalidTokenError(f"{label}: expected a sequence of token ids, got a single {type(new_ids).__name__} "
                                f"({new_ids!r}); wrap one id in a list: [id]")
    if isinstance(new_ids, torch.Tensor):
        if new_ids.dim() > 1:
            raise InvalidTokenError(f"{label}: expected a 1D tensor of token ids, got shape {tuple(new_ids.shape)}")
        if new_ids.is_floating_point() or new_ids.dtype == torch.bool:
            raise InvalidTokenError(f"{label}: token ids must be integers, got a {new_ids.dtype} tensor")
        return new_ids.reshape(-1).tolist()
    if isinstance(new_ids, (str, bytes)) or (not isinstance(new_ids, Sequence) and not hasattr(new_ids, "tolist")):
        raise InvalidTokenError(f"{label}: expected a sequence of token ids, got {type(new_ids).__name__} (wrap a "
                                f"single id in a list; text goes through serve.text_guard)")
    ids = new_ids.tolist() if hasattr(new_ids, "tolist") else list(new_ids)
    normalised = []
    for position, token in enumerate(ids):
        # operator.index accepts every integer type (numpy ints included) and rejects floats and strings.
        try:
            if isinstance(token, bool):
                raise TypeError
            normalised.append(operator.index(token))
        except TypeError:
            raise InvalidTokenError(f"{label}: token at position {position} of the push is {token!r} "
                                    f"({type(token).__name__}), not an integer id") from None
    return normalised


class StreamingMonitor:
    """The streaming runtime around an :class:`SCMModel` (see the module docstring).

    Args:
        model: the SCM model (its parameters decide the device and dtype; it is put in eval mode).
        tokenizer: the checkpoint's tokenizer; needed only to start streams from prompt text.
        theta: flagging threshold; default ``model.config.theta``.
        k: the rule's integer: k of delay-k (default ``model.config.delay_k``) or n of consecutive-n (default 2).
        rule: ``delay-k`` (the paper's cumulative rule), ``consecutive-n``, or a ready rule object from
            ``utils.decision_rules``.
        scorer: ``token`` (the token head) or ``holistic`` (the holistic head at every position); default
            ``model.config.scorer``.
        attn_implementation: when given, switch the backbone to it (``sdpa`` or ``eager``).
        fast_path: ``auto`` (CUDA graphs for one-token steps when the model is on CUDA and its backbone is
            supported, else the eager runtime), ``off``, ``static`` or ``cuda-graph`` (forced; see
            ``serve/cuda_step.py``), or a ready ``FastStep``. Decide it after moving the model to its device.
        category_policy: with a category head, which categories stop a stream and which are only annotated
            (``serve/category_policy.py``); default: every category blocks (a stop is where the rule alone stops,
            and names its category). Also settable later as ``monitor.category_policy``.

    Raises:
        ValueError: bad theta, k, rule or scorer; a backbone with sliding-window or other non-full attention layers;
            a forced fast path that cannot run here; a category policy for a head-less model, or for other labels.
    """

    def __init__(
        self,
        model: SCMModel,
        tokenizer: PreTrainedTokenizerBase | None = None,
        *,
        theta: float | None = None,
        k: int | None = None,
        rule: str | DecisionRule = "delay-k",
        scorer: str | None = None,
        attn_implementation: str | None = None,
        fast_path: str | FastStep = "auto",
        category_policy: CategoryPolicy | None = None,
    ) -> None:
        config = model.config
        self.model = model.eval()
        if attn_implementation is not None:
            self.model.set_attn_implementation(attn_implementation)
        self.tokenizer = tokenizer
        self.theta = float(config.theta if theta is None else theta)
        if not 0.0 <= self.theta <= 1.0:
            raise ValueError(f"theta must be a probability in [0, 1], got {self.theta}")
        self.scorer = config.scorer if scorer is None else scorer
        if self.scorer not in SCORERS:
            raise ValueError(f"scorer must be one of {SCORERS}, got {self.scorer!r}")
        if isinstance(rule, str):
            if k is None:
                k = int(config.delay_k) if rule.startswith("delay") else DEFAULT_CONSECUTIVE_N
            self.rule = make_rule(rule, k)
        else:
            self.rule = rule
        backbone_config = config.backbone_config
        layer_types = set(getattr(backbone_config, "layer_types", None) or ["full_attention"])
        if layer_types != {"full_attention"}:
            raise ValueError(f"the streaming runtime supports full-attention backbones only; this one has layer types "
                             f"{sorted(layer_types)}")
        # The prompt cut of the checkpoint's training data (SCMConfig.max_prompt_tokens): prompts given as text are
        # cut the same way; ready prompt_ids are taken as they are.
        self.max_prompt_tokens = getattr(config, "max_prompt_tokens", None)
        self.max_length = int(backbone_config.max_position_embeddings)
        self.vocab_size = int(model.get_input_embeddings().num_embeddings)
        self.n_layers = int(backbone_config.num_hidden_layers)
        self._stream_ids = itertools.count()
        self._cache_kwarg = cache_argument_name(type(model.backbone))
        self._fast_step = make_fast_step(self.model, fast_path)
        # The category head's labels (None: the paper's model, no head); the policy over them.
        self.category_labels: list[str] | None = (list(config.category_labels)
                                                  if getattr(model, "has_category_head", False) else None)
        self._category_policy: CategoryPolicy | None = None
        self.category_policy = category_policy
        # Where theta/k/scorer came from (serve.operating_point.ServedOperatingPoint); set by from_pretrained.
        self.operating_point: Any = None
        # Every slab in use, by id: what memory_stats() reports and what _tidy() frees.
        self._slabs: dict[int, KVSlab] = {}

    # ----------------------------------------------------------------------------------------------- loading

    @classmethod
    def from_pretrained(
        cls,
        model_path: str | Path,
        *,
        theta: float | None = None,
        k: int | None = None,
        rule: str = "delay-k",
        scorer: str | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        attn_implementation: str = "sdpa",
        fast_path: str = "auto",
        operating_point: str | None = None,
        max_benign_stop_rate: float | None = None,
    ) -> "StreamingMonitor":
        """Load a monitor from an SCM checkpoint folder (weights, config with theta/k/scorer, tokenizer).

        The operating point is resolved by ``serve.operating_point.resolve_operating_point``: explicit values win,
        then the point the checkpoint's ``operating_point.json`` records (written by its partial evaluation), then
        the config's training defaults (with a warning naming the command that calibrates the checkpoint). The
        result, with where each value came from, is the monitor's ``operating_point`` and is logged.

        Args:
            model_path: folder written by ``train/train_qwen.py`` (``config.task`` ``scm`` or ``qwen-full``).
            theta, k, rule, scorer: override the checkpoint's operating point (see the class docstring).
            operating_point: ``leak_free``, ``leak_free_early``, ``budget`` (an ``operating_point.json`` entry) or
                ``checkpoint`` (the training default); None: the file's default entry when there is a file.
            max_benign_stop_rate: serve the budget point and check that the file's budget is this one.
            device: e.g. ``cpu``, ``cuda``, ``cuda:1``; default cuda when available.
            dtype: weights/compute dtype (``float32``, ``bfloat16``, ...); default: the checkpoint's.
            attn_implementation: ``sdpa`` (default) or ``eager``.
            fast_path: see the class docstring (default ``auto``).

        Returns:
            A ready monitor (tokenizer is None when the folder holds no tokenizer files).

        Raises:
            FileNotFoundError: the folder or its config.json is missing.
            ValueError: the folder is not an SCM checkpoint, or bad operating-point values
                (``serve.operating_point.OperatingPointError`` when the asked-for point cannot be served).
        """
        from serve.operating_point import resolve_operating_point

        path = Path(model_path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{path}: not a checkpoint folder (no config.json). Train a monitor with `bash scripts/run-scm.sh` "
                f"(the quick start writes runs/scm-default) and pass its folder."
            )
        config = AutoConfig.from_pretrained(path)
        if getattr(config, "model_type", None) != "scm":
            raise ValueError(f"{path}: config.json has model_type {getattr(config, 'model_type', None)!r}; the "
                             f"streaming monitor needs an SCM checkpoint (model_type 'scm', task 'scm' or "
                             f"'qwen-full'); encoder checkpoints cannot stream")
        served = resolve_operating_point(model_path, config, theta=theta, k=k, rule=rule, scorer=scorer,
                                         choice=operating_point, max_benign_stop_rate=max_benign_stop_rate)
        (logger.warning if served.warning else logger.info)("operating point: %s", served.description)
        kwargs: dict[str, Any] = {"attn_implementation": attn_implementation}
        if dtype is not None:
            kwargs["dtype"] = resolve_dtype(dtype)
        model = SCMModel.from_pretrained(path, **kwargs)
        model.to(device or default_device())
        tokenizer = None
        if any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
            tokenizer = AutoTokenizer.from_pretrained(path)
        monitor = cls(model, tokenizer, theta=served.theta, k=served.k, rule=rule, scorer=served.scorer,
                      fast_path=fast_path)
        monitor.operating_point = served
        return monitor

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def fast_path(self) -> str:
        """The per-step compute in use: ``off`` (eager runtime), ``static`` or ``cuda-graph``."""
        return "off" if self._fast_step is None else self._fast_step.name

    def fast_path_stats(self) -> dict[str, Any] | None:
        """The fast path's counters (graph captures, replays, a capture failure), or None when it is off."""
        return None if self._fast_step is None else self._fast_step.stats_dict()

    @property
    def category_policy(self) -> CategoryPolicy | None:
        """Which categories stop a stream (None without a category head)."""
        return self._category_policy

    @category_policy.setter
    def category_policy(self, policy: CategoryPolicy | None) -> None:
        """Set the policy (None: the default, every category blocks).

        Raises:
            ValueError: a policy for a head-less model, or over other labels than the head's.
        """
        if self.category_labels is None:
            if policy is not None:
                raise ValueError(f"a category policy was given, but {NO_HEAD_HINT}")
            self._category_policy = None
            return
        if policy is None:
            policy = CategoryPolicy.block_all(self.category_labels)
        if list(policy.labels) != self.category_labels:
            raise ValueError(f"the category policy is over {list(policy.labels)}, but this checkpoint's head names "
                             f"{self.category_labels}")
        self._category_policy = policy

    def describe(self) -> dict[str, Any]:
        """The operating point, for reports: theta, rule, scorer (and the category policy, with a head)."""
        described = {"theta": self.theta, "rule": self.rule.name, "scorer": self.scorer}
        if self._category_policy is not None:
            described["categories"] = self._category_policy.public()
        return described

    def memory_stats(self) -> dict[str, int]:
        """What the KV storage holds against what the open streams need (for reports and service metrics).

        Returns:
            ``open_streams``; ``slabs`` (KV buffers allocated); ``rows`` (their rows; a row holds one stream);
            ``kv_bytes_held`` (bytes of all KV buffers); ``kv_bytes_needed`` (bytes the open streams' tokens occupy:
            their lengths times the bytes of one token's keys and values over all layers).
        """
        slabs = list(self._slabs.values())
        states = [owner for slab in slabs for owner in slab.owners if owner is not None]
        per_token = next((slab.bytes_per_token() for slab in slabs if slab.is_allocated()), 0)
        return {"open_streams": len(states), "slabs": len(slabs), "rows": sum(slab.n_rows for slab in slabs),
                "kv_bytes_held": sum(slab.nbytes() for slab in slabs),
                "kv_bytes_needed": sum(state.length for state in states) * per_token}

    # ----------------------------------------------------------------------------------------------- streams

    def encode_prompt(self, prompt: str) -> list[int]:
        """The monitor's prompt ids for ``prompt`` (see :func:`encode_prompt`).

        Raises:
            ValueError: when the monitor has no tokenizer, or the prompt holds a lone surrogate.
            TypeError: the prompt is not a str.
        """
        if self.tokenizer is None:
            raise ValueError("this monitor has no tokenizer (the checkpoint folder holds none): pass prompt_ids=")
        return encode_prompt(self.tokenizer, prompt, self.max_prompt_tokens)

    def start(self, prompt: str | None = None, *, prompt_ids: Sequence[int] | None = None) -> StreamState:
        """Open one stream: encode the prompt (or take ready ids) and run it through the backbone once.

        Args:
            prompt: the prompt text (encoded with :meth:`encode_prompt`).
            prompt_ids: ready prompt ids instead (e.g. ``input_ids[:response_start]`` of processed data).

        Returns:
            The new stream's state.

        Raises:
            TypeError: a prompt that is not a str. ValueError: neither or both of prompt/prompt_ids, or an empty
            prompt. StreamLengthError: the prompt alone exceeds the model's maximum length.
            InvalidTokenError: an id outside the vocabulary.
        """
        if prompt is not None and prompt_ids is not None:
            raise ValueError("pass either prompt or prompt_ids, not both")
        if prompt is None and prompt_ids is None:
            raise ValueError("start() needs a prompt (text) or prompt_ids")
        if prompt is not None:
            return self.start_many([prompt], _names=["the prompt"])[0]
        return self.start_many(prompt_ids=[prompt_ids], _names=["the prompt"])[0]

    @torch.inference_mode()
    def start_many(
        self,
        prompts: Sequence[str] | None = None,
        *,
        prompt_ids: Sequence[Sequence[int]] | None = None,
        _names: Sequence[str] | None = None,
    ) -> list[StreamState]:
        """Open several streams with one batched prompt forward (see :meth:`start`).

        Raises:
            As :meth:`start`; the messages name the prompt by its index. Nothing is opened when anything raises.
        """
        if (prompts is None) == (prompt_ids is None):
            raise ValueError("start_many() needs exactly one of prompts (texts) or prompt_ids")
        if prompts is not None:
            if isinstance(prompts, str):
                raise ValueError("start_many() takes a list of prompts; use start() for one")
            names = _names or [f"prompt {number}" for number in range(len(prompts))]
            for name, prompt in zip(names, prompts):
                if not isinstance(prompt, str):
                    raise TypeError(f"{name} must be the prompt text (a str), got {type(prompt).__name__}; pass "
                                    f"ready token ids as prompt_ids=")
            id_lists = [self.encode_prompt(p) for p in prompts]
        else:
            if isinstance(prompt_ids, (str, bytes)) or not isinstance(prompt_ids, Sequence):
                raise TypeError(f"prompt_ids must be a list with one id sequence per stream, got "
                                f"{type(prompt_ids).__name__}")
            names = _names or [f"prompt {number}" for number in range(len(prompt_ids))]
            id_lists = [_normalise_ids(ids, name) for name, ids in zip(names, prompt_ids)]
        if not id_lists:
            return []
        for name, ids in zip(names, id_lists):
            if not ids:
                raise ValueError(f"{name} is empty; a stream needs at least one prompt token (the BOS or the "
                                 f"encoded prompt)")
            self._check_vocabulary(name, ids)
            if len(ids) > self.max_length:
                raise StreamLengthError(
                    f"{name} is {len(ids)} tokens long (BOS and the \"\\n\\n\" separator included), beyond "
                    f"the model's maximum of {self.max_length} (config.backbone_config.max_position_embeddings), "
                    f"and the response needs room too: shorten the prompt (keeping its end, as utils.data_process "
                    f"--max-prompt-tokens does for training data)")
        states = [StreamState(stream_id=next(self._stream_ids), prompt_length=len(ids), _monitor=self)
                  for ids in id_lists]
        longest = max(len(ids) for ids in id_lists)
        slab = self._new_slab(len(states), longest + CAPACITY_QUANTUM)
        for row, state in enumerate(states):
            slab.owners[row] = state
            state._slab, state._row = slab, row
        try:
            self._forward(slab, id_lists)
        except BaseException:
            for state in states:
                state._slab, state._row, state.closed = None, -1, True
            self._release(slab)
            raise
        for state, ids in zip(states, id_lists):
            state.length = len(ids)
        return states

    def push(self, state: StreamState, new_ids: Sequence[int]) -> PushResult:
        """Score new response tokens of one stream (see :meth:`push_many`)."""
        return self.push_many([state], [new_ids])[0]

    @torch.inference_mode()
    def push_many(self, states: Sequence[StreamState], new_ids: Sequence[Sequence[int]]) -> list[PushResult]:
        """Score new response tokens of several streams in one batched forward.

        Args:
            states: open, not stopped streams of this monitor (each at most once).
            new_ids: for each stream, its new token ids (list, tuple or 1D tensor; may be empty: a no-op).

        Returns:
            One :class:`PushResult` per stream, in order.

        Raises:
            StreamClosedError, StreamStoppedError: pushing a closed or stopped stream.
            StreamLengthError: a stream would exceed ``config.backbone_config.max_position_embeddings``.
            InvalidTokenError: an id that is not an integer in ``[0, vocab_size)``, or a single id not in a list.
            ValueError: mismatched lengths, a stream of another monitor, or one stream twice.
            Nothing is changed when any of these is raised, nor when the model's forward itself raises.
        """
        if len(states) != len(new_ids):
            raise ValueError(f"push_many got {len(states)} states but {len(new_ids)} lists of new ids")
        id_lists = []
        seen: set[int] = set()
        for state, ids in zip(states, new_ids):
            self._check_pushable(state)
            if id(state) in seen:
                raise ValueError(f"stream {state.stream_id} appears twice in one push_many; concatenate its tokens")
            seen.add(id(state))
            ids = _normalise_ids(ids, f"stream {state.stream_id}")
            self._check_ids(state, ids)
            id_lists.append(ids)
        active = [i for i, ids in enumerate(id_lists) if ids]
        results = [self._empty_result(state) for state in states]
        if not active:
            return results
        slab = self._gather([states[i] for i in active])
        row_ids: list[list[int]] = [[] for _ in range(slab.n_rows)]
        for i in active:
            row_ids[states[i]._row] = id_lists[i]
        token_probs, holistic_probs, category_probs = self._forward(slab, row_ids)
        for i in active:
            row = states[i]._row
            results[i] = self._consume(states[i], id_lists[i], token_probs[row], holistic_probs[row],
                                       None if category_probs is None else category_probs[row])
        return results

    @torch.inference_mode()
    def close(self, state: StreamState) -> None:
        """Release a stream's KV cache row. Closing twice is harmless; pushing after close raises.

        The memory of a slab (the KV buffer a group of streams shares) is freed with its last stream; a slab left
        mostly empty, or far longer than its streams, is compacted (its streams move into a right-sized one).

        Raises:
            TypeError: not a stream state. ValueError: a stream of another monitor.
        """
        if not isinstance(state, StreamState):
            raise TypeError(f"close() needs a StreamState returned by this monitor's start(), got "
                            f"{type(state).__name__}")
        if state._monitor is not self:
            raise ValueError(f"stream {state.stream_id} belongs to another monitor")
        if state.closed:
            return
        slab = state._slab
        if slab is not None:
            slab.owners[state._row] = None
        state._slab, state._row, state.closed = None, -1, True
        if slab is not None:
            self._tidy(slab)

    # ----------------------------------------------------------------------------------------------- internals

    def _check_pushable(self, state: StreamState) -> None:
        if not isinstance(state, StreamState) or state._monitor is not self:
            raise ValueError(f"push needs a StreamState returned by this monitor's start(), got "
                             f"{type(state).__name__}" + (" of another monitor" if isinstance(state, StreamState)
                                                          else ""))
        if state.closed:
            raise StreamClosedError(f"stream {state.stream_id} is closed; start a new stream with monitor.start()",
                                    stream_id=state.stream_id)
        if state.stop is not None:
            raise StreamStoppedError(f"stream {state.stream_id} was already stopped ({state.stop.describe()}); "
                                     f"stop the generation and close the stream instead of pushing more tokens",
                                     stream_id=state.stream_id)

    def _check_vocabulary(self, label: str, ids: list[int], stream_id: int | None = None) -> None:
        for position, token in enumerate(ids):
            if not 0 <= token < self.vocab_size:
                raise InvalidTokenError(
                    f"{label}: token id {token} at position {position} is outside the model's vocabulary "
                    f"[0, {self.vocab_size}); ids must come from the monitor's own tokenizer (use serve.text_guard "
                    f"to monitor text from another tokenizer)", stream_id=stream_id)

    def _check_ids(self, state: StreamState, ids: list[int]) -> None:
        self._check_vocabulary(f"stream {state.stream_id}", ids, state.stream_id)
        if state.length + len(ids) > self.max_length:
            raise StreamLengthError(
                f"stream {state.stream_id}: {len(ids)} more tokens would make it {state.length + len(ids)} tokens "
                f"long, beyond the model's maximum of {self.max_length} "
                f"(config.backbone_config.max_position_embeddings); close it, the monitor cannot score further",
                stream_id=state.stream_id)

    def _empty_result(self, state: StreamState) -> PushResult:
        return PushResult([], [], [], count=state.rule_state.count, seen=state.rule_state.seen, stop=None)

    def _consume(self, state: StreamState, ids: list[int], token: list[float], holistic: list[float],
                 categories: list[list[float]] | None = None) -> PushResult:
        scores = token if self.scorer == "token" else holistic
        first_new = state.n_response_tokens
        state.length += len(ids)
        flags = [score >= self.theta for score in scores]
        rule_state = state.rule_state
        policy = self._category_policy
        annotations: list[CategoryAnnotation] = []
        if policy is None or policy.stops_wherever_the_rule_fires:
            self.rule.update(rule_state, flags)
        else:
            # Token by token, so that a firing the policy lets through can be recorded and the rule carry on.
            for at, flag in enumerate(flags):
                if self.rule.update(rule_state, [flag]) is None:
                    continue
                if not flag:
                    # delay-k's count stays at k after a firing that did not stop: only flagged tokens are
                    # re-evaluated, so an unflagged one is no firing.
                    rule_state.stop_index = None
                    continue
                name = named_category(categories[at], self.category_labels)
                score = scores[at] * categories[at][self.category_labels.index(name)]
                decision = policy.decide(name, score)
                if decision == BLOCK:
                    break
                annotations.append(CategoryAnnotation(index=rule_state.stop_index, token_id=ids[at],
                                                      score=scores[at], count=rule_state.count, category=name,
                                                      category_score=score, reason=decision))
                rule_state.stop_index = None  # the rule carries on from its state
        state.annotations.extend(annotations)
        stop = None
        if rule_state.stop_index is not None:
            at = rule_state.stop_index - first_new
            name = named = None
            if categories is not None:
                named = _category_scores(scores[at], categories[at], self.category_labels)
                name = named_category(categories[at], self.category_labels)
            stop = StopEvent(index=rule_state.stop_index, token_id=ids[at], score=scores[at],
                             count=rule_state.count, rule=self.rule.name, theta=self.theta,
                             scorer=self.scorer, category=name, category_scores=named)
            state.stop = stop
        return PushResult(scores=scores, token_scores=token, holistic_scores=holistic,
                          count=rule_state.count, seen=rule_state.seen, stop=stop, category_probs=categories,
                          annotations=annotations)

    def _new_slab(self, n_rows: int, capacity: int) -> KVSlab:
        slab = KVSlab(self.n_layers, n_rows, capacity)
        self._slabs[id(slab)] = slab
        return slab

    def _release(self, slab: KVSlab) -> None:
        """Free a slab that no stream owns any more (and the fast path's graphs over its buffers)."""
        if self._fast_step is not None:
            self._fast_step.release_slab(slab)
        slab.release()
        self._slabs.pop(id(slab), None)

    def _move(self, state: StreamState, target: KVSlab, row: int) -> None:
        target.copy_row_from(row, state._slab, state._row, state.length)
        state._slab.owners[state._row] = None
        target.owners[row] = state
        state._slab, state._row = target, row

    def _tidy(self, slab: KVSlab) -> None:
        """Free ``slab`` when no stream is left in it; compact it when it is mostly empty or far too long.

        Compaction moves the remaining streams (a copy of their past) into a slab with exactly their rows and the
        capacity the longest needs. It happens when fewer than half of the rows are live, or when the capacity is
        more than :data:`SHRINK_FACTOR` times the longest live stream: a slab is created full and capacity grows by
        doubling, so each compaction is paid for by at least half a slab of departures or by a halving of the
        length, and what is held stays within a constant factor of what the live rows need.
        """
        owners = [owner for owner in slab.owners if owner is not None]
        if not owners:
            self._release(slab)
            return
        longest = max(owner.length for owner in owners)
        sparse = 2 * len(owners) < slab.n_rows
        too_long = slab.capacity > max(SHRINK_FACTOR * (longest + 1), 2 * CAPACITY_QUANTUM)
        if not (sparse or too_long) or not slab.is_allocated():
            return
        target = self._new_slab(len(owners), longest + CAPACITY_QUANTUM)
        for row, state in enumerate(owners):
            self._move(state, target, row)
        self._release(slab)

    def _gather(self, states: list[StreamState]) -> KVSlab:
        """A slab that holds all ``states``; moves streams (copying their past) only when the batch changes.

        The slab holding most of the requested streams is reused when at least half of its rows take part (idle
        rows cost compute, never correctness) and its free rows can take the others; otherwise the requested
        streams are copied into a fresh slab sized for them. The slabs the movers left are tidied (:meth:`_tidy`).
        """
        slabs = {}
        for state in states:
            slabs.setdefault(id(state._slab), [state._slab, 0])[1] += 1
        major, _ = max(slabs.values(), key=lambda entry: entry[1])
        outsiders = [s for s in states if s._slab is not major]
        free = major.free_rows()
        if 2 * len(states) >= major.n_rows and len(outsiders) <= len(free):
            target, rows = major, free
            movers = outsiders
        else:
            capacity = max(s.length for s in states) + CAPACITY_QUANTUM
            target, rows = self._new_slab(len(states), capacity), list(range(len(states)))
            movers = list(states)
        sources = {id(state._slab): state._slab for state in movers}
        for state, row in zip(movers, rows):
            self._move(state, target, row)
        for source in sources.values():
            if source is not target:
                self._tidy(source)
        return target

    def _forward(self, slab: KVSlab, row_ids: list[list[int]]) -> tuple[list[list[float]], list[list[float]],
                                                                         list[list[list[float]]] | None]:
        """Plan one batched step over all rows of ``slab`` (``[]`` for idle rows), run it, return per-row scores:
        token, holistic, and (with a category head, else None) each token's category distribution."""
        lengths = [owner.length if owner is not None else 0 for owner in slab.owners]
        width = max(len(ids) for ids in row_ids)
        slab.ensure_capacity(max(length + len(ids) for length, ids in zip(lengths, row_ids)))
        scratch = slab.capacity - 1
        input_ids, positions, columns = [], [], []
        for length, ids in zip(lengths, row_ids):
            n = len(ids)
            input_ids.append(ids + [0] * (width - n))
            # Padding queries get the positions they would have had (clamped for the rotary table's sake); their
            # keys go to the scratch column so they never land inside the row's real past.
            positions.append([min(length + t, self.max_length - 1) for t in range(width)])
            columns.append([length + t for t in range(n)] + [scratch] * (width - n))
        kv_length = max(length + len(ids) for length, ids in zip(lengths, row_ids) if ids)
        fast = self._fast_step
        scored = None
        if fast is not None and fast.handles(width):
            scored = fast.run(slab, input_ids, positions, columns, kv_length)
        if scored is None:
            device = self.device
            positions_t = torch.tensor(positions, device=device)
            plan = StepPlan(write_columns=torch.tensor(columns, device=device), kv_length=kv_length)
            mask = build_attention_mask(positions_t, kv_length, self.model.backbone.config._attn_implementation,
                                        self.model.dtype)
            scored = self._run_step(SlabCache(slab), torch.tensor(input_ids, device=device), positions_t, mask, plan)
        token, holistic, categories = (None if t is None else t.cpu().tolist() for t in scored)
        return ([row[: len(ids)] for row, ids in zip(token, row_ids)],
                [row[: len(ids)] for row, ids in zip(holistic, row_ids)],
                None if categories is None else [row[: len(ids)] for row, ids in zip(categories, row_ids)])

    def _run_step(
        self,
        cache: SlabCache,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        plan: StepPlan,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The per-step compute: one batched backbone forward of the new tokens over the slab, then the heads.

        This is the method a device-specific fast path (static buffers + CUDA graph) replaces.

        Args:
            cache: the slab's cache adapter; the forward writes the new keys/values into it.
            input_ids, position_ids: ``(rows, new)``.
            attention_mask: ``(rows, 1, new, plan.kv_length)`` from :func:`build_attention_mask`.
            plan: write columns and attended span of this step.

        Returns:
            ``(token, holistic, categories)``: harmful probabilities ``(rows, new)`` in fp32 (padding positions
            included), and with a category head its distribution ``(rows, new, n_categories)`` in fp32 (one more
            ``Linear(hidden, n_categories)`` and a softmax per token), else None.
        """
        cache.plan_step(plan)
        # The backbone is called directly rather than through SCMModel.forward: that forward also pools the holistic
        # head at the last real token, which it reads from a 2D mask, and we need both heads at every position.
        out = self.model.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                  use_cache=True, **{self._cache_kwarg: cache})
        hidden = out.last_hidden_state
        token_logits = self.model.token_scorer(hidden)
        holistic_logits = self.model.holistic_scorer(hidden)
        categories = None
        if self.category_labels is not None:
            categories = torch.softmax(self.model.category_scorer(hidden).float(), dim=-1)
        return _harmful_probability(token_logits), _harmful_probability(holistic_logits), categories
