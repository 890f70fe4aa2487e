"""Serve the moderated gateway: an OpenAI-compatible endpoint whose responses the SCM monitor stops mid-stream.

Local mode (default) generates with an HF causal LM in the same process (the embedded SmolLM2-135M-Instruct unless
``--generator`` names another); proxy mode (``--upstream URL``) forwards every request to an OpenAI-compatible server
(vLLM, llama.cpp, TGI, a hosted API) and monitors its text. Either way clients see only text the monitor has
scored, and a stopped response ends with ``finish_reason: "content_filter"`` and a ``moderation`` object.

Commands::

    bash scripts/run-serve.sh                      # runs/scm-default + the embedded SmolLM2-135M on 127.0.0.1:8000
    python -m serve.gateway --model-path runs/scm-default --theta 0.7 --k 3 --port 8000
    python -m serve.gateway --model-path runs/scm-default --generator /path/to/causal-lm
    python -m serve.gateway --model-path runs/scm-default --upstream http://127.0.0.1:8001/v1 --port 8000
    python -m serve.gateway --upstream https://api.example.com/v1 --upstream-api-key "$KEY" --api-key "$MY_KEY"

Then ``curl http://127.0.0.1:8000/health``, any OpenAI client with ``base_url=http://127.0.0.1:8000/v1``, or the
chat page at ``http://127.0.0.1:8000/``. SIGTERM or Ctrl-C lets live streams finish for ``--shutdown-grace``
seconds, then ends them with an error event.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import torch
import uvicorn

from serve.category_policy import policy_from_args
from serve.gateway.app import Gateway, create_app
from serve.gateway.config import GatewayArguments, check_args
from serve.gateway.sources import LocalGenerator, Upstream
from serve.monitor import StreamingMonitor
from utils.cli import parse_dataclasses
from utils.io_utils import read_json, write_json

SCRIPT = "python -m serve.gateway"
log = logging.getLogger("serve.gateway")


class JsonFormatter(logging.Formatter):
    """One JSON object per log line: time, level, logger and the message (itself JSON for request records)."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        try:
            payload = json.loads(message)
            payload = payload if isinstance(payload, dict) else {"message": payload}
        except ValueError:
            payload = {"message": message}
        line = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname.lower(),
                "logger": record.name, **payload}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure_logging(level: str) -> None:
    """Structured (JSON lines) logs for the gateway's logger on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    log.handlers[:] = [handler]
    log.setLevel(level.upper())
    log.propagate = False


def _device(name: str) -> str:
    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


def build_gateway(args: GatewayArguments) -> Gateway:
    """Load the monitor and the response source the flags name.

    Raises:
        FileNotFoundError: no checkpoint at ``--model-path`` (the message says how to train one). ValueError: bad
            flags or a checkpoint without a tokenizer.
    """
    check_args(args)
    path = Path(args.model_path)
    if not (path / "config.json").is_file():
        hint = ("train it with `bash scripts/run-scm.sh` (no flags: SmolLM2-135M on the project's sample, about 20 "
                "minutes on an idle 2-core CPU; `bash scripts/quickstart.sh` also does it)")
        raise FileNotFoundError(f"no monitor checkpoint at {args.model_path} (no config.json there): {hint}, or pass "
                                f"--model-path FOLDER of an SCM checkpoint")
    # The category flags are checked against the checkpoint's head before its weights are loaded.
    policy_from_args(args, read_json(path / "config.json").get("category_labels"))
    device = _device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    # Flags > the checkpoint's operating_point.json > its training default (serve/operating_point.py).
    monitor = StreamingMonitor.from_pretrained(path, theta=args.theta, k=args.k, rule=args.rule, scorer=args.scorer,
                                               device=device, dtype=args.dtype, operating_point=args.operating_point,
                                               max_benign_stop_rate=args.max_benign_stop_rate)
    if monitor.tokenizer is None:
        raise ValueError(f"{args.model_path} holds no tokenizer files; save the tokenizer into the checkpoint")
    monitor.category_policy = policy_from_args(args, monitor.category_labels)
    info: dict[str, str] = {"model_path": args.model_path}
    upstream = generator = None
    if args.upstream is not None:
        key = args.upstream_api_key or os.environ.get("SCM_UPSTREAM_API_KEY")
        upstream = Upstream(args.upstream, api_key=key, timeout=args.upstream_timeout, model=args.upstream_model)
        name = args.served_model_name or args.upstream_model or "upstream"
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from model.assets import smollm2_path

        generator_path = args.generator or str(smollm2_path())
        tokenizer = AutoTokenizer.from_pretrained(generator_path)
        model = AutoModelForCausalLM.from_pretrained(generator_path).to(device)
        name = args.served_model_name or Path(generator_path).name
        generator = LocalGenerator(model, tokenizer, name, max_ahead=args.max_pending_chars)
        info["generator"] = args.generator or "embedded SmolLM2-135M-Instruct"
    return Gateway(monitor, upstream=upstream, generator=generator, model_name=name, chat_prompt=args.chat_prompt,
                   max_tokens=args.max_tokens, api_key=args.api_key or os.environ.get("SCM_API_KEY"),
                   retry_after=args.retry_after, info=info, max_request_bytes=args.max_request_bytes,
                   stream_idle_timeout=args.stream_idle_timeout, max_stream_seconds=args.max_stream_seconds,
                   annotations=args.annotations,
                   scheduler_options={"max_streams": args.max_streams, "max_batch_streams": args.max_batch_streams,
                                      "max_pending": args.max_pending_chars, "hold_back": args.hold_back,
                                      "on_error": args.on_monitor_error})


class GracefulServer(uvicorn.Server):
    """uvicorn, plus: on the first SIGTERM/Ctrl-C the gateway drains its live streams (see ``--shutdown-grace``)."""

    def __init__(self, config: uvicorn.Config, gateway: Gateway, grace: float) -> None:
        super().__init__(config)
        self.gateway, self.grace = gateway, grace
        self._drain: asyncio.Task | None = None

    def handle_exit(self, sig, frame) -> None:
        if self._drain is None:
            loop = asyncio.get_event_loop()
            self._drain = loop.create_task(self.gateway.begin_shutdown(self.grace))
        super().handle_exit(sig, frame)


class BackgroundServer:
    """Serve an ASGI app with uvicorn in a background thread on ``host`` and a free port (tests, notebooks, tools).

    Use as a context manager: entering starts the server and waits until it accepts connections; leaving stops it.

    Args:
        app: the ASGI app (e.g. ``create_app(gateway)``).
        host: the address to bind.
        start_timeout: seconds to wait for the start.
    """

    def __init__(self, app, host: str = "127.0.0.1", start_timeout: float = 30.0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.host, self.port = host, self.sock.getsockname()[1]
        self.start_timeout = start_timeout
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        """``http://host:port``."""
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()


