"""A local HTTP file server with scripted faults, for tests that download.

    with FaultyHTTPServer({"/a.warc.gz": data}) as server:
        server.add_faults("/a.warc.gz", ("status", 503), ("truncate", 1000))
        fetch_to_file(server.url("/a.warc.gz"), dest, cfg)
        assert server.ranges_for("/a.warc.gz") == [None, None, "bytes=1000-"]

Faults are consumed in order, one per request to that path; once a path has none
left it is served normally. Fault forms:

    ("status", code)              answer ``code`` with a short body
    ("status", code, retry_after) ... and a ``Retry-After: retry_after`` header
    ("drop",)                     close the connection without an answer
    ("truncate", n_bytes)         full headers (right Content-Length), n_bytes of body, close
    ("slow", seconds)             wait, then answer normally
    ("hold", hold)                keep the request open unanswered until ``hold`` releases it, then
                                  close the connection (``server.hold(path)`` makes one; see ``Hold``)

Files come from a dict (path -> bytes, mutable through ``server.files``) and/or a
folder (``root``); the dict wins. ``ranges=False`` makes the server ignore ``Range``
(always 200) and omit ``Accept-Ranges``; ``advertise_ranges=True`` with it sends
``Accept-Ranges: bytes`` anyway, like a misbehaving server or proxy. Other test modules can use the ``http_server`` fixture:
``from httpserver import http_server  # noqa: F401``.
"""

from __future__ import annotations

import queue
import re
import sys
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator, Mapping
from urllib.parse import unquote, urlsplit

import pytest

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


class Hold:
    """Requests to one path held unanswered on arrival: while one is held its client is provably
    inside that request, so a test can kill exactly the process that made it (found by the
    client's port, ``HeldRequest.client_port``) and know what it was doing.

    ``repeat=False`` holds the next request only; ``repeat=True`` holds every request.
    """

    def __init__(self, repeat: bool = False, max_hold_s: float = 300):
        self.repeat, self.max_hold_s = repeat, max_hold_s
        self._arrivals: queue.Queue[HeldRequest] = queue.Queue()
        self._held: list[HeldRequest] = []
        self._lock = threading.Lock()

    def next(self, timeout_s: float = 120) -> HeldRequest:
        """The next held request, in arrival order; AssertionError if none arrives in ``timeout_s``."""
        try:
            return self._arrivals.get(timeout=timeout_s)
        except queue.Empty:
            raise AssertionError(f"no request arrived to be held within {timeout_s:.0f} s") from None

    def release_all(self) -> None:
        with self._lock:
            for held in self._held:
                held.release()

    def _wait(self, client_port: int) -> None:  # called by the handler thread
        held = HeldRequest(client_port)
        with self._lock:
            self._held.append(held)
        self._arrivals.put(held)
        held._released.wait(self.max_hold_s)


class HeldRequest:
    """One request a ``Hold`` keeps open: its client's TCP port and a ``release``."""

    def __init__(self, client_port: int):
        self.client_port = client_port
        self._released = threading.Event()

    def release(self) -> None:
        self._released.set()


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    range: str | None
    headers: dict[str, str]


