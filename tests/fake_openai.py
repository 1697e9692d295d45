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

The OpenAI Batch API, enough for rewriter.batch (files and batches, no real queue):
    POST /v1/files (multipart, purpose=batch)   -> srv.files[id], srv.uploads (filename, purpose, parsed lines)
    POST /v1/batches                            -> srv.batches[id], status "validating"
    GET  /v1/batches/{id}                       -> each retrieve is one poll; after `srv.batch_polls` polls the
                                                   batch ends with `srv.batch_outcome` ("completed", "expired",
                                                   "failed", "cancelled")
    POST /v1/batches/{id}/cancel                -> status "cancelled"
    GET  /v1/files/{id}/content                 -> the file's bytes (input, output or error JSONL)
A completed batch answers each request line with `srv.reply` (script, kill_after and served are for live chat
requests only, and batch lines are not in `srv.requests`: they are in `srv.batch_requests`); a custom_id in
`srv.batch_fail` gets a 400 line in the error file instead. An expired batch puts every line in the error file
(code batch_expired); a failed one has no files and `errors`. File uploads are not in `srv.requests` (JSON bodies
only), but every path is in `srv.paths`.
"""

from __future__ import annotations

import email.parser
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
        # Batch API state
        self.files: dict[str, dict] = {}  # id -> {"bytes", "filename", "purpose"}
        self.uploads: list[dict] = []  # every upload: filename, purpose, lines (parsed JSON)
        self.batches: dict[str, dict] = {}  # id -> the batch object, plus "_polls"
        self.batch_polls = 1  # retrieves before a batch ends
        self.batch_outcome = "completed"  # or "expired", "failed", "cancelled"
        self.batch_fail: set[str] = set()  # custom_ids answered with a 400 line in the error file
        self.batch_requests: list[dict] = []  # the body of every request line a batch answered
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

    # ------------------------------------------------------------------------------------------ Batch API

    def _new_file(self, data: bytes, filename: str, purpose: str) -> dict:
        with self._lock:
            fid = f"file-fake-{len(self.files) + 1}"
            self.files[fid] = {"bytes": data, "filename": filename, "purpose": purpose}
        return self._file_object(fid)

    def _file_object(self, fid: str) -> dict:
        f = self.files[fid]
        return {"id": fid, "object": "file", "bytes": len(f["bytes"]), "created_at": int(time.time()),
                "filename": f["filename"], "purpose": f["purpose"], "status": "processed"}

    def _chat_completion(self, body: dict, text: str, n: int) -> dict:
        messages = body.get("messages", [])
        # Words stand in for tokens: enough for tests that count usage.
        prompt_tokens = sum(_words(_text(m.get("content"))) for m in messages)
        completion_tokens = _words(text)
        return {
            "id": f"chatcmpl-fake-{n}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", self.model),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }

    def _batch_object(self, bid: str) -> dict:
        return {k: v for k, v in self.batches[bid].items() if not k.startswith("_")}

    def _finish_batch(self, batch: dict, outcome: str) -> None:
        """Run a batch's request lines (the caller holds no lock) and attach its output and error files."""
        lines = [json.loads(x) for x in self.files[batch["input_file_id"]]["bytes"].decode().splitlines() if x.strip()]
        out, err = [], []
        for i, line in enumerate(lines):
            cid, body = line.get("custom_id"), line.get("body") or {}
            rid = f"batch_req_fake_{batch['id']}_{i}"
            if outcome == "expired":
                err.append({"id": rid, "custom_id": cid, "response": None, "error": {
                    "code": "batch_expired",
                    "message": "This request could not be executed before the completion window expired."}})
                continue
            if cid in self.batch_fail:
                error = {"message": "scripted batch line failure", "type": "invalid_request_error", "code": None}
                err.append({"id": rid, "custom_id": cid, "response": {"status_code": 400, "request_id": rid,
                                                                      "body": {"error": error}}, "error": None})
                continue
            with self._lock:
                self.batch_requests.append(body)
            reply = self._chat_completion(body, self.reply(body.get("messages", [])), i)
            out.append({"id": rid, "custom_id": cid, "response": {"status_code": 200, "request_id": rid, "body": reply},
                        "error": None})
        now = int(time.time())
        if outcome == "failed":
            batch.update(status="failed", failed_at=now, errors={"object": "list", "data": [
                {"code": "invalid_request", "message": "scripted batch failure", "param": None, "line": None}]})
            return

        def jsonl(rows):
            return "".join(json.dumps(r) + "\n" for r in rows).encode()

        if out:
            batch["output_file_id"] = self._new_file(jsonl(out), f"{batch['id']}_output.jsonl", "batch_output")["id"]
        if err:
            batch["error_file_id"] = self._new_file(jsonl(err), f"{batch['id']}_error.jsonl", "batch_output")["id"]
        batch["request_counts"] = {"total": len(lines), "completed": len(out), "failed": len(err)}
        batch["status"] = outcome
        batch[{"completed": "completed_at", "expired": "expired_at", "cancelled": "cancelled_at"}.get(outcome, "failed_at")] = now

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
                path = self.path.split("?")[0].rstrip("/")
                m_content = re.search(r"/files/([^/]+)/content$", path)
                m_file = re.search(r"/files/([^/]+)$", path)
                m_batch = re.search(r"/batches/([^/]+)$", path)
                if path.endswith("/models"):
                    model = {"id": srv.model, "object": "model", "created": 0, "owned_by": "fake"}
                    self._send(200, {"object": "list", "data": [model]})
                elif m_content and m_content.group(1) in srv.files:
                    data = srv.files[m_content.group(1)]["bytes"]
                    self.send_response(200)
                    self.send_header("Content-Type", "application/octet-stream")
                    self.send_header("Content-Length", str(len(data)))
                    self._end(data)
                elif m_file and m_file.group(1) in srv.files:
                    self._send(200, srv._file_object(m_file.group(1)))
                elif m_batch and m_batch.group(1) in srv.batches:
                    bid = m_batch.group(1)
                    finish = None
                    with srv._lock:
                        batch = srv.batches[bid]
                        if batch["status"] in ("validating", "in_progress"):
                            batch["_polls"] += 1
                            if batch["_polls"] >= srv.batch_polls:
                                finish = srv.batch_outcome
                            else:
                                batch["status"] = "in_progress"
                                batch["in_progress_at"] = batch.get("in_progress_at") or int(time.time())
                    if finish is not None:
                        srv._finish_batch(batch, finish)
                    self._send(200, srv._batch_object(bid))
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                ctype = self.headers.get("Content-Type") or ""
                if ctype.startswith("multipart/form-data"):
                    with srv._lock:
                        srv.paths.append(self.path)
                    if srv.latency:
                        time.sleep(srv.latency)
                    if not self._fault():
                        self._upload(ctype, raw)
                    return
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
                path = self.path.split("?")[0].rstrip("/")
                if path.endswith("/batches"):
                    self._create_batch(body)
                    return
                m_cancel = re.search(r"/batches/([^/]+)/cancel$", path)
                if m_cancel:
                    self._cancel_batch(m_cancel.group(1))
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
                self._send(200, srv._chat_completion(body, text, len(srv.requests)))

            def _upload(self, ctype: str, raw: bytes) -> None:
                if not self.path.split("?")[0].rstrip("/").endswith("/files"):
                    self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                    return
                msg = email.parser.BytesParser().parsebytes(b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + raw)
                fields, data, filename = {}, b"", "upload.jsonl"
                for part in msg.get_payload() if msg.is_multipart() else []:
                    name = part.get_param("name", header="content-disposition")
                    payload = part.get_payload(decode=True) or b""
                    if name == "file":
                        data, filename = payload, part.get_filename() or filename
                    elif name:
                        fields[name] = payload.decode()
                purpose = fields.get("purpose", "")
                try:
                    lines = [json.loads(x) for x in data.decode().splitlines() if x.strip()]
                except (UnicodeDecodeError, json.JSONDecodeError) as e:
                    self._send(400, {"error": {"message": f"invalid JSONL: {e}", "type": "invalid_request_error"}})
                    return
                with srv._lock:
                    srv.uploads.append({"filename": filename, "purpose": purpose, "lines": lines})
                self._send(200, srv._new_file(data, filename, purpose))

            def _create_batch(self, body: dict) -> None:
                fid = body.get("input_file_id")
                if fid not in srv.files:
                    self._send(404, {"error": {"message": f"no file {fid}", "type": "invalid_request_error"}})
                    return
                with srv._lock:
                    bid = f"batch_fake_{len(srv.batches) + 1}"
                    srv.batches[bid] = {
                        "id": bid, "object": "batch", "endpoint": body.get("endpoint"), "errors": None,
                        "input_file_id": fid, "completion_window": body.get("completion_window", "24h"),
                        "status": "validating", "output_file_id": None, "error_file_id": None,
                        "created_at": int(time.time()), "request_counts": {"total": 0, "completed": 0, "failed": 0},
                        "metadata": body.get("metadata"), "_polls": 0,
                    }
                self._send(200, srv._batch_object(bid))

            def _cancel_batch(self, bid: str) -> None:
                if bid not in srv.batches:
                    self._send(404, {"error": {"message": f"no batch {bid}", "type": "invalid_request_error"}})
                    return
                with srv._lock:
                    batch = srv.batches[bid]
                    if batch["status"] in ("validating", "in_progress"):
                        batch.update(status="cancelled", cancelled_at=int(time.time()))
                self._send(200, srv._batch_object(bid))

        return Handler


if __name__ == "__main__":
    # As a separate process (bench/gpu_check.py): print the base URL, serve until stdin closes (so the server
    # dies with its parent however that ends), then print what it answered as one JSON line.
    import sys

    server = FakeOpenAI()
    print(server.base_url, flush=True)
    sys.stdin.read()
    server.stop()
    print(json.dumps({"chat_requests": len(server.chat_requests()), "served": {str(k): v for k, v in server.served.items()}}),
          flush=True)
