"""The labeling server under load, as a real process on 127.0.0.1: concurrent labelers, double submits, SIGKILL.

    python -m pytest -q -s tests/test_label_load.py   # -s prints the figures (stored, duplicates, p95)
    make bench-label                                  # the page-time figure, held to p95 <= 200 ms, on an idle CPU

The test holds what cannot be flaky (every acknowledged label stored once); the p95 page time depends on what else
the machine runs (`make test` runs two files at once), so only ``make bench-label`` (``LABEL_P95_LIMIT_S``) holds it.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import statistics
import threading
import time

import httpx  # dev extra, installed by `make install`
from label_helpers import PASSWORD, Server, csrf_of, make_db, rank_form, rank_items

LABELERS, SUBMISSIONS = 20, 50
P95_LIMIT_S = float(os.environ.get("LABEL_P95_LIMIT_S") or "inf")  # make bench-label: 0.2 (p95 <= 200 ms)


def labeler_session(url: str, name: str) -> httpx.Client:
    client = httpx.Client(base_url=url, timeout=60)
    page = client.get("/login")
    done = client.post("/login", data={"csrf_token": csrf_of(page.text), "name": name, "password": PASSWORD})
    assert done.status_code == 303 and done.headers["location"] == "/"
    return client


def timed(times: list, fn, *args, **kwargs):
    start = time.perf_counter()
    response = fn(*args, **kwargs)
    times.append(time.perf_counter() - start)
    return response


def label_one(client: httpx.Client, times: list, double: bool = False) -> int | None:
    """Open the next task and submit it (twice at once when ``double``); the acknowledged task id, or None."""
    nxt = timed(times, client.get, "/next")
    if nxt.status_code != 303 or not nxt.headers["location"].startswith("/task/"):
        return None
    aid = int(nxt.headers["location"].rsplit("/", 1)[1])
    page = timed(times, client.get, f"/task/{aid}")
    fields = rank_form(page.text)
    if double:  # a double click: the same form posted twice concurrently
        other = threading.Thread(target=client.post, args=(f"/task/{aid}",), kwargs={"data": fields})
        other.start()
    done = timed(times, client.post, f"/task/{aid}", data=fields)
    if double:
        other.join()
    assert done.status_code == 303 and done.headers["location"] == "/next", done.text[-500:]
    return aid


def test_concurrent_labelers_store_every_label_once(tmp_path):
    db = tmp_path / "labels.db"
    names = [f"labeler{i:02d}" for i in range(LABELERS)]
    make_db(db, labelers=names, items=rank_items(LABELERS * SUBMISSIONS))
    server = Server(db, tmp_path / "server.log")
    times, acked, errors = [], [], []
    try:
        clients = [labeler_session(server.url, n) for n in names]

        def work(client):
            try:
                for n in range(SUBMISSIONS):
                    acked.append(label_one(client, times, double=n % 10 == 0))
            except Exception as err:  # noqa: BLE001 - reported below
                errors.append(repr(err))

        threads = [threading.Thread(target=work, args=(c,)) for c in clients]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - started
    finally:
        server.stop()
    assert not errors, errors[:3]
    con = sqlite3.connect(db)
    stored = con.execute("SELECT count(*) FROM labels").fetchone()[0]
    duplicates = con.execute("SELECT count(*) - count(DISTINCT assignment_id) FROM labels").fetchone()[0]
    same_item_twice = con.execute("SELECT count(*) - count(DISTINCT item_id) FROM labels").fetchone()[0]
    per_labeler = {n for (n,) in con.execute("SELECT count(*) FROM labels GROUP BY user_id")}
    p95 = statistics.quantiles(times, n=20)[-1]
    print(f"\n[label load] {LABELERS} labelers x {SUBMISSIONS}: {stored} stored of {len(acked)} acknowledged, "
          f"{duplicates} duplicates, {len(times)} requests in {wall:.1f}s, p50 {statistics.median(times) * 1000:.0f} "
          f"ms, p95 {p95 * 1000:.0f} ms")
    assert len(acked) == LABELERS * SUBMISSIONS and None not in acked
    assert stored == LABELERS * SUBMISSIONS and duplicates == 0 and same_item_twice == 0
    assert per_labeler == {SUBMISSIONS}
    assert p95 <= P95_LIMIT_S, f"p95 page time {p95 * 1000:.0f} ms over {P95_LIMIT_S * 1000:.0f} ms"


def test_sigkill_mid_load_loses_no_acknowledged_label(tmp_path):
    db = tmp_path / "labels.db"
    names = [f"labeler{i}" for i in range(8)]
    make_db(db, labelers=names, items=rank_items(2000))
    server = Server(db, tmp_path / "server.log")
    acked, stop = [], threading.Event()
    try:
        clients = [labeler_session(server.url, n) for n in names]

        def work(client):
            while not stop.is_set():
                try:
                    aid = label_one(client, [])
                except Exception:  # noqa: BLE001 - the server is gone; only what it acknowledged counts
                    return
                if aid is not None:
                    acked.append(aid)

        threads = [threading.Thread(target=work, args=(c,)) for c in clients]
        for t in threads:
            t.start()
        deadline = time.time() + 120
        while len(acked) < 150 and time.time() < deadline and any(t.is_alive() for t in threads):
            time.sleep(0.01)
        assert len(acked) >= 150, f"only {len(acked)} labels acknowledged before the kill"
        os.kill(server.proc.pid, signal.SIGKILL)  # mid-load: requests in flight on every thread
        server.proc.wait(10)
        stop.set()
        for t in threads:
            t.join(60)
    finally:
        server.stop()
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = {a for (a,) in con.execute("SELECT assignment_id FROM labels")}
    lost = set(acked) - stored
    print(f"\n[label kill] SIGKILL after {len(acked)} acknowledged labels: {len(stored)} stored, {len(lost)} lost")
    assert not lost
    restarted = Server(db, tmp_path / "server2.log")  # the database opens again and labeling continues
    try:
        client = labeler_session(restarted.url, names[0])
        assert label_one(client, []) not in stored
    finally:
        restarted.stop()