class FaultyHTTPServer:
    """A threaded server on 127.0.0.1 (free port), started by ``start`` or ``with``."""

    def __init__(
        self,
        files: Mapping[str, bytes] | None = None,
        root: str | Path | None = None,
        *,
        ranges: bool = True,
        advertise_ranges: bool | None = None,
    ):
        self.files: dict[str, bytes] = dict(files or {})
        self.root = Path(root) if root is not None else None
        self.ranges = ranges
        self.advertise_ranges = ranges if advertise_ranges is None else advertise_ranges
        self.requests: list[RecordedRequest] = []
        self._faults: dict[str, deque[tuple]] = defaultdict(deque)
        self._lock = threading.Lock()
        self._httpd: _QuietServer | None = None
        self._thread: threading.Thread | None = None
        self._holds: list[Hold] = []

    # -- lifecycle --
    def start(self) -> FaultyHTTPServer:
        self._httpd = _QuietServer(("127.0.0.1", 0), _make_handler(self))
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        for hold in self._holds:
            hold.release_all()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FaultyHTTPServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- setup and inspection --
    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    def url(self, path: str) -> str:
        return self.base_url + "/" + path.lstrip("/")

    def add_file(self, path: str, data: bytes) -> str:
        """Serve ``data`` at ``path``; returns its URL."""
        self.files["/" + path.lstrip("/")] = data
        return self.url(path)

    def add_faults(self, path: str, *faults: tuple) -> None:
        with self._lock:
            self._faults["/" + path.lstrip("/")].extend(faults)

    def hold(self, path: str, repeat: bool = False) -> Hold:
        """Hold the next request to ``path`` (every one with ``repeat``) after the faults queued before."""
        hold = Hold(repeat)
        self._holds.append(hold)
        self.add_faults(path, ("hold", hold))
        return hold

    def requests_for(self, path: str) -> list[RecordedRequest]:
        path = "/" + path.lstrip("/")
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def ranges_for(self, path: str) -> list[str | None]:
        return [r.range for r in self.requests_for(path)]

    # -- used by the handler --
    def _record_and_next_fault(self, request: RecordedRequest) -> tuple | None:
        with self._lock:
            self.requests.append(request)
            faults = self._faults.get(request.path)
            fault = faults.popleft() if faults else None
            if fault is not None and fault[0] == "hold" and fault[1].repeat:
                faults.appendleft(fault)
            return fault

    def _lookup(self, path: str) -> bytes | None:
        if path in self.files:
            return self.files[path]
        if self.root is not None:
            candidate = (self.root / path.lstrip("/")).resolve()
            if candidate.is_file() and candidate.is_relative_to(self.root.resolve()):
                return candidate.read_bytes()
        return None


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        # Clients that time out or give up hang up mid-answer; that is expected here.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _make_handler(server: FaultyHTTPServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args) -> None:  # keep test output quiet
            pass

        def do_HEAD(self) -> None:
            self._serve(send_body=False)

        def do_GET(self) -> None:
            self._serve(send_body=True)

        def _serve(self, send_body: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            request = RecordedRequest(self.command, path, self.headers.get("Range"), dict(self.headers))
            fault = server._record_and_next_fault(request)
            truncate_to = None
            if fault is not None:
                kind = fault[0]
                if kind == "status":
                    return self._status(fault[1], fault[2] if len(fault) > 2 else None)
                if kind == "drop":
                    self.close_connection = True
                    return
                if kind == "hold":
                    fault[1]._wait(self.client_address[1])
                    self.close_connection = True
                    return
                if kind == "slow":
                    time.sleep(fault[1])
                elif kind == "truncate":
                    truncate_to = fault[1]
                else:
                    raise ValueError(f"unknown fault {fault!r}")
            data = server._lookup(path)
            if data is None:
                return self._status(404)
            self._send_file(data, send_body, truncate_to)

        def _status(self, code: int, retry_after: float | None = None) -> None:
            body = f"status {code}\n".encode()
            self.send_response(code)
            if retry_after is not None:
                self.send_header("Retry-After", str(retry_after))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _send_file(self, data: bytes, send_body: bool, truncate_to: int | None) -> None:
            status, start, end = 200, 0, len(data)
            match = _RANGE.match(self.headers.get("Range", "")) if server.ranges else None
            if match:
                start = int(match.group(1))
                end = min(len(data), int(match.group(2)) + 1) if match.group(2) else len(data)
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = 206
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(end - start))
            if server.advertise_ranges:
                self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
            self.end_headers()
            if not send_body:
                return
            body = data[start:end]
            if truncate_to is not None:
                self.wfile.write(body[:truncate_to])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    return Handler


@pytest.fixture
def http_server() -> Iterator[FaultyHTTPServer]:
    """An empty, started server; add files with ``add_file`` or ``files[...]``."""
    with FaultyHTTPServer() as server:
        yield server
