"""A tiny OpenAI-compatible chat-completions server on loopback, for testing the annotation's openai judge.

It labels each numbered sentence of the judging prompt 1 when it contains one of ``harmful_words``, else 0, and
records every request. ``failures`` makes the first requests fail (HTTP 500) and ``garbage`` the next ones answer
text that is not JSON, so retries can be tested. It serves on 127.0.0.1 with an OS-chosen port and stops when the
context ends (requests are bounded by the test).
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

_NUMBERED = re.compile(r"^(\d+)\. (.*)$", re.MULTILINE)


class FakeJudge:
    """State shared with the handler: requests seen, failures left to inject."""

    def __init__(self, harmful_words=("poison", "steal"), failures: int = 0, garbage: int = 0, model: str = "judge"):
        self.harmful_words = tuple(harmful_words)
        self.failures = failures
        self.garbage = garbage
        self.model = model
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.url = ""

    def answer(self, body: dict) -> tuple[int, dict | str]:
        with self.lock:
            self.requests.append(body)
            if self.failures > 0:
                self.failures -= 1
                return 500, {"error": {"message": "injected failure"}}
            garbage = self.garbage > 0
            self.garbage -= int(garbage)
        if body.get("model") != self.model:
            return 404, {"error": {"message": f"model {body.get('model')!r} not found"}}
        user = body["messages"][-1]["content"]
        sentences = [text for _, text in _NUMBERED.findall(user.split("numbered sentences:", 1)[1])]
        labels = [int(any(w in s.lower() for w in self.harmful_words)) for s in sentences]
        content = "I think they are fine." if garbage else f"```json\n{json.dumps({'labels': labels})}\n```"
        return 200, {"id": "x", "object": "chat.completion", "model": self.model,
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                  "finish_reason": "stop"}]}


@contextlib.contextmanager
def fake_openai_server(judge: FakeJudge) -> Iterator[FakeJudge]:
    """Serve ``judge`` at ``judge.url`` (``http://127.0.0.1:PORT/v1``) for the duration of the block."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            if self.path != "/v1/chat/completions":
                status, payload = 404, {"error": {"message": f"no route {self.path}"}}
            else:
                length = int(self.headers.get("Content-Length", 0))
                status, payload = judge.answer(json.loads(self.rfile.read(length)))
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):  # keep test output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    judge.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        yield judge
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
