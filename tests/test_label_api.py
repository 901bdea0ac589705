"""The labeling app through Starlette's test client: the flows, the export, and each security protection."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from label_helpers import PASSWORD, REPO, csrf_of, login, make_db, rank_form, rank_items, response_indices
from starlette.testclient import TestClient  # label extra, installed by `make install`

from rlhf_kit.label.agreement import merge_rankings, pair_agreement
from rlhf_kit.label.app import build_app


def client_for(db, **kwargs) -> TestClient:
    return TestClient(build_app(db, **kwargs), base_url="http://127.0.0.1")


def open_task(client):
    page = client.get("/next")
    assert page.status_code == 200, page.text
    return page, int(str(page.url).rsplit("/", 1)[1])


def alice_on_a_task(tmp_path, n_items: int):
    """A store of ``n_items`` rank tasks, and alice logged in with her first task open: (store, client, page, id)."""
    db = tmp_path / "labels.db"
    store = make_db(db, items=rank_items(n_items))
    client = client_for(db)
    login(client, "alice")
    page, aid = open_task(client)
    return store, client, page, aid


def test_pair_agreement_skips_ties_and_merge_rule():
    assert pair_agreement([0, 1, 2], [0, 1, 2]) == (3, 3)
    assert pair_agreement([0, 1, 2], [2, 1, 0]) == (0, 3)
    assert pair_agreement([0, 0, 1], [0, 1, 2]) == (2, 2)  # the pair tied by the first labeler is no comparison
    labels = [{"prompt": [], "responses": ["a", "b", "c"], "ranks": r, "scores": s, "flags": f, "labeler": n}
              for r, s, f, n in [([0, 1, 2], [7, 4, 1], [[], ["hallucination"], ["opinion"]], "bob"),
                                 ([1, 0, 2], [5, 6, 1], [[], ["hallucination"], []], "alice")]]
    merged = merge_rankings(labels)
    assert merged["ranks"] == [0, 0, 1]  # equal mean ranks (0.5, 0.5) tie
    assert merged["scores"] == [6.0, 5.0, 1.0]
    assert merged["flags"] == [[], ["hallucination"], ["opinion"]]  # set by at least half of the labelers
    assert merged["labeler"] == "alice+bob"


def test_rank_and_demo_flow_stop_return_and_export(tmp_path):
    items = rank_items(2) + [{"prompt": "write a haiku", "suggestion": "an old pond"}]
    db = tmp_path / "labels.db"
    make_db(db, items=items, gold=[{"prompt": "gold q", "responses": ["best", "mid", "worst"], "ranks": [0, 1, 2]}],
            overlap_share=1.0, overlap_labelers=2)
    for name in ("alice", "bob"):
        client = client_for(db)
        assert login(client, name).status_code == 303
        first, aid = open_task(client)
        assert client.get("/").status_code == 200  # stop ...
        again, aid_again = open_task(client)        # ... and return: the same unfinished task
        assert aid_again == aid
        done = 0
        page = again
        while "/task/" in str(page.url):
            if "demo-form" in page.text:
                assert "an old pond" in page.text
                fields = {"csrf_token": csrf_of(page.text), "turn_0": f"haiku by {name}"}
            elif "gold q" in page.text:  # gold item: alice agrees with the known order, bob reverses it
                order = {0: 0, 1: 1, 2: 2} if name == "alice" else {0: 2, 1: 1, 2: 0}
                fields = rank_form(page.text, ranks=order)
            else:
                fields = rank_form(page.text, flags={1: ["hallucination"]})
            page = client.post(page.url, data=fields)
            assert page.status_code == 200
            done += 1
        assert done == 4 and "Nothing left" in page.text
    out = tmp_path / "export"
    proc = subprocess.run([sys.executable, "-m", "rlhf_kit.cli", "label", "export", "--db", str(db), "--output-dir",
                           str(out)], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in (out / "rankings.jsonl").read_text().splitlines()]
    assert len(rows) == 2  # two labels per item merged into one row; the gold item is left out
    for row in rows:
        assert row["ranks"] == [0, 1, 2, 3] and row["scores"] == [7, 6, 5, 4]
        assert row["labeler"] == "alice+bob" and row["flags"][1] == ["hallucination"]
        assert row["prompt"][0]["role"] == "user" and len(row["responses"]) == 4
    demos = [json.loads(line) for line in (out / "demonstrations.jsonl").read_text().splitlines()]
    assert sorted(d["messages"][-1]["content"] for d in demos) == ["haiku by alice", "haiku by bob"]
    from rlhf_kit.data.cards import canonical_rows, load_card

    card = load_card(str(out / "rankings_card.md"))
    kept, dropped, read = canonical_rows(card, "comparisons", "train")
    assert read == 2 and len(kept) == 2 and not dropped
    assert card.labels["agreement_with_gold"] == 0.5  # alice 3/3 with gold, bob 0/3
    sft_card = load_card(str(out / "demonstrations_card.md"))
    assert len(canonical_rows(sft_card, "sft", "train")[0]) == 2
    admin = client_for(db)
    login(admin, "admin")
    table = admin.get("/admin").text
    assert "Items labeled: <b>3</b> of 3 · gold items: 1 ·\nlabels: 8" in table
    assert 'data-labeler="alice"' in table and "100.0% (3 pairs)" in table and "0.0% (3 pairs)" in table


def test_overlap_and_gold_reach_the_right_labelers(tmp_path):
    db = tmp_path / "labels.db"
    store = make_db(db, labelers=("a", "b", "c"), items=rank_items(30),
                    gold=[{"prompt": "g", "responses": ["x", "y"], "ranks": [1, 0]}], overlap_share=0.0)
    users = {n: store.user_by_name(n)["id"] for n in ("a", "b", "c")}
    claimed = {n: [] for n in users}
    while True:  # round-robin claims until the queue is empty
        progress = False
        for name, uid in users.items():
            aid = store.next_assignment(uid)
            if aid:
                task = store.assignment(aid, uid)
                store.submit(task, {"ranks": list(range(len(task["responses"])))})
                claimed[name].append(task["item_id"])
                progress = True
        if not progress:
            break
    gold_id = store.query("SELECT id FROM items WHERE known_ranks IS NOT NULL")[0]["id"]
    assert all(gold_id in ids for ids in claimed.values())  # gold goes to everyone
    normal = [i for ids in claimed.values() for i in ids if i != gold_id]
    assert len(normal) == 30 and len(set(normal)) == 30  # overlap 0: each item to exactly one labeler
    orders = {json.dumps(r["display_order"]) for r in store.query("SELECT display_order FROM assignments")}
    assert len(orders) > 1  # responses shuffled per labeler


def test_a_database_from_before_the_known_ranks_rename_keeps_its_gold_items(tmp_path):
    import sqlite3

    from rlhf_kit.label.store import SCHEMA, Store

    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(SCHEMA.replace("known_ranks", "gold" + "_ranks"))  # the column's name before the rename
    old.execute("INSERT INTO items (kind, prompt, responses, gold_ranks, overlap, position, source, digest, created) "
                "VALUES ('rank', '[]', '[\"a\", \"b\"]', '[0, 1]', 1, 0.5, 'x', 'd', 0)")
    old.commit()
    old.close()
    store = Store(path)
    assert [dict(r) for r in store.query("SELECT known_ranks FROM items")] == [{"known_ranks": "[0, 1]"}]


def test_csrf_token_required(tmp_path):
    db = tmp_path / "labels.db"
    store = make_db(db, items=rank_items(1))
    client = client_for(db)
    client.get("/login")
    refused = client.post("/login", data={"name": "alice", "password": PASSWORD}, follow_redirects=False)
    assert refused.status_code == 403  # login CSRF
    assert login(client, "alice").status_code == 303
    page, aid = open_task(client)
    fields = {k: v for k, v in rank_form(page.text).items() if k != "csrf_token"}
    assert client.post(f"/task/{aid}", data=fields, follow_redirects=False).status_code == 403
    other = client_for(db)  # a token from another session is no good either
    login(other, "bob")
    foreign = {"csrf_token": csrf_of(other.get("/").text), **fields}
    assert client.post(f"/task/{aid}", data=foreign, follow_redirects=False).status_code == 403
    assert client.post("/logout", data={}, follow_redirects=False).status_code == 403
    assert store.counts()["labels"] == 0
    assert client.post(f"/task/{aid}", data=rank_form(page.text), follow_redirects=False).status_code == 303
    assert store.counts()["labels"] == 1


def test_model_output_is_escaped(tmp_path):
    db = tmp_path / "labels.db"
    evil = "<script>alert('x')</script>"
    make_db(db, items=[{"prompt": f"<b>{evil}</b>", "responses": [evil, "<img src=x onerror=alert(1)>"]}])
    client = client_for(db)
    login(client, "alice")
    page, _ = open_task(client)
    assert "<script>alert" not in page.text and "<img src=x" not in page.text and "<b>" not in page.text
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]  # and no inline script would run


def test_labeler_cannot_touch_others_work_or_admin(tmp_path):
    db = tmp_path / "labels.db"
    store = make_db(db, items=rank_items(2))
    alice, bob = client_for(db), client_for(db)
    login(alice, "alice")
    login(bob, "bob")
    page, aid = open_task(alice)
    assert bob.get(f"/task/{aid}").status_code == 404
    fields = rank_form(page.text)
    fields["csrf_token"] = csrf_of(bob.get("/").text)
    assert bob.post(f"/task/{aid}", data=fields, follow_redirects=False).status_code == 404
    assert store.counts()["labels"] == 0
    assert bob.get("/admin").status_code == 403
    assert "answer" not in bob.get("/admin").text
    anonymous = client_for(db)
    assert anonymous.get("/admin", follow_redirects=False).headers["location"] == "/login"
    assert anonymous.get(f"/task/{aid}", follow_redirects=False).status_code == 303
    admin = client_for(db)
    login(admin, "admin")
    assert admin.get("/admin").status_code == 200


def test_wrong_logins_are_rate_limited(tmp_path):
    db = tmp_path / "labels.db"
    make_db(db)
    client = client_for(db, login_limit="3/minute", address_limit="6/minute")
    assert [login(client, "alice", "wrong").status_code for _ in range(3)] == [401, 401, 401]
    blocked = login(client, "alice", PASSWORD)  # even the right password waits now
    assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) > 0
    assert login(client, "bob", PASSWORD).status_code == 303  # another account from the same address still works
    assert [login(client, "bob", "wrong").status_code for _ in range(3)] == [401, 401, 401]
    assert login(client, "admin", PASSWORD).status_code == 429  # the per-address limit


def test_double_submit_stores_one_label(tmp_path):
    store, client, page, aid = alice_on_a_task(tmp_path, 2)
    fields = rank_form(page.text)
    first = client.post(f"/task/{aid}", data=fields, follow_redirects=False)
    second = client.post(f"/task/{aid}", data=fields, follow_redirects=False)
    assert first.status_code == second.status_code == 303
    assert store.counts()["labels"] == 1
    # Two requests that both passed the "already labeled?" check (the race of a double click): the store keeps one.
    task = store.assignment(aid, store.user_by_name("alice")["id"])
    assert store.submit(task, {"ranks": [0, 1, 2, 3]}) is False
    assert store.counts()["labels"] == 1


def test_bad_forms_and_imports_are_one_line_errors(tmp_path):
    store, client, page, aid = alice_on_a_task(tmp_path, 1)
    db = tmp_path / "labels.db"
    fields = {k: v for k, v in rank_form(page.text).items() if not k.startswith("score_")}
    bad = client.post(f"/task/{aid}", data=fields)
    assert bad.status_code == 400 and "rate every response" in bad.text
    assert store.counts()["labels"] == 0
    assert len(response_indices(bad.text)) == 4
    bad_file = tmp_path / "bad.jsonl"
    bad_file.write_text('{"prompt": "q", "responses": ["only one"]}\n')
    proc = subprocess.run([sys.executable, "-m", "rlhf_kit.cli", "label", "import", str(bad_file), "--db", str(db)],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "line 1" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_exported_rows_load_in_the_reward_builder_with_scores_aligned():
    from datasets import Dataset

    from rlhf_kit.reward.ranking import build_ranking_dataset
    from rlhf_kit.worlds.demo import tiny, world

    prompt = [{"role": "user", "content": "name two animals"}]
    row = {"prompt": prompt, "responses": ["cat , dog", "", "cat"], "ranks": [0, 2, 1], "scores": [7, 1, 4],
           "flags": [[], ["fails_instruction"], []], "labeler": "alice+bob"}
    kept = build_ranking_dataset(Dataset.from_list([row]), tiny.build_tiny_tokenizer(world.vocabulary()), None,
                                 "rankings.jsonl")
    assert kept[0]["responses"] == ["cat , dog", "cat"] and kept[0]["ranks"] == [0, 1]
    assert kept[0]["scores"] == [7, 4]  # the empty response's rating went with it


def test_compare_labeler_human_needs_a_label_db():
    from rlhf_kit.core.errors import UserError
    from rlhf_kit.run.configs import CompareArguments, parse_stage_args

    with pytest.raises(UserError, match="labeler human needs label_db"):
        parse_stage_args((CompareArguments,), ["--labeler", "human"])
    (args,) = parse_stage_args((CompareArguments,), ["--labeler", "human", "--label_db", "x.db"])
    assert args.labeler == "human" and args.label_db == "x.db"
    with pytest.raises(UserError, match="with labeler human leave other_samples empty"):
        parse_stage_args((CompareArguments,),
                         ["--labeler", "human", "--label_db", "x.db", "--other_samples", "s.jsonl"])
