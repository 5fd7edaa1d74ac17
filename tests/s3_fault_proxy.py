"""An HTTP proxy in front of the moto S3 server that fails chosen PUTs: the one fault moto cannot cause.

Everything else is forwarded byte for byte to the real moto server, so the code under test talks real S3
HTTP through s3fs/botocore. ``fail_first=N`` answers the first N matching PUTs with 503 SlowDown (a transient
error a client must retry); ``fail_first=None`` answers every matching PUT with 403 AccessDenied (permanent).
"""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

ERRORS = {503: ("SlowDown", "Please reduce your request rate."), 403: ("AccessDenied", "Access Denied")}


class FaultProxy:
    def __init__(self, upstream: str, match: str = "/c/", fail_first: int | None = 3):
        self.upstream, self.match, self.fail_first = urlsplit(upstream), match, fail_first
        self.failed, self.forwarded, self._lock = 0, 0, threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _handle(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
                status = proxy._fault(self.command, self.path)
                if status:
                    code, msg = ERRORS[status]
                    out = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{msg}</Message>'
                           f"<Resource>{self.path}</Resource></Error>").encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(out)))
                    self.end_headers()
                    self.wfile.write(out)
                    return
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive", "expect")}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()
                with proxy._lock:
                    proxy.forwarded += 1

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def _fault(self, method: str, path: str) -> int | None:
        if method != "PUT" or self.match not in path:
            return None
        with self._lock:
            if self.fail_first is None:
                self.failed += 1
                return 403
            if self.failed < self.fail_first:
                self.failed += 1
                return 503
        return None

    def __enter__(self) -> "FaultProxy":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
