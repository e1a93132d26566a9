"""Open a page in real headless Chromium and record what a person's browser would: console errors, uncaught
exceptions, CSP violations and failed loads, plus a screenshot and the values of some expressions.

Chromium is driven over the DevTools protocol (`--remote-debugging-port` on 127.0.0.1) with the small WebSocket
client below (standard library only: no websocket package is installed), so every Runtime.consoleAPICalled,
Runtime.exceptionThrown and Log.entryAdded event is seen, which `--dump-dom` would not report.
"""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class _WebSocket:
    """A minimal RFC 6455 client: text frames out (masked), text frames in (fragments joined)."""

    def __init__(self, url: str, timeout: float) -> None:
        m = re.match(r"ws://([^/:]+):(\d+)(/.*)", url)
        if not m:
            raise ValueError(f"not a ws:// URL: {url}")
        host, port, path = m.group(1), int(m.group(2)), m.group(3)
        self.sock = socket.create_connection((host, port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                          .encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("the browser closed the connection during the handshake")
            head += chunk
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"handshake refused: {head[:200]!r}")
        self.buf = head.split(b"\r\n\r\n", 1)[1]

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(max(65536, n - len(self.buf)))
            if not chunk:
                raise ConnectionError("the browser closed the connection")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def send(self, text: str) -> None:
        data = text.encode()
        mask = os.urandom(4)
        n = len(data)
        head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n)
                                if n < 65536 else bytes([0x80 | 127]) + struct.pack(">Q", n))
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def recv(self) -> str:
        parts = []
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            mask = self._read(4) if b1 & 0x80 else None
            data = self._read(n)
            if mask:
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
            opcode = b0 & 0x0F
            if opcode == 0x8:
                raise ConnectionError("the browser closed the WebSocket")
            if opcode in (0x9, 0xA):  # ping / pong: nothing to answer for a short session
                continue
            parts.append(data)
            if b0 & 0x80:
                return b"".join(parts).decode()

    def close(self) -> None:
        self.sock.close()


@dataclass
class PageResult:
    errors: list[str] = field(default_factory=list)  # console errors, exceptions, failed loads, CSP reports
    values: dict[str, object] = field(default_factory=dict)  # the evaluated expressions
    screenshot: bytes = b""


def open_page(url: str, expressions: dict[str, str], screenshot: Path | None = None,
              timeout: float = 60.0) -> PageResult:
    """Load `url` in headless Chromium, wait for its load event, evaluate `expressions` (name: JavaScript) and
    optionally save a screenshot of the viewport (as the expressions left it scrolled). Every error the page
    raised is in `errors`."""
    exe = chromium()
    if exe is None:
        raise RuntimeError("chromium is not installed (apt-get install -y chromium)")
    profile = tempfile.mkdtemp(prefix="negmine-chromium-")
    proc = subprocess.Popen([exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             "--no-default-browser-check", "--disable-extensions", "--disable-dev-shm-usage",
                             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
                             f"--user-data-dir={profile}", "--window-size=1280,900", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ws = None
    try:
        deadline = time.monotonic() + timeout
        port = None
        while port is None:  # Chromium writes the port it chose into the profile folder
            active = Path(profile) / "DevToolsActivePort"
            if active.is_file() and active.read_text().strip():
                port = int(active.read_text().split()[0])
            elif proc.poll() is not None:
                raise RuntimeError(f"chromium exited with code {proc.returncode}: {proc.stderr.read()[-2000:]}")
            elif time.monotonic() > deadline:
                raise TimeoutError("chromium did not open its DevTools port")
            else:
                time.sleep(0.1)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=timeout) as r:
            pages = [t for t in json.load(r) if t.get("type") == "page"]
        ws = _WebSocket(pages[0]["webSocketDebuggerUrl"], timeout)
        result = PageResult()
        next_id = [0]

        def note(msg: dict) -> None:
            method, p = msg.get("method"), msg.get("params", {})
            if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                result.errors.append("console: " + " ".join(str(a.get("value", a.get("description", "")))
                                                            for a in p.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                result.errors.append("exception: " + str(d.get("exception", {}).get("description", d.get("text"))))
            elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                e = p["entry"]
                result.errors.append(f"log ({e.get('source')}): {e.get('text')} {e.get('url', '')}".strip())
            elif method == "Network.loadingFailed":
                result.errors.append(f"load failed: {p.get('errorText')} {p.get('blockedReason', '')}".strip())

        def call(method: str, params: dict | None = None, until: str | None = None) -> dict:
            """Send a command; return its result (or, with `until`, wait for that event after it)."""
            next_id[0] += 1
            ws.send(json.dumps({"id": next_id[0], "method": method, "params": params or {}}))
            reply, seen = None, until is None
            while reply is None or not seen:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no answer to {method}")
                msg = json.loads(ws.recv())
                note(msg)
                if msg.get("id") == next_id[0]:
                    if "error" in msg:
                        raise RuntimeError(f"{method}: {msg['error']}")
                    reply = msg.get("result", {})
                elif until is not None and msg.get("method") == until:
                    seen = True
            return reply

        for domain in ("Runtime", "Log", "Page", "Network"):
            call(f"{domain}.enable")
        call("Page.navigate", {"url": url}, until="Page.loadEventFired")
        for name, expr in expressions.items():
            r = call("Runtime.evaluate", {"expression": expr, "returnByValue": True})
            if "exceptionDetails" in r:
                result.errors.append(f"evaluate {name}: {r['exceptionDetails'].get('text')}")
            result.values[name] = r.get("result", {}).get("value")
        if screenshot is not None:
            shot = call("Page.captureScreenshot", {"format": "png"})  # the viewport: scroll there first
            result.screenshot = base64.b64decode(shot["data"])
            screenshot.write_bytes(result.screenshot)
        # events that arrive late (a CSP report after load): give them a moment and read what is there
        ws.sock.settimeout(0.5)
        try:
            while True:
                note(json.loads(ws.recv()))
        except (socket.timeout, TimeoutError):
            pass
        return result
    finally:
        if ws is not None:
            ws.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
        shutil.rmtree(profile, ignore_errors=True)
