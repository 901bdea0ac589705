"""Helpers shared by the labeling tests: a database with accounts, form parsing, a live server."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from rlhf_kit.run.launch import free_port

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "correct horse"


def make_db(path: Path, labelers=("alice", "bob"), items=None, gold=None, overlap_share=0.0, overlap_labelers=2):
    """A label database with an admin, the given labelers (password PASSWORD) and queued items."""
    from rlhf_kit.label.security import hash_password
    from rlhf_kit.label.store import Store
    from rlhf_kit.label.tasks import parse_item

    store = Store(path)
    store.set_setting("overlap_share", str(overlap_share))
    store.set_setting("overlap_labelers", str(overlap_labelers))
    hashed = hash_password(PASSWORD)
    store.add_user("admin", hashed, True)
    for name in labelers:
        store.add_user(name, hashed, False)
    if items:
        store.add_items([parse_item(r, "test") for r in items], "test")
    if gold:
        store.add_items([parse_item(r, "gold", gold=True) for r in gold], "gold")
    return store


def rank_items(n: int, k: int = 4, start: int = 0) -> list[dict]:
    return [{"prompt": f"question {i}", "responses": [f"answer {i}.{j}" for j in range(k)]}
            for i in range(start, start + n)]


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def response_indices(html: str) -> list[int]:
    """The item's response indices in the order the page shows them."""
    return [int(i) for i in re.findall(r'data-index="(\d+)"', html)]


def rank_form(html: str, ranks: dict[int, int] | None = None, scores: dict[int, int] | None = None,
              flags: dict[int, list[str]] | None = None) -> dict:
    """Form fields of a rank page: by default response i gets rank i and rating 7 - i."""
    fields = {"csrf_token": csrf_of(html)}
    for i in response_indices(html):
        fields[f"rank_{i}"] = str((ranks or {}).get(i, i))
        fields[f"score_{i}"] = str((scores or {}).get(i, max(1, 7 - i)))
        fields[f"flag_{i}"] = (flags or {}).get(i, [])
    return fields


def login(client, name: str, password: str = PASSWORD):
    page = client.get("/login")
    return client.post("/login", data={"csrf_token": csrf_of(page.text), "name": name, "password": password},
                       follow_redirects=False)


class Server:
    """``rlhf-kit label serve`` as a subprocess on a free port of 127.0.0.1."""

    def __init__(self, db: Path, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        self.log = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "rlhf_kit.cli", "label", "serve", "--db", str(db),
                                      "--port", str(self.port)], cwd=REPO, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                urllib.request.urlopen(self.url + "/healthz", timeout=1)
                return
            except OSError:
                assert self.proc.poll() is None, f"server exited: {log.read_text()}"
                time.sleep(0.1)
        raise TimeoutError("label server did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.log.close()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
