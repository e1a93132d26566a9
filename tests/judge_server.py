"""A small OpenAI-compatible chat server on 127.0.0.1 for the judge's tests and benchmarks.

It speaks the real protocol over a real socket (`POST <prefix>/chat/completions`, JSON in and out), and a script
decides each answer: `script(request) -> Reply`, where the request carries the parsed prompt (query, positives,
candidates). A reply may be an answer, an HTTP error, a delay (slow answers) or a dropped connection. Every request
is recorded (body and headers) so tests can count calls and check what was sent.
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Request:
    body: dict[str, Any]
    headers: dict[str, str]
    query: str
    positives: list[str]
    candidates: list[str]
    follow_up: bool  # the stricter second request after a malformed answer


@dataclass
class Reply:
    content: str | None = None  # the assistant's answer
    status: int = 200
    delay: float = 0.0  # seconds before answering
    drop: bool = False  # close the connection without a response
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None  # a body sent as is (not a chat completion)
    tokens: int = 110  # the usage the answer reports


def verdict(numbers: list[int]) -> Reply:
    return Reply(json.dumps({"false_negatives": numbers}))


_ITEM = re.compile(r"^\[(P?)(\d+)\] (.*)$")


def parse_prompt(text: str) -> tuple[str, list[str], list[str]]:
    """(query, positives, candidates) of the judge's user message."""
    query, pos, cands = "", [], []
    for line in text.split("\n"):
        if line.startswith("Query: ") and not query:
            query = line[len("Query: "):]
            continue
        m = _ITEM.match(line)
        if m:
            (pos if m.group(1) else cands).append(m.group(3))
    return query, pos, cands


class ScriptedServer:
    """`with ScriptedServer(script) as server:` serves on `server.base_url` until the block ends."""

    def __init__(self, script: Callable[[Request], Reply], prefix: str = "/v1") -> None:
        self.script, self.prefix = script, prefix
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                if self.path != f"{outer.prefix}/chat/completions":
                    self._send(404, json.dumps({"error": {"message": "not found"}}).encode())
                    return
                user = [m["content"] for m in body["messages"] if m["role"] == "user"]
                query, pos, cands = parse_prompt(user[0])
                req = Request(body, dict(self.headers), query, pos, cands, follow_up=len(user) > 1)
                with outer.lock:
                    outer.requests.append(req)
                reply = outer.script(req)
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.drop:
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if reply.raw is not None:
                    data = reply.raw
                elif reply.status == 200:
                    data = json.dumps({"id": "x", "object": "chat.completion", "model": body["model"],
                                       "choices": [{"index": 0, "finish_reason": "stop",
                                                    "message": {"role": "assistant", "content": reply.content}}],
                                       "usage": {"prompt_tokens": reply.tokens - 10, "completion_tokens": 10,
                                                 "total_tokens": reply.tokens}}).encode()
                else:
                    data = json.dumps({"error": {"message": f"status {reply.status}"}}).encode()
                self._send(reply.status, data, reply.headers)

            def _send(self, status: int, data: bytes, headers: dict[str, str] | None = None) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}{prefix}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "ScriptedServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()

    @property
    def calls(self) -> int:
        with self.lock:
            return len(self.requests)


class Oracle:
    """Answers a judge call from the qrels; `noise` flips each verdict with that probability."""

    def __init__(self, data: Path, max_chars: int, noise: float = 0.0, seed: int = 0) -> None:
        self.noise, self.seed, self.cut = noise, seed, max_chars
        self.query_ids: dict[str, set[str]] = defaultdict(set)
        for line in (data / "queries.jsonl").read_text().splitlines():
            q = json.loads(line)
            self.query_ids[q["text"][:max_chars]].add(q["_id"])
        self.doc_ids: dict[str, set[str]] = defaultdict(set)
        for line in (data / "corpus.jsonl").read_text().splitlines():
            d = json.loads(line)
            text = f"{d['title']} {d['text']}" if d.get("title") else d["text"]  # negmine's use_title join
            self.doc_ids[text[:max_chars]].add(d["_id"])
        self.relevant: set[tuple[str, str]] = set()
        for line in (data / "qrels" / "all.tsv").read_text().splitlines()[1:]:
            q, d, s = line.split("\t")[:3]
            if int(s) >= 1:
                self.relevant.add((q, d))
        self.unmatched = 0

    def _flip(self, query: str, cand: str) -> bool:
        h = hashlib.sha256(f"{self.seed}\0{query}\0{cand}".encode()).digest()
        return int.from_bytes(h[:8], "little") / 2 ** 64 < self.noise

    def __call__(self, req) -> Reply:
        qids = self.query_ids.get(req.query, set())
        picks = []
        for i, cand in enumerate(req.candidates, 1):
            dids = self.doc_ids.get(cand, set())
            if not qids or not dids:
                self.unmatched += 1
            truth = any((q, d) in self.relevant for q in qids for d in dids)
            if truth != self._flip(req.query, cand):
                picks.append(i)
        return verdict(picks)
