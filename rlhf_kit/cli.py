"""``rlhf-kit`` command line: tools around the recipes.

    rlhf-kit push runs/demo/sft user/tiny-sft [--adapter-only] [--dry-run]
"""

from __future__ import annotations

import argparse

from rlhf_kit.errors import exit_on_user_error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlhf-kit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    push = sub.add_parser("push", help="export a finished stage with a model card and upload it to the Hub")
    push.add_argument("stage_dir", help="a finished stage folder, e.g. runs/demo/ppo")
    push.add_argument("hub_id", help="owner/name of the Hub repository")
    push.add_argument("--adapter-only", action="store_true", help="upload the LoRA adapter instead of the merged model")
    push.add_argument("--dry-run", action="store_true", help="write the folder that would be uploaded; upload nothing")
    push.add_argument("--export-dir", default=None, help="where the export goes (default: <stage_dir>/export)")
    push.add_argument("--private", action="store_true", help="create the repository as private")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "push":
        from rlhf_kit.hub import push_stage

        exit_on_user_error(lambda: push_stage(args.stage_dir, args.hub_id, args.adapter_only, args.dry_run,
                                              args.export_dir, args.private))


if __name__ == "__main__":
    main()
