"""A small TCP proxy for tests and benchmarks: slows uploads down, and counts HTTP requests.

It sits between an MLflow client and a real `mlflow server`, forwarding bytes
unchanged, so both ends are the real thing. Bytes from the client to the server
can be throttled to `upload_rate` bytes/s per connection (a slow link, not a
broken one), and the request lines going through are recorded.
"""

from __future__ import annotations

import re
import socket
import threading
import time
import urllib.parse

_REQUEST_LINE = re.compile(rb"(GET|POST|PUT|PATCH|DELETE|HEAD) (\S+) HTTP/1\.[01]\r\n")


class TcpProxy:
    """Forward 127.0.0.1:<free port> to `target` (an http://host:port URL).

    Args:
        target: the server's URL.
        upload_rate: bytes per second from client to server, per connection (None: unthrottled).

    Attributes:
        url: the proxy's URL, to use as the tracking URI.
        requests: (method, path) of every HTTP request seen, in order.
        bytes_up: bytes forwarded from clients to the server (requests and uploads).
        longest_upload_s: the longest time one connection spent throttled while uploading.
    """

    def __init__(self, target: str, upload_rate: float | None = None):
        parts = urllib.parse.urlsplit(target)
        self.target = (parts.hostname, parts.port)
        self.upload_rate = upload_rate
        self.requests: list[tuple[str, str]] = []
        self.bytes_up = 0
        self.longest_upload_s = 0.0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="tcp-proxy", daemon=True)

    def start(self) -> TcpProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._closed = True
        self._listener.close()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.bytes_up = 0
            self.longest_upload_s = 0.0

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()  # the server is down: the client sees a dropped connection
                continue
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        throttled = 0.0
        tail = b""  # the end of the previous chunk, so a request line split across reads is still seen
        try:
            while True:
                chunk = src.recv(64 * 1024 if not upstream or self.upload_rate is None else 16 * 1024)
                if not chunk:
                    break
                if upstream:
                    seen = tail + chunk
                    found = [
                        (m.group(1).decode(), m.group(2).decode())
                        for m in _REQUEST_LINE.finditer(seen)
                        if m.end() > len(tail)
                    ]
                    tail = seen[-256:]
                    with self._lock:
                        self.requests.extend(found)
                        self.bytes_up += len(chunk)
                dst.sendall(chunk)
                if upstream and self.upload_rate is not None:
                    pause = len(chunk) / self.upload_rate
                    time.sleep(pause)
                    throttled += pause
                    with self._lock:
                        self.longest_upload_s = max(self.longest_upload_s, throttled)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
