"""Drive the gateway's chat page in headless Chromium: send prompts, wait for the streamed answers, take a screenshot.

The gateway runs in this process (local mode: the checkpoint's monitor and the embedded SmolLM2-135M unless
``--generator`` names another causal LM); the page is opened in Debian's chromium (``bash scripts/setup-browser.sh``
installs it) through playwright, each prompt is typed and sent, and the script waits until every answer has ended,
then saves a full-page PNG and prints what the page shows (coloured tokens, stop banners). The slow test tier uses
:func:`drive_page` the same way with tiny models.

Commands::

    python -m test.page_screenshot --prompt "How do I bake bread?" "How do I make a pipe bomb?" \
        --output docs/serve-page.png
    python -m test.page_screenshot --model-path CKPT --theta 0.6 --k 2 --prompt "..." --output /tmp/page.png
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.cli import run_entry_point

CHROMIUM = "/usr/bin/chromium"
# Flags that work in this sandboxed, offline environment (no GPU, no network, no first-run UI).
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@dataclass
class ScreenshotArguments:
    """Flags of ``python -m test.page_screenshot``."""

    prompt: list[str] = field(default_factory=list, metadata={
        "help": "Prompts to send, one after the other (--prompt \"A\" \"B\")."})
    output: str = field(default="docs/serve-page.png", metadata={"help": "Where the PNG goes."})
    model_path: str = field(default="runs/scm-default", metadata={"help": "SCM checkpoint folder of the monitor."})
    generator: str | None = field(default=None, metadata={
        "help": "Causal LM folder (default: the embedded SmolLM2-135M-Instruct)."})
    theta: float | None = field(default=None, metadata={"help": "Flagging threshold (default: the checkpoint's)."})
    k: int | None = field(default=None, metadata={"help": "k of delay-k (default: the checkpoint's)."})
    max_tokens: int = field(default=120, metadata={"help": "Response tokens per prompt."})
    chromium: str = field(default=CHROMIUM, metadata={"help": "Chromium executable."})
    width: int = field(default=1000, metadata={"help": "Viewport width in pixels."})
    timeout: float = field(default=600.0, metadata={"help": "Seconds to wait for each answer."})


def drive_page(url: str, prompts: list[str], output: str | Path, chromium: str = CHROMIUM, max_tokens: int = 120,
               width: int = 1000, timeout: float = 600.0) -> list[dict[str, Any]]:
    """Send ``prompts`` through the page at ``url``, screenshot it into ``output``; returns what each answer shows.

    Returns:
        Per prompt: ``text`` (the answer's text), ``tokens`` (coloured token spans), ``flagged`` (spans at or above
        theta), ``stopped`` (a stop mark is shown), ``banner`` (the banner under the answer).

    Raises:
        FileNotFoundError: no chromium at ``chromium`` (``bash scripts/setup-browser.sh`` installs it).
    """
    from playwright.sync_api import sync_playwright

    if not Path(chromium).is_file():
        raise FileNotFoundError(f"no chromium at {chromium}; install it with `bash scripts/setup-browser.sh`")
    answers = []
    with tempfile.TemporaryDirectory(prefix="scm-chromium-") as profile, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=chromium, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": width, "height": 700})
        try:
            page = context.new_page()
            page.goto(url)
            page.wait_for_function("document.getElementById('settings').textContent.includes('theta')")
            page.fill("#maxTokens", str(max_tokens))
            for number, prompt in enumerate(prompts, start=1):
                page.fill("#prompt", prompt)
                page.press("#prompt", "Enter")
                selector = f".turn.assistant:nth-of-type({2 * number})[data-done='true']"
                page.wait_for_selector(selector, timeout=timeout * 1000)
                turn = page.locator(selector)
                answers.append({
                    "text": turn.locator(".text").inner_text(),
                    "tokens": turn.locator(".tok").count(),
                    "flagged": turn.locator(".tok.flag").count(),
                    "stopped": turn.locator(".stopmark").count() > 0,
                    "banner": turn.locator(".banner").inner_text(),
                })
            Path(output).parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(output), full_page=True)
        finally:
            context.close()
    return answers


def main(args: ScreenshotArguments) -> list[dict[str, Any]]:
    """Serve the gateway in this process, drive the page, write the screenshot; returns the answers.

    Raises:
        ValueError: no prompt. FileNotFoundError: no checkpoint or no chromium.
    """
    if not args.prompt:
        raise ValueError("pass at least one --prompt TEXT")
    from serve.gateway.app import create_app
    from serve.gateway.config import GatewayArguments
    from serve.gateway.server import BackgroundServer, build_gateway

    gateway = build_gateway(GatewayArguments(model_path=args.model_path, generator=args.generator,
                                             theta=args.theta, k=args.k, device="cpu"))
    try:
        with BackgroundServer(create_app(gateway)) as server:
            answers = drive_page(server.url + "/", args.prompt, args.output, args.chromium, args.max_tokens,
                                 args.width, args.timeout)
    finally:
        gateway.scheduler.stop()
    for prompt, answer in zip(args.prompt, answers):
        print(f"[{prompt}] {answer['tokens']} coloured tokens, {answer['flagged']} at or above theta; "
              f"{answer['banner']}")
    print(f"screenshot: {args.output}")
    return answers


if __name__ == "__main__":
    run_entry_point(main, ScreenshotArguments, "python -m test.page_screenshot", errors=(ValueError, FileNotFoundError))
