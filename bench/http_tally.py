"""A relay on 127.0.0.1 that tallies the HTTP requests and bytes its clients send a server.

Clients are pointed at the relay (AWS_ENDPOINT_URL=http://127.0.0.1:PORT) and it passes every
byte on to the real server unchanged, in both directions, so signatures, keep-alive and
`Expect: 100-continue` work as without it. It only reads the client's stream as it passes: each
request's line and headers, and its body's length (Content-Length, or chunked), so a request is
counted as it was sent, with its path, the bytes of its head and of its body. Nothing is sent
anywhere but the one server on loopback. `delay_s` holds each chunk of the server's answers
that long before passing it on: a server far away, as a bucket in another building is (a
small answer is one chunk, so each request takes that much longer).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # as sent: /bucket/key?query
    head_bytes: int  # the request line and headers
    body_bytes: int


class RequestReader:
    """Cuts a client's byte stream into requests; feed it the bytes as they pass."""

    def __init__(self, record) -> None:
        self._record = record
        self._buffer = b""
        self._head: tuple[str, str, int] | None = None  # method, path, head bytes
        self._remaining = 0  # body bytes still to come (Content-Length)
        self._chunked = False
        self._body = 0

    def feed(self, data: bytes) -> None:
        self._buffer += data
        while self._step():
            pass

    def _step(self) -> bool:
        if self._head is None:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return False
            head, self._buffer = self._buffer[:end + 4], self._buffer[end + 4:]
            lines = head.decode("latin-1").split("\r\n")
            method, path = lines[0].split(" ")[:2]
            headers = {name.strip().lower(): value.strip() for name, _, value in
                       (line.partition(":") for line in lines[1:] if line)}
            self._head = (method, path, len(head))
            self._chunked = "chunked" in headers.get("transfer-encoding", "").lower()
            self._remaining = 0 if self._chunked else int(headers.get("content-length", 0))
            self._body = 0
        if self._chunked:
            return self._chunk()
        taken = min(self._remaining, len(self._buffer))
        self._buffer, self._remaining = self._buffer[taken:], self._remaining - taken
        self._body += taken
        if self._remaining:
            return False
        self._done()
        return True

    def _chunk(self) -> bool:
        """One chunk of a chunked body (size line, data, CRLF); the last ends the request."""
        end = self._buffer.find(b"\r\n")
        if end < 0:
            return False
        size = int(self._buffer[:end].split(b";")[0], 16)
        if size == 0:  # "0", any trailers, then an empty line
            stop = self._buffer.find(b"\r\n\r\n", end)
            if stop < 0:
                return False
            self._buffer = self._buffer[stop + 4:]
            self._done()
            return True
        if len(self._buffer) < end + 2 + size + 2:
            return False
        self._buffer = self._buffer[end + 2 + size + 2:]
        self._body += size
        return True

    def _done(self) -> None:
        method, path, head = self._head
        self._record(Request(method, path, head, self._body))
        self._head = None


class CountingRelay:
    """Listens on 127.0.0.1 (a free port) and relays each connection to `upstream_port`."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream = ("127.0.0.1", upstream_port)
        self._lock = threading.Lock()
        self.requests: list[Request] = []
        self.bytes_to_server = self.bytes_to_clients = 0
        self.delay_s = 0.0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def since(self, start: int) -> list[Request]:
        """The requests recorded after the first `start` (a mark: len(relay.requests))."""
        with self._lock:
            return list(self.requests[start:])

    def _record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def _accept(self) -> None:
        while True:
            client, _ = self._listener.accept()
            server = socket.create_connection(self._upstream)
            reader = RequestReader(self._record)
            threading.Thread(target=self._pump, args=(client, server, reader), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, None), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, reader) -> None:
        try:
            while data := source.recv(65536):
                if reader is None and self.delay_s:
                    time.sleep(self.delay_s)
                target.sendall(data)
                with self._lock:
                    if reader is None:
                        self.bytes_to_clients += len(data)
                    else:
                        self.bytes_to_server += len(data)
                if reader is not None:
                    reader.feed(data)
        except OSError:
            pass  # the other side closed: so does this one, below
        finally:
            for end in (source, target):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
