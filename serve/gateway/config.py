"""The gateway's settings: one dataclass whose fields are the CLI flags of ``python -m serve.gateway``."""

from __future__ import annotations

from dataclasses import dataclass, field

from serve.category_policy import ANNOTATION_FORMATS, CategoryArguments
from serve.operating_point_args import OperatingPointArguments

DEFAULT_MODEL_PATH = "runs/scm-default"
CHAT_PROMPTS = ("last-user", "conversation")
MONITOR_ERROR_POLICIES = ("close", "open")


@dataclass
class GatewayArguments(OperatingPointArguments, CategoryArguments):
    """Flags of ``python -m serve.gateway`` (``bash scripts/run-serve.sh``)."""

    model_path: str = field(default=DEFAULT_MODEL_PATH, metadata={
        "help": "SCM checkpoint folder of the monitor (default runs/scm-default, what `bash scripts/run-scm.sh` "
                "trains with no flags)."})
    upstream: str | None = field(default=None, metadata={
        "help": "Proxy mode: base URL of an OpenAI-compatible server (vLLM, llama.cpp, TGI, a hosted API), e.g. "
                "http://127.0.0.1:8001/v1. Its text deltas are monitored through the text guard."})
    upstream_api_key: str | None = field(default=None, metadata={
        "help": "Bearer key sent to the upstream (default: the SCM_UPSTREAM_API_KEY environment variable)."})
    upstream_model: str | None = field(default=None, metadata={
        "help": "Model name sent upstream instead of the client's `model` field."})
    upstream_timeout: float = field(default=60.0, metadata={
        "help": "Seconds to wait for the upstream to connect, answer, or send the next chunk."})
    stream_idle_timeout: float = field(default=60.0, metadata={
        "help": "Seconds a stream may go without scored progress (new scored text, a stop, its end) before it is "
                "ended with an error; keepalive comments and text the monitor cannot score yet do not count."})
    max_stream_seconds: float = field(default=600.0, metadata={
        "help": "Seconds a stream may last in all before it is ended with an error."})
    max_request_bytes: int = field(default=4 * 1024 * 1024, metadata={
        "help": "Largest request body in bytes (default 4 MiB); larger ones get 413 before they are read whole."})
    generator: str | None = field(default=None, metadata={
        "help": "Local mode: HF causal LM folder to generate with (default, when --upstream is not given: the "
                "embedded SmolLM2-135M-Instruct)."})
    host: str = field(default="127.0.0.1", metadata={"help": "Address to listen on."})
    port: int = field(default=8000, metadata={"help": "Port to listen on."})
    device: str = field(default="auto", metadata={
        "help": "Device of the monitor (and the local generator): auto (cuda if available), cpu, cuda, cuda:1."})
    threads: int = field(default=0, metadata={
        "help": "torch intra-op threads of the process (0: torch's choice). On a CPU shared with other work, fewer "
                "threads than cores avoids the heavy slowdown of oversubscribed thread pools."})
    dtype: str | None = field(default=None, metadata={
        "help": "Monitor dtype: float32, bfloat16, float16 (default: the checkpoint's)."})
    hold_back: bool = field(default=True, metadata={
        "help": "Release only text the monitor has scored (default). --no-hold-back releases text on arrival and "
                "scores it a couple of words behind (a stop may then come after the client saw a few words)."})
    chat_prompt: str = field(default="last-user", metadata={
        "help": "What the monitor reads as the prompt of a chat request: last-user (the last user message, as in "
                "training) or conversation (every message as 'role: content' lines).", "choices": list(CHAT_PROMPTS)})
    max_streams: int = field(default=64, metadata={
        "help": "Live streams at most; further requests get 429 with Retry-After."})
    max_batch_streams: int = field(default=64, metadata={
        "help": "Streams advanced together in one monitor step at most (1 = unbatched, one forward per stream)."})
    max_pending_chars: int = field(default=4096, metadata={
        "help": "Received but not yet scored characters (or tokens) per stream before the gateway stops reading "
                "its upstream (backpressure)."})
    on_monitor_error: str = field(default="close", metadata={
        "help": "When the monitor fails on a stream: close (default, fail closed: the stream ends with an error and "
                "nothing unscored is released) or open (the rest of the response passes through unmonitored).",
        "choices": list(MONITOR_ERROR_POLICIES)})
    max_tokens: int = field(default=256, metadata={
        "help": "Local mode: response tokens generated when a request sets no max_tokens."})
    api_key: str | None = field(default=None, metadata={
        "help": "Require `Authorization: Bearer KEY` on every route except /health and the static page "
                "(default: the SCM_API_KEY environment variable; unset = no key)."})
    retry_after: int = field(default=1, metadata={"help": "Seconds sent in Retry-After with a 429."})
    shutdown_grace: float = field(default=10.0, metadata={
        "help": "On SIGTERM/Ctrl-C: seconds live streams may still finish before they are ended with an error "
                "event."})
    served_model_name: str | None = field(default=None, metadata={
        "help": "Model name reported in responses and /v1/models (default: the generator's or upstream's)."})
    stats_file: str | None = field(default=None, metadata={
        "help": "At shutdown, write every monitor step's timing and batch size as JSON here (for benchmarks)."})
    annotations: str = field(default="none", metadata={
        "help": "azure: add Azure-style content_filter_results (per category {filtered, severity}) and "
                "content_filter_offsets to each choice of a streamed chunk (content_filter_results to a whole "
                "response's choice), for clients built for that shape (docs/SERVING.md, section 10). Default: none.",
        "choices": list(ANNOTATION_FORMATS)})
    log_level: str = field(default="info", metadata={"help": "debug, info, warning or error."})


def check_args(args: GatewayArguments) -> None:
    """Validate the flags that do not need the checkpoint.

    Raises:
        ValueError: naming the flag and the fix.
    """
    if args.upstream is not None and args.generator is not None:
        raise ValueError("pass --upstream URL (proxy an OpenAI-compatible server) or --generator PATH (generate "
                         "locally), not both")
    if args.upstream is not None and not args.upstream.startswith(("http://", "https://")):
        # Only the scheme is echoed: the value may hold a password.
        raise ValueError(f"--upstream must be an http(s) base URL such as http://127.0.0.1:8001/v1, got one "
                         f"starting {args.upstream.split(':', 1)[0][:16]!r}")
    if args.threads < 0:
        raise ValueError(f"--threads must be >= 0 (0: torch's choice), got {args.threads}")
    for name in ("max_streams", "max_batch_streams", "max_pending_chars", "max_tokens", "retry_after",
                 "max_request_bytes"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("upstream_timeout", "stream_idle_timeout", "max_stream_seconds"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be > 0 seconds, got {getattr(args, name)}")
    if args.shutdown_grace < 0:
        raise ValueError(f"--shutdown-grace must be >= 0 seconds, got {args.shutdown_grace}")
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    if args.chat_prompt not in CHAT_PROMPTS:
        raise ValueError(f"--chat-prompt must be one of {CHAT_PROMPTS}, got {args.chat_prompt!r}")
    if args.on_monitor_error not in MONITOR_ERROR_POLICIES:
        raise ValueError(f"--on-monitor-error must be one of {MONITOR_ERROR_POLICIES}, got {args.on_monitor_error!r}")
    if args.annotations not in ANNOTATION_FORMATS:
        raise ValueError(f"--annotations must be one of {', '.join(ANNOTATION_FORMATS)}, got {args.annotations!r}")
    if args.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise ValueError(f"--log-level must be debug, info, warning or error, got {args.log_level!r}")
