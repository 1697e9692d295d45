"""A fake OpenAI-compatible server on 127.0.0.1 for tests: scripted replies, latency and faults, over real HTTP.

    with FakeOpenAI() as srv:
        engine = OpenAIEngine(base_url=srv.base_url, model="fake")
        ...
        srv.requests  # every POST body, parsed

The default replier understands the prompts the rewriter sends: a textgrad TGD update gets the variable back
between <IMPROVED_VARIABLE> tags with "Read carefully. " in front (a faithful rewrite), a direct rewrite request
gets the same rewrite of its <QUESTION>, and anything else (losses, gradients) gets a short critique.

Scripted faults, one step consumed per chat request (then normal replies again):
    srv.script = [429, 500, "slow", "empty", "long", "drop", "ok"]
        an int: that HTTP status (with `Retry-After: srv.retry_after` when set); "slow": sleep `slow_seconds`
        first (over the client's timeout), then reply; "empty"/"long": a 200 whose content is empty / 50,000
        characters; "drop": close the connection without a reply; "ok": a normal reply.
    srv.kill_after = 5  # the server dies after 5 answered chat requests: later ones are dropped unanswered
    srv.served         # Counter of what each chat request got ("ok", 429, "drop", ...)
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

PREFIX = "Read carefully. "
CRITIQUE = "The answer is wrong. State more plainly what is asked, and keep every fact as it is."


def faithful(text: str) -> str:
    return PREFIX + text.strip()


def _text(content) -> str:
    if isinstance(content, list):  # multi-part content
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""


def smart_reply(messages: list[dict]) -> str:
    system = "\n".join(_text(m.get("content")) for m in messages if m.get("role") == "system")
    user = next((_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
    if "<IMPROVED_VARIABLE>" in system or "<IMPROVED_VARIABLE>" in user:
        m = re.search(r"<VARIABLE>\s?(.*?)\s?</VARIABLE>", user, re.S)
        return f"<IMPROVED_VARIABLE>{faithful(m.group(1) if m else '')}</IMPROVED_VARIABLE>"
    m = re.search(r"<QUESTION>\s*(.*?)\s*</QUESTION>", user, re.S)
    if m and "<LM_INPUT>" not in user:  # textgrad's gradient prompts quote the loss, which quotes the question
        return faithful(m.group(1))
    return CRITIQUE


def _words(text: str) -> int:
    return len(text.split())


class FakeOpenAI:
    def __init__(
        self,
        reply: Callable[[list[dict]], str] = smart_reply,
        latency: float = 0.0,
        fault: int | None = None,
        model: str = "fake-model",
    ):
        self.reply = reply
        self.latency = latency
        self.fault = fault  # an HTTP status (500, 429, ...) returned instead of a reply while set
        self.model = model
        self.script: list = []
        self.retry_after: str | None = None
        self.slow_seconds = 3.0
        self.kill_after: int | None = None
        self.served: Counter = Counter()
        self._answered = 0
        self.requests: list[dict] = []
        self.paths: list[str] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def chat_requests(self) -> list[dict]:
        with self._lock:
            return [r for r in self.requests if "messages" in r]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "FakeOpenAI":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _handler(self):
        srv = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def _send(self, status: int, payload: dict) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self._end(body)

            def _end(self, body: bytes) -> None:
                # Headers and body in one write: two small writes meet Nagle's algorithm and the client's delayed
                # ACK, adding ~40 ms to every call, which would swamp the injected latency in benchmarks.
                self._headers_buffer.append(b"\r\n" + body)
                self.flush_headers()

            def _fault(self) -> bool:
                if srv.fault is None:
                    return False
                error = {"message": f"scripted fault {srv.fault}", "type": "server_error", "code": srv.fault}
                self._send(srv.fault, {"error": error})
                return True

            def _status(self, status: int) -> None:
                error = {"message": f"scripted fault {status}", "type": "server_error", "code": status}
                body = json.dumps({"error": error}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if srv.retry_after is not None:
                    self.send_header("Retry-After", str(srv.retry_after))
                self._end(body)

            def _drop(self) -> None:
                self.close_connection = True
                try:
                    self.connection.shutdown(2)
                except OSError:
                    pass

            def _step(self):
                """The scripted step for this chat request: None for a normal reply."""
                with srv._lock:
                    if srv.kill_after is not None and srv._answered >= srv.kill_after:
                        return "drop"
                    step = srv.script.pop(0) if srv.script else "ok"
                    if step != "drop" and not isinstance(step, int):
                        srv._answered += 1
                    return step

            def do_GET(self):
                with srv._lock:
                    srv.paths.append(self.path)
                if self._fault():
                    return
                if self.path.rstrip("/").endswith("/models"):
                    model = {"id": srv.model, "object": "model", "created": 0, "owned_by": "fake"}
                    self._send(200, {"object": "list", "data": [model]})
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    body = {"_raw": raw.decode(errors="replace")}
                with srv._lock:
                    srv.paths.append(self.path)
                    srv.requests.append(body)
                if srv.latency:
                    time.sleep(srv.latency)
                if self._fault():
                    return
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                    return
                step = self._step()
                with srv._lock:
                    srv.served[step] += 1
                if step == "drop":
                    self._drop()
                    return
                if isinstance(step, int):
                    self._status(step)
                    return
                if step == "slow":
                    time.sleep(srv.slow_seconds)
                messages = body.get("messages", [])
                text = srv.reply(messages)
                if step == "empty":
                    text = ""
                elif step == "long":
                    text = "x" * 50_000
                # Words stand in for tokens: enough for tests that count usage.
                prompt_tokens = sum(_words(_text(m.get("content"))) for m in messages)
                completion_tokens = _words(text)
                self._send(200, {
                    "id": f"chatcmpl-fake-{len(srv.requests)}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model", srv.model),
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                    ],
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": completion_tokens,
                        "total_tokens": prompt_tokens + completion_tokens,
                    },
                })

        return Handler
