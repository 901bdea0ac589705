"""The labeling app in a real browser: Debian's headless Chromium driven by Playwright (no browser download).

Set RLHF_KIT_SCREENSHOTS=docs/label to (re)write the README's screenshots (`make label-screenshots`).
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest
from label_helpers import PASSWORD, REPO, Server, make_db, rank_items
from playwright.sync_api import sync_playwright  # dev extra, installed by `make install`

from rlhf_kit.label.tasks import parse_item

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SHOTS = os.environ.get("RLHF_KIT_SCREENSHOTS")


@pytest.fixture(scope="module")
def browser():
    # `make test` installs chromium when missing, so these tests never skip: a missing browser is a failure.
    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} not found; `make chromium` (run by `make test`) installs it"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


def new_page(browser, server_url: str):
    page = browser.new_page(viewport={"width": 1100, "height": 760}, base_url=server_url)
    page.dialogs = []
    page.on("dialog", lambda d: (page.dialogs.append(d.message), d.dismiss()))
    page.set_default_timeout(15000)
    return page


def shot(page, name: str, full_page: bool = False) -> None:
    if SHOTS:
        Path(REPO / SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(REPO / SHOTS / f"{name}.png"), full_page=full_page)


def log_in(page, name: str) -> None:
    page.goto("/login")
    page.fill("#name", name)
    page.fill("#password", PASSWORD)
    page.click("#login")
    page.wait_for_selector("#progress")


def rank_by_keyboard(page, ratings: list[str]) -> None:
    """Rate the shown responses top to bottom with digit keys (arrow down between them)."""
    page.wait_for_selector("#rank-form")
    page.locator("body").click(position={"x": 5, "y": 5})  # keyboard focus on the page, not the address bar
    for n, digit in enumerate(ratings):
        if n:
            page.keyboard.press("ArrowDown")
        page.keyboard.press(digit)


def ranking_groups(page) -> list[str]:
    return [li.inner_text().replace("\n", "").replace(" ", "") for li in page.locator("#ranking li").all()]


def test_rank_with_keyboard_flags_tie_next_item_logout_and_admin(browser, tmp_path):
    evil = "Explain <b>bold</b> and <script>alert(1)</script>"
    db = tmp_path / "labels.db"
    store = make_db(db, items=[{**it, "prompt": f"{evil} ({it['prompt']})"} for it in rank_items(3)],
                    overlap_share=1.0, overlap_labelers=2)
    store.next_assignment(store.user_by_name("alice")["id"])  # alice's first task: a rank item, claimed now
    store.add_items([parse_item({"prompt": "Write a haiku about the sea.", "suggestion": "Waves fold into foam"}, "t"),
                     parse_item({"prompt": "Name a prime.", "responses": ["7", "8", "nine", ""], "ranks": [0, 1, 1, 2]},
                                "gold", gold=True)], "more")
    bob = store.user_by_name("bob")["id"]
    while (aid := store.next_assignment(bob)) is not None:  # bob's labels, for the agreement table
        task = store.assignment(aid, bob)
        if task["kind"] == "rank":
            k = len(task["responses"])
            store.submit(task, {"ranks": list(range(k)), "scores": [7 - i for i in range(k)], "flags": [[]] * k})
        else:
            store.submit(task, {"messages": task["prompt"] + [{"role": "assistant", "content": "Blue"}]})
    server = Server(db, tmp_path / "server.log")
    try:
        page = new_page(browser, server.url)
        page.goto("/login")
        shot(page, "login")
        log_in(page, "alice")
        shot(page, "home")
        page.click("#continue")
        page.wait_for_selector("#rank-form")
        first_url = page.url
        assert page.locator(".prompt .content").first.inner_text().startswith(evil)  # shown as text
        letters = page.locator(".response").evaluate_all("els => els.map(e => e.dataset.letter)")
        indices = page.locator(".response").evaluate_all("els => els.map(e => Number(e.dataset.index))")
        k = len(letters)
        assert k == 4
        rank_by_keyboard(page, ["6", "4", "4", "2"])
        page.check(f"#resp-{letters[1]} input[value=opinion]")
        page.check(f"#resp-{letters[3]} input[value=hallucination]")
        page.check(f"#resp-{letters[3]} input[value=fails_instruction]")
        page.locator("body").click(position={"x": 5, "y": 5})
        page.keyboard.press("ArrowUp")  # back to the third response (the current one was the fourth)
        page.keyboard.press("t")  # tie the third with the second
        assert ranking_groups(page)[:2] == [letters[0], letters[1] + letters[2]]
        page.keyboard.press("ArrowDown")
        page.keyboard.press("u")  # the fourth moves above the tie ...
        assert ranking_groups(page)[1] == letters[3]
        page.keyboard.press("d")  # ... and back below it
        assert ranking_groups(page) == [letters[0], letters[1] + letters[2], letters[3]]
        shot(page, "rank", full_page=True)
        page.keyboard.press("Enter")
        page.wait_for_url(lambda url: url != first_url and "/task/" in url)
        page.wait_for_selector("#rank-form, #demo-form")  # the next item
        assert page.dialogs == []  # no script from the data ever ran
        con = sqlite3.connect(db)
        ranks, scores, flags = (json.loads(x) for x in con.execute(
            "SELECT l.ranks, l.scores, l.flags FROM labels l JOIN users u ON u.id = l.user_id "
            "WHERE u.name = 'alice'").fetchone())
        by_letter = dict(zip(letters, indices))
        assert ranks[by_letter[letters[0]]] == 0
        assert ranks[by_letter[letters[1]]] == ranks[by_letter[letters[2]]] == 1
        assert ranks[by_letter[letters[3]]] == 2
        assert scores[by_letter[letters[0]]] == 6 and scores[by_letter[letters[3]]] == 2
        assert flags[by_letter[letters[1]]] == ["opinion"] and flags[by_letter[letters[0]]] == []
        assert flags[by_letter[letters[3]]] == ["fails_instruction", "hallucination"]
        page.click("#logout")
        page.wait_for_selector("#login")
        assert page.goto("/").url.endswith("/login")
        admin = new_page(browser, server.url)
        log_in(admin, "admin")
        admin.goto("/admin")
        row = admin.locator("#agreement tr[data-labeler=alice]")
        assert row.locator("td.peers").inner_text().endswith("pairs)")  # alice vs bob on the item she ranked
        assert "%" in admin.locator("#agreement tr[data-labeler=bob] td.gold").inner_text()
        shot(admin, "admin")
    finally:
        server.stop()


def test_demonstration_from_suggestion_with_a_second_exchange(browser, tmp_path):
    db = tmp_path / "labels.db"
    store = make_db(db, items=[{"prompt": "Write a haiku about the sea.", "suggestion": "Waves fold into foam"}])
    server = Server(db, tmp_path / "server.log")
    try:
        page = new_page(browser, server.url)
        log_in(page, "alice")
        page.click("#continue")
        page.wait_for_selector("#demo-form")
        page.click("#use-suggestion")
        page.fill("#turn_0", page.input_value("#turn_0") + ", salt wind on the stones, gulls call the tide home.")
        page.click("#add-exchange")
        page.fill("#turn_1", "Another, about rain?")
        page.fill("#turn_2", "Rain taps the tin roof.")
        shot(page, "demonstration")
        page.keyboard.press("Control+Enter")
        page.wait_for_selector("#empty")
    finally:
        server.stop()
    (messages,) = [lab["messages"] for lab in store.labels()]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[1]["content"].startswith("Waves fold into foam, salt wind")
    assert messages[3]["content"] == "Rain taps the tin roof."
