"""CUDA fast path of the streaming monitor: a static decoder step over the KV slab, captured in CUDA graphs.

Why: one streamed token costs the eager runtime hundreds of small kernel launches, each prepared by Python (the
attention glue, the transformers mask and cache plumbing); on a GPU the per-token step is bound by that launch
overhead, not by the arithmetic (measured on one H200: 57 ms per token with HF eager decoding against a 0.23 ms
bandwidth floor for a 0.5B backbone). Replaying a captured CUDA graph launches the whole step at once.

Design, in two layers so the graph only ever wraps code that is tested on a CPU:

1. :class:`StaticDecoderStep` is an explicit decoder step for Llama-style backbones (Llama, Qwen2, Qwen3, Mistral)
   built from the backbone's own modules (embedding, rotary table, norms, projections, MLPs, heads). Every shape in
   it is fixed by ``(rows, width, read_length)`` and every per-step value (token ids, positions, write columns) is a
   device tensor, so it does no host synchronisation and allocates the same tensors on every call. It writes the new
   keys/values into the :class:`~serve.kv_slab.KVSlab` buffers at the rows' own columns (a ``scatter_`` on
   device-side indices) and attends over the first ``read_length`` columns with a mask built on device from the
   positions: the same storage, positions and masking semantics as the eager runtime, so its scores equal the
   eager step's (``tests/model/test_streaming_cuda.py``, fp32, 1e-5).
2. :class:`FastStep` is what :class:`~serve.monitor.StreamingMonitor` calls. In ``cuda-graph`` mode it handles
   the one-token-per-stream step (the hot loop of a monitored generation): it copies the step's ids, positions and
   write columns into static input buffers, and replays a graph captured for the slab's buffers and a bucket of
   the read length. A (slab buffers, read bucket) pair runs the static step uncaptured on its first use and is
   captured on its second (a slab that serves a single step, as when the set of pushed streams keeps changing,
   never pays for a capture); at most ``max_graphs`` graphs are kept (least recently used are dropped).
   Multi-token pushes (prompts, catch-up) keep the eager runtime. In ``static`` mode it runs the static step
   without capture for every width (any device): the tested reference and a debugging aid.

Heads: the step ends in the token and holistic heads and, for a checkpoint with a category head, the category head
and its softmax, all inside the captured graph: its single output is ``(2 + n_categories, rows, width)`` (token,
holistic, then each category's probability), copied to the host in one transfer. A head-less checkpoint's output is
``(2, rows, width)`` exactly as before.

Read-length buckets: attending over the whole slab capacity would make the cost of a short stream depend on the
longest one's buffer; attending over exactly the needed columns would capture a graph per token. Buckets round
the needed length up by at most a quarter (:func:`read_length_bucket`), so a stream growing to 4K tokens captures
about 20 graphs in its life and never attends over more than 25% masked columns.

Selection (``StreamingMonitor(..., fast_path=...)``): ``auto`` picks ``cuda-graph`` when the model sits on a CUDA
device and its backbone is supported, else the eager runtime; ``off`` always uses the eager runtime; ``static``
and ``cuda-graph`` force a mode and raise a clear error where it cannot run. A capture that fails (an operation
that cannot be captured on some torch/driver combination) is reported in :attr:`FastStep.stats` and the monitor
continues on the eager runtime for good: the fast path never changes what the monitor answers.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from serve.kv_slab import KVSlab

logger = logging.getLogger(__name__)

FAST_PATHS = ("auto", "off", "static", "cuda-graph")
# Backbones whose decoder layer is exactly: x + attn(norm(x)), then x + mlp(norm(x)); rotary positions; q/k/v/o
# projections (Qwen3 adds per-head q/k norms, handled below). Others keep the eager runtime.
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
# Smallest rounding unit of the read length (columns); matches the slab's capacity quantum.
READ_LENGTH_GRANULE = 64
DEFAULT_MAX_GRAPHS = 32
# A step shape is captured on this use; earlier uses run the same static step uncaptured.
CAPTURE_ON_USE = 2
# Untimed executions before a capture: lazy initialisations (cuBLAS handles and workspaces, kernel selection) must
# happen outside the capture.
CAPTURE_WARMUP_RUNS = 2

# capture(step) -> (replay, output): ``step`` computes the output from the static inputs; ``replay()`` recomputes
# it into the same ``output`` tensor. CUDA graphs do this on a GPU; tests substitute an eager equivalent.
CaptureFn = Callable[[Callable[[], torch.Tensor]], tuple[Callable[[], None], torch.Tensor]]


def read_length_bucket(kv_length: int, capacity: int) -> int:
    """The number of leading slab columns a step attends over: ``kv_length`` rounded up by at most a quarter.

    Args:
        kv_length: columns the step's queries actually need (the longest active row's end).
        capacity: the slab's capacity (an upper bound: buffers have no more columns).

    Returns:
        A multiple of a power-of-two granule (at least :data:`READ_LENGTH_GRANULE`), at most ``capacity``.

    Raises:
        ValueError: a non-positive ``kv_length`` or one beyond ``capacity``.
    """
    if kv_length < 1 or kv_length > capacity:
        raise ValueError(f"kv_length must be in [1, capacity={capacity}], got {kv_length}")
    granule = max(READ_LENGTH_GRANULE, (1 << (kv_length.bit_length() - 1)) // 4)
    return min(-(-kv_length // granule) * granule, capacity)


def static_step_support(model: torch.nn.Module) -> str | None:
    """Why :class:`StaticDecoderStep` cannot run ``model``'s backbone, or None when it can.

    Args:
        model: an :class:`~model.modeling_qwen4dual_2CE_w_logic.SCMModel`.

    Returns:
        None, or a one-line reason naming the missing piece.
    """
    backbone = getattr(model, "backbone", None)
    config = getattr(backbone, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return (f"the static streaming step supports backbones of type {', '.join(SUPPORTED_MODEL_TYPES)}; this one "
                f"is {model_type!r}")
    layer_types = set(getattr(config, "layer_types", None) or ["full_attention"])
    if layer_types != {"full_attention"}:
        return f"the static streaming step needs full attention in every layer, got {sorted(layer_types)}"
    for name in ("embed_tokens", "layers", "norm", "rotary_emb"):
        if not hasattr(backbone, name):
            return f"the {model_type} backbone has no {name!r} module (an unexpected transformers version?)"
    layer = backbone.layers[0]
    for name in ("self_attn", "mlp", "input_layernorm", "post_attention_layernorm"):
        if not hasattr(layer, name):
            return f"the {model_type} decoder layer has no {name!r} module (an unexpected transformers version?)"
    attention = layer.self_attn
    for name in ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling"):
        if not hasattr(attention, name):
            return f"the {model_type} attention has no {name!r} attribute (an unexpected transformers version?)"
    if not callable(getattr(sys.modules.get(type(attention).__module__), "apply_rotary_pos_emb", None)):
        return f"{type(attention).__module__} has no apply_rotary_pos_emb (an unexpected transformers version?)"
    return None


def _harmful_probability(logits: torch.Tensor) -> torch.Tensor:
    # fp32 softmax, as the eager runtime and the offline evaluation do: bf16 probabilities are too coarse near theta.
    return torch.softmax(logits.float(), dim=-1)[..., 1]


class StaticDecoderStep:
    """One decoder step of an SCM over a :class:`KVSlab`, with fixed shapes and no host synchronisation.

    Args:
        model: an SCM model whose backbone passes :func:`static_step_support` (its modules are used as they are, so
            later weight updates are seen; moving the model to another device needs a new step object).

    Raises:
        ValueError: an unsupported backbone (the message says why).
    """

    def __init__(self, model: torch.nn.Module) -> None:
        reason = static_step_support(model)
        if reason is not None:
            raise ValueError(reason)
        self.model = model
        backbone = model.backbone
        config = backbone.config
        self.layers = list(backbone.layers[: config.num_hidden_layers])
        attention = self.layers[0].self_attn
        self.head_dim = int(attention.head_dim)
        self.n_heads = int(config.num_attention_heads)
        self.n_kv_heads = int(config.num_key_value_heads)
        self.groups = self.n_heads // self.n_kv_heads
        self._apply_rotary = sys.modules[type(attention).__module__].apply_rotary_pos_emb

    def ensure_buffers(self, slab: KVSlab) -> None:
        """Allocate the slab's buffers when no forward wrote into it yet (zeros: masked columns must be finite)."""
        if slab.is_allocated():
            return
        weight = self.model.get_input_embeddings().weight
        shape = (slab.n_rows, self.n_kv_heads, slab.capacity, self.head_dim)
        for layer in range(slab.n_layers):
            if slab.keys[layer] is None:
                slab.keys[layer] = torch.zeros(shape, dtype=weight.dtype, device=weight.device)
                slab.values[layer] = torch.zeros(shape, dtype=weight.dtype, device=weight.device)

    def __call__(
        self,
        slab: KVSlab,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        write_columns: torch.Tensor,
        read_length: int,
    ) -> torch.Tensor:
        """Run the step: write the new keys/values into ``slab``, return both heads' harmful probabilities.

        Args:
            slab: allocated buffers (see :meth:`ensure_buffers`) on the model's device.
            input_ids, position_ids, write_columns: ``(rows, width)`` long tensors on the model's device: the new
                tokens, their absolute positions (RoPE and mask), and the buffer column each one's key goes to
                (padding -> the slab's scratch column), as ``StreamingMonitor._forward`` plans them.
            read_length: leading buffer columns attended over (>= every real query's position + 1).

        Returns:
            ``(2 + n_categories, rows, width)`` fp32: token-head then holistic-head probabilities of the harmful
            class, then (with a category head; ``n_categories`` is 0 without one) the category distribution.
        """
        rows, width = input_ids.shape
        groups, kv_heads, head_dim = self.groups, self.n_kv_heads, self.head_dim
        backbone = self.model.backbone
        hidden = backbone.embed_tokens(input_ids)
        cos, sin = backbone.rotary_emb(hidden, position_ids)
        columns = torch.arange(read_length, device=input_ids.device)
        allowed = columns.view(1, 1, read_length) <= position_ids.unsqueeze(-1)  # (rows, width, read_length)
        # Grouped-query attention without copying keys: the `groups` query heads that share a key/value head are
        # laid out as extra query rows of that head; they share their token's mask row.
        mask = (allowed.view(rows, 1, 1, width, read_length)
                .expand(rows, 1, groups, width, read_length)
                .reshape(rows, 1, groups * width, read_length))
        scatter_index = write_columns.view(rows, 1, width, 1).expand(rows, kv_heads, width, head_dim)
        for index, layer in enumerate(self.layers):
            attended = self._attention(layer.self_attn, layer.input_layernorm(hidden), cos, sin, slab.keys[index],
                                       slab.values[index], scatter_index, mask, read_length)
            hidden = hidden + attended
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        hidden = backbone.norm(hidden)
        token = _harmful_probability(self.model.token_scorer(hidden))
        holistic = _harmful_probability(self.model.holistic_scorer(hidden))
        if getattr(self.model, "has_category_head", False):
            categories = torch.softmax(self.model.category_scorer(hidden).float(), dim=-1).permute(2, 0, 1)
            return torch.cat((token.unsqueeze(0), holistic.unsqueeze(0), categories))
        return torch.stack((token, holistic))

    def _attention(
        self,
        attention: torch.nn.Module,
        hidden: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        scatter_index: torch.Tensor,
        mask: torch.Tensor,
        read_length: int,
    ) -> torch.Tensor:
        rows, width, _ = hidden.shape
        per_head = (rows, width, -1, self.head_dim)
        query = attention.q_proj(hidden).view(per_head)
        key = attention.k_proj(hidden).view(per_head)
        value = attention.v_proj(hidden).view(per_head)
        if hasattr(attention, "q_norm"):  # Qwen3 normalises each head before the rotation
            query, key = attention.q_norm(query), attention.k_norm(key)
        query, key, value = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
        query, key = self._apply_rotary(query, key, cos, sin)
        keys.scatter_(2, scatter_index, key.to(keys.dtype))
        values.scatter_(2, scatter_index, value.to(values.dtype))
        grouped_query = query.reshape(rows, self.n_kv_heads, self.groups * width, self.head_dim)
        out = F.scaled_dot_product_attention(grouped_query, keys[:, :, :read_length], values[:, :, :read_length],
                                             attn_mask=mask, scale=attention.scaling)
        out = out.reshape(rows, self.n_heads, width, self.head_dim).transpose(1, 2).reshape(rows, width, -1)
        return attention.o_proj(out)