async def serve(gateway: Gateway, host: str, port: int, grace: float = 10.0, log_level: str = "info") -> None:
    """Serve ``gateway`` until SIGTERM/Ctrl-C, then free everything."""
    config = uvicorn.Config(create_app(gateway), host=host, port=port, log_level=log_level.lower(),
                            timeout_graceful_shutdown=int(grace) + 5, access_log=False)
    try:
        await GracefulServer(config, gateway, grace).serve()
    finally:
        await gateway.aclose()


def main(args: GatewayArguments) -> None:
    """Load the models, serve until stopped, then write ``--stats-file`` if asked.

    Raises:
        ValueError, FileNotFoundError: bad flags or a missing checkpoint.
    """
    configure_logging(args.log_level)
    gateway = build_gateway(args)
    log.info(json.dumps({"event": "serving", "url": f"http://{args.host}:{args.port}", **gateway.describe()}))
    served = gateway.monitor.operating_point
    if served is not None and served.public_warning:  # an uncalibrated checkpoint: say so, and how to calibrate
        log.warning(json.dumps({"event": "operating_point", "warning": served.public_warning}))
    # uvicorn re-raises the signal that stopped it once it has shut down; with these handlers in place that is a
    # no-op, so the process ends normally and writes its stats.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: None)
    asyncio.run(serve(gateway, args.host, args.port, args.shutdown_grace, args.log_level))
    log.info(json.dumps({"event": "stopped"}))
    if args.stats_file:
        write_json(args.stats_file, gateway.scheduler.stats())


def run_cli(argv: list[str] | None = None) -> None:
    """Parse the flags and run :func:`main`; user mistakes exit with status 2 and one line, not a traceback."""
    (parsed,) = parse_dataclasses((GatewayArguments,), argv=argv, prog=SCRIPT)
    try:
        main(parsed)
    except (ValueError, FileNotFoundError) as err:
        print(f"{SCRIPT}: error: {err}", file=sys.stderr)
        sys.exit(2)
