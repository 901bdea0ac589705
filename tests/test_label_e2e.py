"""End to end with people in the loop: compare (labeler: human) queues the tiny SFT model's samples, a labeler ranks
20 items in the browser, the export trains the reward stage K-wise as it is."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

from label_helpers import PASSWORD, REPO, Server, write_jsonl
from test_label_browser import browser, log_in, new_page, rank_by_keyboard  # noqa: F401 - browser is a fixture

from conftest import TINY, config_args, run_cli, stage_paths

N_ITEMS = 20


def label_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "rlhf_kit.cli", "label", *args], cwd=REPO, capture_output=True,
                          text=True, input=stdin)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_compare_human_label_in_browser_export_train_reward(pipeline, browser, tmp_path):  # noqa: F811
    prompts = [json.loads(line) for line in (pipeline / "data" / "prompts.jsonl").read_text().splitlines()]
    prompts_file = write_jsonl(tmp_path / "prompts.jsonl", prompts[:N_ITEMS])
    db = tmp_path / "labels.db"
    compare = run_cli("compare", config_args("compare") + stage_paths(pipeline, "compare") + TINY["compare"] + [
        "--dataset_path", str(prompts_file), "--output_dir", str(tmp_path / "compare"),
        "--labeler", "human", "--label_db", str(db)])
    assert compare.returncode == 0, compare.stderr[-3000:]
    assert f"queued {N_ITEMS}" in compare.stdout
    assert not (tmp_path / "compare" / "rankings.jsonl").exists()  # nobody ranked them yet
    label_cli("add-user", "carol", "--db", str(db), stdin=PASSWORD + "\n")
    demo_db = tmp_path / "demos.db"  # demonstration tasks with a suggestion written by the SFT policy
    demo_file = write_jsonl(tmp_path / "demo.jsonl", [{"prompt": p["prompt"]} for p in prompts[:2]])
    label_cli("import", str(demo_file), "--db", str(demo_db), "--suggest-from", str(pipeline / "runs" / "sft"))
    suggestions = [r[0] for r in sqlite3.connect(demo_db).execute("SELECT suggestion FROM items")]
    assert len(suggestions) == 2 and all(isinstance(s, str) for s in suggestions)
    server = Server(db, tmp_path / "server.log")
    try:
        page = new_page(browser, server.url)
        log_in(page, "carol")
        page.click("#continue")
        for _ in range(N_ITEMS):
            url = page.url
            rank_by_keyboard(page, ["7", "5", "3", "1"])
            page.keyboard.press("s")  # ranking from the ratings
            page.keyboard.press("Enter")
            page.wait_for_url(lambda u, url=url: u != url)
        page.wait_for_selector("#empty")
    finally:
        server.stop()
    export = tmp_path / "labels"
    out = label_cli("export", "--db", str(db), "--output-dir", str(export), "--heldout-fraction", "0.2").stdout
    assert "rank_labels 20" in out and "prompts_train 16" in out and "prompts_heldout 4" in out
    rows = [json.loads(line) for line in (export / "rankings.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and all(r["labeler"] == "carol" and sorted(r["scores"]) == [1, 3, 5, 7] for r in rows)
    reward_dir = tmp_path / "reward"
    reward = run_cli("reward", config_args("reward") + stage_paths(pipeline, "reward") + TINY["reward"] + [
        "--dataset_path", str(export / "rankings.jsonl"), "--eval_dataset_path", str(export / "rankings_heldout.jsonl"),
        "--output_dir", str(reward_dir), "--max_steps", "2"])
    assert reward.returncode == 0, reward.stderr[-3000:]
    marker = json.loads((reward_dir / "stage_complete.json").read_text())
    assert marker["rows"] == 16 and marker["ranking_loss"] == "kwise"
    assert "rows 16" in reward.stdout