def capture_cuda_graph(step: Callable[[], torch.Tensor]) -> tuple[Callable[[], None], torch.Tensor]:
    """Capture ``step`` in a CUDA graph (after untimed warm-up runs on a side stream, as torch's docs prescribe).

    The warm-up runs execute the step for real; the streaming step is idempotent for fixed inputs (it writes the
    same keys into the same columns), so running it again at replay changes nothing. Warm-up and capture run in
    inference mode, like every monitor step: the slab's buffers are inference tensors, and torch wants a graph
    captured in the mode it is replayed in.

    Returns:
        ``(replay, output)``: ``replay()`` launches the graph, which rewrites ``output`` in place.
    """
    with torch.inference_mode():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(CAPTURE_WARMUP_RUNS):
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            output = step()
    return graph.replay, output


def capture_eagerly(step: Callable[[], torch.Tensor]) -> tuple[Callable[[], None], torch.Tensor]:
    """The contract of :func:`capture_cuda_graph` without a GPU: replay recomputes ``step`` into the same tensor.

    Used by the CPU tests and the benchmark's ``--tiny`` run to exercise the graph bookkeeping (static input
    buffers, keys, eviction) exactly as the CUDA path uses it.
    """
    output = step()

    def replay() -> None:
        output.copy_(step())

    return replay, output


