"""A STAC API that implements only the Transaction extension's item writes, for the ingest test: ``rustac serve``
answers 405 to them (rustac issue #1110), and no other STAC server with transactions runs here without a database.

POST /collections, POST /collections/{c}/items (409 if the item exists, 404 without the collection),
PUT /collections/{c}/items/{id}, GET /collections/{c}/items/{id}. Every request is recorded."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class TransactionServer:
    def __init__(self):
        self.collections: dict[str, dict] = {}
        self.items: dict[tuple[str, str], dict] = {}
        self.requests: list[tuple[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _answer(self, code: int, body: dict | None = None):
                data = json.dumps(body or {}).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> dict:
                return json.loads(self.rfile.read(int(self.headers["Content-Length"])))

            def do_GET(self):
                server.requests.append(("GET", self.path))
                parts = self.path.strip("/").split("/")
                if len(parts) == 4 and (parts[1], parts[3]) in server.items:
                    return self._answer(200, server.items[(parts[1], parts[3])])
                self._answer(404)

            def do_POST(self):
                server.requests.append(("POST", self.path))
                parts, body = self.path.strip("/").split("/"), self._body()
                if parts == ["collections"]:
                    server.collections[body["id"]] = body
                    return self._answer(201, body)
                if len(parts) == 3 and parts[2] == "items":
                    if parts[1] not in server.collections:
                        return self._answer(404)
                    if (parts[1], body["id"]) in server.items:
                        return self._answer(409)
                    server.items[(parts[1], body["id"])] = body
                    return self._answer(201, body)
                self._answer(404)

            def do_PUT(self):
                server.requests.append(("PUT", self.path))
                parts, body = self.path.strip("/").split("/"), self._body()
                if len(parts) == 4 and (parts[1], parts[3]) in server.items:
                    server.items[(parts[1], parts[3])] = body
                    return self._answer(200, body)
                self._answer(404)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._httpd.shutdown()
        self._httpd.server_close()
