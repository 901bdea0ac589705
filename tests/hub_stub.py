"""A local HTTP stand-in for the parts of the Hub API that ``create_repo`` and ``upload_folder`` use (no network).

It records every request and keeps uploaded files in memory, so tests can check what arrived; a request without a
bearer token gets 401 as on the Hub.
"""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class HubStub:
    def __init__(self):
        self.requests: list[tuple[str, str]] = []
        self.repos: set[str] = set()
        self.files: dict[str, dict[str, bytes]] = {}
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _reply(self, code: int, body: dict | None = None):
                data = json.dumps(body or {}).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length", 0)))

            def do_GET(self):
                stub.requests.append(("GET", self.path))
                if self.path.startswith("/api/whoami"):
                    return self._reply(200, {"name": "tester", "type": "user"})
                self._reply(404, {"error": "not found"})

            def do_POST(self):
                stub.requests.append(("POST", self.path))
                body = self._body()
                if not self.headers.get("Authorization", "").startswith("Bearer "):
                    return self._reply(401, {"error": "Invalid credentials in Authorization header"})
                parts = self.path.split("?")[0].strip("/").split("/")
                if parts[:2] == ["api", "validate-yaml"]:  # the model card's metadata
                    return self._reply(200, {"errors": [], "warnings": []})
                if parts[:3] == ["api", "repos", "create"]:
                    req = json.loads(body)
                    repo = f"{req.get('organization') or 'tester'}/{req['name']}"
                    stub.repos.add(repo)
                    return self._reply(200, {"url": f"{stub.url}/{repo}", "name": repo})
                if parts[:2] == ["api", "models"] and "preupload" in parts:
                    files = json.loads(body)["files"]
                    return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                        "shouldIgnore": False} for f in files]})
                if parts[:2] == ["api", "models"] and "commit" in parts:
                    repo = "/".join(parts[2:4])
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item.get("key") == "file":
                            value = item["value"]
                            stub.files.setdefault(repo, {})[value["path"]] = base64.b64decode(value["content"])
                    return self._reply(200, {"commitUrl": f"{stub.url}/{repo}/commit/1", "commitOid": "1" * 40,
                                             "success": True})
                self._reply(404, {"error": f"unhandled {self.path}"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