@dataclass
class FastStepStats:
    """Counters of a :class:`FastStep` (for benchmarks and reports).

    Attributes:
        captures: graphs captured. replays: graph replays. static_steps: uncaptured static steps (every step
            in ``static`` mode; first uses of a step shape in ``cuda-graph`` mode).
        capture_seconds: wall time spent capturing (warm-ups included). evictions: graphs dropped (LRU).
        failure: why graph mode was switched off (the monitor then uses the eager runtime), or None.
    """

    captures: int = 0
    replays: int = 0
    static_steps: int = 0
    capture_seconds: float = 0.0
    evictions: int = 0
    failure: str | None = None


@dataclass
class _Graph:
    inputs: torch.Tensor  # (3, rows, width) long: ids, positions, write columns
    replay: Callable[[], None]
    output: torch.Tensor  # (2 + n_categories, rows, width) fp32


class FastStep:
    """The monitor's fast per-step compute (see the module docstring).

    Args:
        model: the SCM model (supported backbone; on a CUDA device for ``cuda-graph``).
        mode: ``static`` (uncaptured static step, every width) or ``cuda-graph`` (captured one-token steps).
        capture: how graphs are captured; default :func:`capture_cuda_graph`.
        max_graphs: graphs kept (least recently used dropped beyond).
        capture_on_use: a step shape is captured on this use (1: at once); earlier uses run uncaptured.

    Raises:
        ValueError: an unknown mode, an unsupported backbone, ``max_graphs`` or ``capture_on_use`` < 1.
    """

    def __init__(self, model: torch.nn.Module, mode: str, capture: CaptureFn | None = None,
                 max_graphs: int = DEFAULT_MAX_GRAPHS, capture_on_use: int = CAPTURE_ON_USE) -> None:
        if mode not in ("static", "cuda-graph"):
            raise ValueError(f"FastStep mode must be 'static' or 'cuda-graph', got {mode!r}")
        if max_graphs < 1 or capture_on_use < 1:
            raise ValueError(f"max_graphs and capture_on_use must be >= 1, got {max_graphs} and {capture_on_use}")
        self.mode = mode
        self.step = StaticDecoderStep(model)
        self.capture = capture or capture_cuda_graph
        self.max_graphs = max_graphs
        self.capture_on_use = capture_on_use
        self.stats = FastStepStats()
        self._graphs: OrderedDict[tuple, _Graph] = OrderedDict()
        self._uses: dict[tuple, int] = {}

    @property
    def name(self) -> str:
        return self.mode

    def handles(self, width: int) -> bool:
        """Whether a step of ``width`` new tokens per row goes through this fast path."""
        if self.mode == "static":
            return True
        return width == 1 and self.stats.failure is None

    def stats_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, **asdict(self.stats), "graphs_held": len(self._graphs)}

    def run(
        self,
        slab: KVSlab,
        input_ids: list[list[int]],
        positions: list[list[int]],
        columns: list[list[int]],
        kv_length: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
        """One planned step (the lists ``StreamingMonitor._forward`` builds, ``(rows, width)`` each).

        Returns:
            ``(token, holistic, categories)`` on the CPU: probabilities ``(rows, width)``, and the category
            distribution ``(rows, width, n_categories)`` for a checkpoint with a category head (else None); or None
            when this step must go through the eager runtime instead (graph mode switched off after a failed
            capture).
        """
        device = self.step.model.get_input_embeddings().weight.device
        plan = torch.tensor([input_ids, positions, columns], dtype=torch.long)
        read_length = read_length_bucket(kv_length, slab.capacity)
        self.step.ensure_buffers(slab)
        graph = None if self.mode == "static" else self._graph_for(slab, plan, read_length, device)
        if self.stats.failure is not None and self.mode == "cuda-graph":
            return None
        if graph is None:
            self.stats.static_steps += 1
            plan = plan.to(device)
            return _split(self.step(slab, plan[0], plan[1], plan[2], read_length).cpu())
        graph.inputs.copy_(plan)
        graph.replay()
        self.stats.replays += 1
        # One device-to-host copy for all heads (it also waits for the replay).
        return _split(graph.output.cpu())

    def release_slab(self, slab: KVSlab) -> None:
        """Forget the graphs captured over ``slab``'s buffers (the monitor is freeing the slab).

        A graph keeps its own memory pool for the step's intermediate tensors, and (with :func:`capture_eagerly`) a
        reference to the slab: dropping the graphs lets both go with the slab.
        """
        if not slab.is_allocated():
            return
        pointers = self._buffer_pointers(slab)
        for key in [key for key in self._graphs if key[0] == pointers]:
            del self._graphs[key]
        for key in [key for key in self._uses if key[0] == pointers]:
            del self._uses[key]

    @staticmethod
    def _buffer_pointers(slab: KVSlab) -> tuple[int, ...]:
        return tuple(t.data_ptr() for t in (*slab.keys, *slab.values))

    def _graph_for(self, slab: KVSlab, plan: torch.Tensor, read_length: int, device: torch.device) -> _Graph | None:
        """The graph for this step's shape: held, captured now, or None (not captured yet, or capture failed)."""
        # A graph reads and writes fixed addresses: it is valid for exactly these buffers (and weights) in this
        # layout. Buffers a slab replaced when it grew are never matched again and age out of the cache.
        key = (self._buffer_pointers(slab), tuple(slab.keys[0].shape), read_length,
               tuple(plan.shape), self.step.model.get_input_embeddings().weight.data_ptr())
        graph = self._graphs.get(key)
        if graph is not None:
            self._graphs.move_to_end(key)
            return graph
        uses = self._uses.get(key, 0) + 1
        if uses < self.capture_on_use:
            if len(self._uses) >= 8 * self.max_graphs:  # bound the bookkeeping of shapes seen once
                self._uses.clear()
            self._uses[key] = uses
            return None
        self._uses.pop(key, None)
        began = time.perf_counter()
        inputs = plan.to(device)
        try:
            replay, output = self.capture(lambda: self.step(slab, inputs[0], inputs[1], inputs[2], read_length))
        except Exception as err:  # any capture problem: report it and keep answering through the eager runtime
            self.stats.failure = f"{type(err).__name__}: {err}"
            self._graphs.clear()
            logger.warning("CUDA graph capture failed (%s); the monitor continues on the eager runtime",
                           self.stats.failure)
            return None
        self.stats.captures += 1
        self.stats.capture_seconds += time.perf_counter() - began
        graph = _Graph(inputs=inputs, replay=replay, output=output)
        self._graphs[key] = graph
        if len(self._graphs) > self.max_graphs:
            self._graphs.popitem(last=False)
            self.stats.evictions += 1
        return graph


def _split(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """A step's output ``(2 + n_categories, rows, width)`` -> token, holistic, categories ``(rows, width, n)``."""
    return probs[0], probs[1], probs[2:].permute(1, 2, 0) if probs.shape[0] > 2 else None


def make_fast_step(model: torch.nn.Module, fast_path: "str | FastStep") -> FastStep | None:
    """The monitor's fast path for ``fast_path`` (see the module docstring), or None for the eager runtime.

    Args:
        model: the monitor's SCM model (already on its device).
        fast_path: ``auto``, ``off``, ``static``, ``cuda-graph``, or a ready :class:`FastStep`.

    Raises:
        ValueError: an unknown name; ``static``/``cuda-graph`` on an unsupported backbone; ``cuda-graph`` with the
            model off CUDA.
    """
    if isinstance(fast_path, FastStep):
        return fast_path
    if fast_path not in FAST_PATHS:
        raise ValueError(f"fast_path must be one of {', '.join(FAST_PATHS)}, got {fast_path!r}")
    if fast_path == "off":
        return None
    device = model.get_input_embeddings().weight.device
    reason = static_step_support(model)
    if fast_path == "auto":
        if device.type != "cuda":
            return None
        if reason is not None:
            logger.info("streaming fast path off: %s", reason)
            return None
        return FastStep(model, "cuda-graph")
    if reason is not None:
        raise ValueError(f"fast_path={fast_path!r}: {reason}; use fast_path='off' (or 'auto', which falls back)")
    if fast_path == "cuda-graph" and device.type != "cuda":
        raise ValueError(f"fast_path='cuda-graph' needs the model on a CUDA device, it is on {device}; use "
                         f"fast_path='auto' (eager runtime off CUDA) or 'static'")
    return FastStep(model, fast_path)
