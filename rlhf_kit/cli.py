"""``rlhf-kit`` command line: the recipes as subcommands, and tools around them.

    rlhf-kit demo                                  every demo stage, in ./runs/demo (installed or in a checkout)
    rlhf-kit sft --config recipes/configs/demo/sft.yaml [--key value ...]   (import, world, demos, base, sft,
                                                                              compare, reward, ppo, eval)
    rlhf-kit rounds --config recipes/configs/demo/rounds.yaml [--rounds 3]   RLHF rounds (recipes/rounds.py)
    rlhf-kit push runs/demo/sft user/tiny-sft [--adapter-only] [--dry-run]
    rlhf-kit data validate hh_rlhf [--data-dir DIR] [--split train]
    rlhf-kit data preview oasst1 --stage comparisons -n 3
    rlhf-kit label serve|import|export|add-user ...   (see rlhf_kit/label/cli.py)
"""

from __future__ import annotations

import argparse

from rlhf_kit.core.errors import exit_on_user_error
from rlhf_kit.core.stages import DEMO, STAGES, table
from rlhf_kit.label import cli as label_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlhf-kit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for stage, entry in STAGES.items():
        sub.add_parser(stage, help=f"{entry.does} (`rlhf-kit {stage} --help` lists its options)")
    sub.add_parser("stages", help="every stage: what it does, reads and writes (also `make help`)")
    sub.add_parser("rounds", help="RLHF rounds: compare, reward, ppo, eval, several times (`rlhf-kit rounds --help`)")
    demo = sub.add_parser("demo", help="run every demo stage with the shipped configs (outputs in ./runs/demo)")
    demo.add_argument("--accelerate-config", default=None, help="accelerate YAML for the training stages")
    push = sub.add_parser("push", help="export a finished stage with a model card and upload it to the Hub")
    push.add_argument("stage_dir", help="a finished stage folder, e.g. runs/demo/ppo")
    push.add_argument("hub_id", help="owner/name of the Hub repository")
    push.add_argument("--adapter-only", action="store_true", help="upload the LoRA adapter instead of the merged model")
    push.add_argument("--dry-run", action="store_true", help="write the folder that would be uploaded; upload nothing")
    push.add_argument("--export-dir", default=None, help="where the export goes (default: <stage_dir>/export)")
    push.add_argument("--private", action="store_true", help="create the repository as private")
    data = sub.add_parser("data", help="data cards: validate or preview")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    validate = data_sub.add_parser("validate", help="check a card; count rows kept and dropped by reason, per stage")
    preview = data_sub.add_parser("preview", help="print a card's first canonical rows")
    for p in (validate, preview):
        p.add_argument("card", help="a card name (data_cards/<name>.md) or path")
        p.add_argument("--split", default=None, help="split to read (default: the card's first)")
        p.add_argument("--stage", default=None, help="sft, comparisons or prompts (default: every stage it serves)")
        p.add_argument("--data-dir", default=None, help="local copies as <dir>/<card>/<split>.jsonl (offline)")
    preview.add_argument("-n", type=int, default=3, help="rows to print")
    label_cli.add_parser(sub)
    return parser


def data_command(args) -> None:
    """``rlhf-kit data validate|preview``: one block per stage the card serves."""
    import json

    import datasets

    from rlhf_kit.data.cards import canonical_rows, load_card

    datasets.disable_progress_bars()
    card = load_card(args.card)
    split = args.split or card.splits[0]
    source = card.source.get("hub_id") or card.source.get("files")
    if args.data_dir:
        source = f"{source} (local copy in {args.data_dir}/{card.name})"
    print(f"card {card.name}: {source}, revision {card.source.get('revision', 'local')}, license {card.license}")
    for stage in [args.stage] if args.stage else card.stages:
        rows, dropped, read = canonical_rows(card, stage, split, args.data_dir)
        if args.data_command == "validate":
            reasons = ", ".join(f"{n} {r}" for r, n in sorted(dropped.items())) or "none"
            print(f"  {stage:<12} split {split}: {read} rows read, {len(rows)} kept, "
                  f"{sum(dropped.values())} dropped ({reasons})")
        else:
            print(f"--- {stage} ({len(rows)} rows from split {split})")
            for row in rows[: args.n]:
                print(json.dumps(row, ensure_ascii=False))


RECIPES = (*STAGES, "rounds")  # `rlhf-kit <recipe> --config ...`: every stage, and rounds of them


def load_recipe(stage: str):
    """A stage's recipe module (``recipes/<stage>.py``, shipped in the package as ``rlhf_kit/recipes``)."""
    import importlib.util

    from rlhf_kit.core.paths import recipe_path

    spec = importlib.util.spec_from_file_location(f"rlhf_kit_recipe_{stage}", recipe_path(stage))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def demo_command(accelerate_config: str | None = None) -> int:
    """Every stage of the demo with its shipped configs, in order, in the current folder (outputs in runs/demo).

    The same as ``make demo``: training stages go through accelerate (the shipped ``cpu.yaml`` unless another
    config is given), each stage in its own process; a finished stage is skipped, so a rerun continues.
    """
    import subprocess
    import sys

    from rlhf_kit.core.paths import demo_config
    from rlhf_kit.run.launch import stage_command

    for stage in DEMO:
        code = subprocess.call(stage_command(stage, str(demo_config(stage)), [], accelerate_config))
        if code:
            print(f"error: the demo stopped at the {stage} stage (exit {code}); fix what it printed and rerun "
                  "`rlhf-kit demo` to continue", file=sys.stderr)
            return code
    return 0


def main(argv: list[str] | None = None) -> None:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in RECIPES:  # `rlhf-kit sft --config ...`: the recipe's own parser takes the rest
        from rlhf_kit import defer_bitsandbytes

        defer_bitsandbytes()  # before the recipe imports peft: as `python recipes/<stage>.py` does
        from rlhf_kit.run.configs import run_recipe

        sys.argv[0] = f"rlhf-kit {argv[0]}"  # usage lines name the subcommand
        recipe = load_recipe(argv[0])
        run_recipe(recipe.main, recipe.make_parser, argv[1:])
        return
    args = build_parser().parse_args(argv)
    if args.command == "stages":
        print(table())
    if args.command == "demo":
        sys.exit(demo_command(args.accelerate_config))
    if args.command == "data":
        exit_on_user_error(lambda: data_command(args))
    if args.command == "label":
        exit_on_user_error(lambda: label_cli.label_command(args))
    if args.command == "push":
        from rlhf_kit.run.hub import push_stage

        exit_on_user_error(lambda: push_stage(args.stage_dir, args.hub_id, args.adapter_only, args.dry_run,
                                              args.export_dir, args.private))


if __name__ == "__main__":
    main()
