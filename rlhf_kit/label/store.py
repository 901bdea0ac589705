"""The labeling store: one SQLite file in WAL mode (readers never block the one writer; a crash keeps every
committed transaction). Items are claimed lazily, so labelers added later share the queue and a labeler who stops
gets their unfinished item back first.

Tables: ``users``; ``items`` (a rank task: prompt + K responses, gold when it carries a known ranking; or a
demonstration task: prompt + optional model-written suggestion); ``assignments`` (an item given to one labeler,
with that labeler's response order); ``labels`` (at most one per assignment: the UNIQUE constraint is what makes a
double-clicked or retried submit store one label).
"""

from __future__ import annotations

import hashlib
import json
import random
import secrets
import sqlite3
import threading
import time
from pathlib import Path

from rlhf_kit.core.errors import UserError

SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, password_hash TEXT NOT NULL,
    is_admin INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY, kind TEXT NOT NULL CHECK (kind IN ('rank', 'demo')), prompt TEXT NOT NULL,
    responses TEXT, suggestion TEXT, known_ranks TEXT, overlap INTEGER NOT NULL, assigned INTEGER NOT NULL DEFAULT 0,
    position REAL NOT NULL, source TEXT, digest TEXT NOT NULL UNIQUE, created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS items_position ON items (position);
CREATE TABLE IF NOT EXISTS assignments (
    id INTEGER PRIMARY KEY, item_id INTEGER NOT NULL REFERENCES items (id),
    user_id INTEGER NOT NULL REFERENCES users (id), display_order TEXT NOT NULL, claimed REAL NOT NULL,
    started REAL, UNIQUE (item_id, user_id));
