"""Stage "world" -- the IFEval task world's prompt files (rlhf_kit/worlds/ifeval/world.py): shipped base tasks, each
with one or two verifiable instructions written by IFEval's own checkers; training prompts, held-out-task prompts and
held-out-type prompts as canonical prompt rows (``prompt`` + ``meta``) for the compare, ppo and eval stages.

    python recipes/world.py --config recipes/configs/smollm2-135m-ifeval/world.yaml
"""

from rlhf_kit.run.configs import WorldArguments, run_recipe, stage_parser


def main(args: WorldArguments):
    from rlhf_kit.integrations.training import setup_run
    from rlhf_kit.run.stage import StageRun
    from rlhf_kit.worlds.ifeval import world as ifeval

    setup_run(seed=args.seed)
    run = StageRun("world", args.output_dir, args.force)
    if run.skipped:
        return
    world = ifeval.build_world(args.train_types or ifeval.TRAIN_TYPES, args.heldout_types or ifeval.HELDOUT_TYPES,
                               args.seed, args.heldout_fraction, args.train_prompts_per_task,
                               args.eval_prompts_per_task, args.heldout_type_prompts_per_task, args.max_instructions,
                               probe_prompts=args.probe_prompts)
    run.start(args)
    run.finish(ifeval.write_world(args.output_dir, world))


def make_parser():
    """The stage's config parser (TRL's TrlParser over the dataclasses of its entry in rlhf_kit.core.stages); the
    same as `rlhf-kit world`."""
    return stage_parser("world")


if __name__ == "__main__":
    run_recipe(main, make_parser)
