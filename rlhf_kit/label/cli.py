"""``rlhf-kit label ...``: accounts, import, serve, export (wired into ``rlhf_kit.cli``).

    rlhf-kit label add-user alice [--admin] [--db runs/labels/labels.db]   # password from the prompt or stdin
    rlhf-kit label import prompts.jsonl [--gold] [--overlap-share 0.2 --overlap-labelers 3] [--suggest-from MODEL]
    rlhf-kit label serve [--host 127.0.0.1 --port 8000]
    rlhf-kit label export --output-dir runs/demo/labels [--merge mean-rank|none] [--heldout-fraction 0.1]
"""

from __future__ import annotations

import argparse
import sys

from rlhf_kit.core.errors import UserError

DEFAULT_DB = "runs/labels/labels.db"


def add_parser(sub) -> None:
    """Add the ``label`` command and its subcommands to the ``rlhf-kit`` parser."""
    label = sub.add_parser("label", help="human labeling web app: accounts, import, serve, export")
    label_sub = label.add_subparsers(dest="label_command", required=True)
    user = label_sub.add_parser("add-user", help="create a labeler (or admin) account")
    user.add_argument("name")
    user.add_argument("--admin", action="store_true", help="may see the admin page")
    user.add_argument("--reset-password", action="store_true", help="set a new password for an existing user")
    imp = label_sub.add_parser("import", help="queue rank tasks (prompt + responses) or demonstrations (prompt)")
    imp.add_argument("file", help="JSON Lines: {prompt, responses[, ranks]} or {prompt[, suggestion]} per line")
    imp.add_argument("--gold", action="store_true", help="rows carry their known `ranks`; every labeler gets them")
    imp.add_argument("--overlap-share", type=float, default=None, help="share of items given to several labelers")
    imp.add_argument("--overlap-labelers", type=int, default=None, help="labelers per overlapping item")
    imp.add_argument("--suggest-from", default=None, help="a policy (e.g. runs/demo/sft) that writes a suggestion "
                                                          "for each demonstration task without one")
    imp.add_argument("--seed", type=int, default=0)
    serve = label_sub.add_parser("serve", help="run the web app")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (put TLS in front for a network)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--https-only", action="store_true", help="session cookie only over HTTPS (behind TLS)")
    export = label_sub.add_parser("export", help="write ranking rows, SFT rows and data cards")
    export.add_argument("--output-dir", required=True)
    export.add_argument("--merge", default="mean-rank", choices=["mean-rank", "none"],
                        help="items several labelers ranked: mean rank (default) or one row per label")
    export.add_argument("--heldout-fraction", type=float, default=0.0, help="share of prompts kept for RM eval")
    export.add_argument("--seed", type=int, default=0)
    for p in (user, imp, serve, export):
        p.add_argument("--db", default=DEFAULT_DB, help=f"the label database (default {DEFAULT_DB})")


def read_password(name: str) -> str:
    """A new password: typed twice at a terminal, else the first line of standard input."""
    if sys.stdin.isatty():
        import getpass

        first = getpass.getpass(f"password for {name}: ")
        if first != getpass.getpass("again: "):
            raise UserError("the two passwords differ; run the command again")
    else:
        first = sys.stdin.readline().rstrip("\n")
    if len(first) < 8:
        raise UserError("the password needs at least 8 characters; pipe or type a longer one")
    return first


def add_suggestions(items: list[dict], model_path: str, seed: int) -> None:
    """Sample one suggestion from ``model_path`` for each demonstration task that has none."""
    from rlhf_kit.core import runs
    from rlhf_kit.integrations import modeling
    from rlhf_kit.sampling.generation import sample_responses

    todo = [it for it in items if it["kind"] == "demo" and not it.get("suggestion")]
    if not todo:
        return
    runs.require_stage_output(model_path, "policy")
    tokenizer = modeling.load_tokenizer(model_path)
    model = modeling.load_causal_lm(model_path, what="policy")
    for item, (text,) in zip(todo, sample_responses(model, tokenizer, [it["prompt"] for it in todo], seed=seed)):
        item["suggestion"] = text


def label_command(args: argparse.Namespace) -> None:
    """Run one ``rlhf-kit label`` subcommand."""
    from rlhf_kit.label.store import Store

    cmd = args.label_command
    if cmd == "add-user":
        from pathlib import Path

        from rlhf_kit.label.security import hash_password

        if Path(args.db).is_file() and Store(args.db).user_by_name(args.name) and not args.reset_password:
            raise UserError(f"user {args.name} already exists; pass --reset-password to set a new password")
        password_hash = hash_password(read_password(args.name))  # before the database exists: no empty file on error
        Store(args.db).add_user(args.name, password_hash, args.admin, replace=args.reset_password)
        print(f"{'admin' if args.admin else 'labeler'} {args.name} saved in {args.db}")
    elif cmd == "import":
        from rlhf_kit.label.tasks import read_items

        items = read_items(args.file, args.gold)
        if args.suggest_from:
            add_suggestions(items, args.suggest_from, args.seed)
        store = Store(args.db)
        configure_overlap(store, args.overlap_share, args.overlap_labelers)
        added, known = store.add_items(items, args.file, args.seed)
        kinds = {k: sum(it["kind"] == k for it in items) for k in ("rank", "demo")}
        print(f"queued {added} items ({kinds['rank']} rank, {kinds['demo']} demonstration"
              f"{', gold' if args.gold else ''}) in {args.db}; {known} were already queued")
    elif cmd == "serve":
        import uvicorn

        from rlhf_kit.label.app import build_app

        app = build_app(args.db, https_only=args.https_only)
        print(f"labeling at http://{args.host}:{args.port}/ (database {args.db}); Ctrl+C stops it")
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    elif cmd == "export":
        from rlhf_kit.label.export import export_labels

        if not 0 <= args.heldout_fraction < 1:
            raise UserError("--heldout-fraction must be at least 0 and below 1")
        counts = export_labels(args.db, args.output_dir, args.merge, args.heldout_fraction, args.seed)
        print("exported " + ", ".join(f"{k} {v}" for k, v in counts.items()) + f" -> {args.output_dir}")


def configure_overlap(store, share: float | None, labelers: int | None) -> None:
    """Set the queue's overlap (kept in the database, so later imports and `labeler: human` use it too)."""
    if share is not None:
        if not 0 <= share <= 1:
            raise UserError(f"--overlap-share {share} must be between 0 and 1")
        store.set_setting("overlap_share", str(share))
    if labelers is not None:
        if labelers < 2:
            raise UserError(f"--overlap-labelers {labelers} must be at least 2 (one labeler is no overlap)")
        store.set_setting("overlap_labelers", str(labelers))