CREATE INDEX IF NOT EXISTS assignments_user ON assignments (user_id);
CREATE TABLE IF NOT EXISTS labels (
    id INTEGER PRIMARY KEY, assignment_id INTEGER NOT NULL UNIQUE REFERENCES assignments (id),
    item_id INTEGER NOT NULL REFERENCES items (id), user_id INTEGER NOT NULL REFERENCES users (id),
    ranks TEXT, scores TEXT, flags TEXT, messages TEXT, seconds REAL, created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS labels_item ON labels (item_id);
"""

DEFAULT_SETTINGS = {
    "overlap_share": "0.0",    # share of items that go to several labelers (for agreement); InstructGPT overlapped
    "overlap_labelers": "3",   # a subset to measure inter-labeler agreement (App. B.4)
}


class Store:
    """Thread-safe access to one labeling database (a connection per thread)."""

    def __init__(self, path: str | Path, create: bool = True):
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise UserError(f"label database {self.path} not found; create it with `rlhf-kit label add-user NAME "
                            f"--admin --db {self.path}` or `rlhf-kit label import FILE --db {self.path}`")
        self._local = threading.local()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = self.connect()
        columns = {row[1] for row in db.execute("PRAGMA table_info(items)")}
        if "gold_ranks" in columns:  # a database made before the column's rename keeps its gold items
            db.execute("ALTER TABLE items RENAME COLUMN gold_ranks TO known_ranks")
        db.executescript(SCHEMA)  # idempotent; executescript runs outside a transaction
        with self.write() as db:
            for key, value in {**DEFAULT_SETTINGS, "secret_key": secrets.token_urlsafe(32)}.items():
                db.execute("INSERT OR IGNORE INTO settings (key, value) VALUES (?, ?)", (key, value))

    def connect(self) -> sqlite3.Connection:
        """This thread's connection: autocommit mode (transactions are explicit), WAL, fsync on commit."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # an acknowledged label survives a power cut, not only a crash
            db.execute("PRAGMA foreign_keys=ON")
            self._local.db = db
        return db

    def write(self):
        """A write transaction taken up front (BEGIN IMMEDIATE), so concurrent writers queue on the busy timeout
        instead of failing when a read lock would have to be upgraded."""
        return _Transaction(self.connect())

    def query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        return self.connect().execute(sql, args).fetchall()

    def setting(self, key: str) -> str:
        return self.query("SELECT value FROM settings WHERE key = ?", (key,))[0]["value"]

    def set_setting(self, key: str, value: str) -> None:
        with self.write() as db:
            db.execute("INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = "
                       "excluded.value", (key, value))

    # --- people -------------------------------------------------------------------------------------------------

    def add_user(self, name: str, password_hash: str, is_admin: bool, replace: bool = False) -> None:
        with self.write() as db:
            exists = db.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone()
            if exists and not replace:
                raise UserError(f"user {name} already exists; pass --reset-password to set a new password")
            db.execute("INSERT INTO users (name, password_hash, is_admin, created) VALUES (?, ?, ?, ?) "
                       "ON CONFLICT (name) DO UPDATE SET password_hash = excluded.password_hash, "
                       "is_admin = excluded.is_admin", (name, password_hash, int(is_admin), time.time()))

    def user_by_name(self, name: str) -> sqlite3.Row | None:
        rows = self.query("SELECT * FROM users WHERE name = ?", (name,))
        return rows[0] if rows else None

    def user(self, user_id: int) -> sqlite3.Row | None:
        rows = self.query("SELECT * FROM users WHERE id = ?", (user_id,))
        return rows[0] if rows else None

    def users(self) -> list[sqlite3.Row]:
        return self.query("SELECT * FROM users ORDER BY name")

    # --- queue --------------------------------------------------------------------------------------------------

    def add_items(self, items: list[dict], source: str, seed: int = 0) -> tuple[int, int]:
        """Queue tasks (see ``rlhf_kit.label.tasks.parse_item``); returns (added, already queued).

        A share ``overlap_share`` of the items goes to ``overlap_labelers`` labelers, the rest to one; gold items go
        to every labeler. Positions are random, so gold and overlapping items are mixed into everyone's stream.
        """
        rng = random.Random(seed)
        share, n_overlap = float(self.setting("overlap_share")), int(self.setting("overlap_labelers"))
        added = 0
        with self.write() as db:
            for item in items:
                digest = hashlib.sha256(json.dumps([item["kind"], item["prompt"], item.get("responses"),
                                                    item.get("known_ranks")]).encode()).hexdigest()
                overlap = n_overlap if rng.random() < share else 1
                cur = db.execute(
                    "INSERT INTO items (kind, prompt, responses, suggestion, known_ranks, overlap, position, source, "
                    "digest, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (digest) DO NOTHING",
                    (item["kind"], json.dumps(item["prompt"]), _dumps(item.get("responses")), item.get("suggestion"),
                     _dumps(item.get("known_ranks")), overlap, rng.random(), source, digest, time.time()))
                added += cur.rowcount
        return added, len(items) - added

    def next_assignment(self, user_id: int) -> int | None:
        """The labeler's oldest unfinished assignment, else a newly claimed item; None when nothing is left."""
        with self.write() as db:
            row = db.execute("SELECT a.id FROM assignments a LEFT JOIN labels l ON l.assignment_id = a.id "
                             "WHERE a.user_id = ? AND l.id IS NULL ORDER BY a.claimed, a.id LIMIT 1",
                             (user_id,)).fetchone()
            if row:
                return row["id"]
            item = db.execute(
                "SELECT id, responses FROM items i WHERE (i.known_ranks IS NOT NULL OR i.assigned < i.overlap) "
                "AND NOT EXISTS (SELECT 1 FROM assignments a WHERE a.item_id = i.id AND a.user_id = ?) "
                "ORDER BY i.position LIMIT 1", (user_id,)).fetchone()
            if item is None:
                return None
            order = list(range(len(json.loads(item["responses"])))) if item["responses"] else []
            random.Random(secrets.randbits(64)).shuffle(order)  # InstructGPT: order shuffled per labeler
            db.execute("UPDATE items SET assigned = assigned + 1 WHERE id = ?", (item["id"],))
            return db.execute("INSERT INTO assignments (item_id, user_id, display_order, claimed) VALUES (?, ?, ?, ?)",
                              (item["id"], user_id, json.dumps(order), time.time())).lastrowid

    def assignment(self, assignment_id: int, user_id: int) -> dict | None:
        """An assignment with its item and label, only if it belongs to ``user_id`` (else None: not found)."""
        rows = self.query(
            "SELECT a.id, a.item_id, a.user_id, a.display_order, a.started, i.kind, i.prompt, i.responses, "
            "i.suggestion, l.id AS label_id FROM assignments a JOIN items i ON i.id = a.item_id "
            "LEFT JOIN labels l ON l.assignment_id = a.id WHERE a.id = ? AND a.user_id = ?", (assignment_id, user_id))
        if not rows:
            return None
        row = dict(rows[0])
        for key in ("display_order", "prompt", "responses"):
            row[key] = json.loads(row[key]) if row[key] else None
        return row

    def mark_started(self, assignment_id: int) -> None:
        """The first time the labeler sees the task: the start of its time per task."""
        with self.write() as db:
            db.execute("UPDATE assignments SET started = ? WHERE id = ? AND started IS NULL",
                       (time.time(), assignment_id))

    def submit(self, assignment: dict, label: dict) -> bool:
        """Store the label of an assignment; False (and nothing written) when it already has one."""
        now = time.time()
        seconds = now - assignment["started"] if assignment.get("started") else None
        with self.write() as db:
            cur = db.execute(
                "INSERT INTO labels (assignment_id, item_id, user_id, ranks, scores, flags, messages, seconds, "
                "created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (assignment_id) DO NOTHING",
                (assignment["id"], assignment["item_id"], assignment["user_id"], _dumps(label.get("ranks")),
                 _dumps(label.get("scores")), _dumps(label.get("flags")), _dumps(label.get("messages")), seconds, now))
            return cur.rowcount == 1

    # --- reading back -------------------------------------------------------------------------------------------

    def progress(self, user_id: int) -> dict:
        """A labeler's own counts: done, in progress (claimed, not submitted)."""
        done = self.query("SELECT count(*) AS n FROM labels WHERE user_id = ?", (user_id,))[0]["n"]
        claimed = self.query("SELECT count(*) AS n FROM assignments WHERE user_id = ?", (user_id,))[0]["n"]
        return {"done": done, "in_progress": claimed - done}

    def recent_labels(self, user_id: int, n: int = 10) -> list[dict]:
        rows = self.query("SELECT l.created, l.seconds, i.kind, i.prompt FROM labels l "
                          "JOIN items i ON i.id = l.item_id WHERE l.user_id = ? ORDER BY l.id DESC LIMIT ?",
                          (user_id, n))
        return [{**dict(r), "prompt": json.loads(r["prompt"])} for r in rows]

    def labels(self) -> list[dict]:
        """Every label with its item and labeler, JSON columns decoded (for agreement and export)."""
        rows = self.query(
            "SELECT l.id, l.item_id, l.user_id, u.name AS labeler, l.ranks, l.scores, l.flags, l.messages, l.seconds, "
            "i.kind, i.prompt, i.responses, i.known_ranks FROM labels l JOIN items i ON i.id = l.item_id "
            "JOIN users u ON u.id = l.user_id ORDER BY l.item_id, l.id")
        out = []
        for r in rows:
            row = dict(r)
            for key in ("ranks", "scores", "flags", "messages", "prompt", "responses", "known_ranks"):
                row[key] = json.loads(row[key]) if row[key] else None
            out.append(row)
        return out

    def counts(self) -> dict:
        """Queue totals for the admin page."""
        q = lambda sql: self.query(sql)[0][0]  # noqa: E731
        return {
            "items": q("SELECT count(*) FROM items WHERE known_ranks IS NULL"),
            "known_items": q("SELECT count(*) FROM items WHERE known_ranks IS NOT NULL"),
            "items_labeled": q("SELECT count(DISTINCT l.item_id) FROM labels l JOIN items i ON i.id = l.item_id "
                               "WHERE i.known_ranks IS NULL"),
            "labels": q("SELECT count(*) FROM labels"),
            "in_progress": q("SELECT count(*) FROM assignments a WHERE NOT EXISTS "
                             "(SELECT 1 FROM labels l WHERE l.assignment_id = a.id)"),
        }


class _Transaction:
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, exc, tb):
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")


def _dumps(value) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False)
