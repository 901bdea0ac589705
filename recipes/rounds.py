"""RLHF rounds -- "We performed several iterations of this process" (OpenAI, ChatGPT): after SFT, R rounds of
compare (fresh samples from the latest policy) -> reward (retrained from SFT on every round's comparisons) -> PPO
(from the latest policy, KL to SFT) -> eval, under ``<run_dir>/round-<r>/<stage>/``. Rerun the same command after
a kill to continue at the first unfinished stage. See rlhf_kit/run/rounds.py.

    python recipes/rounds.py --config recipes/configs/demo/rounds.yaml --rounds 3 [--seed 1 --run_dir runs/rounds-s1]
"""

from rlhf_kit.run.configs import RoundsArguments, make_stage_parser, run_recipe


def main(args: RoundsArguments):
    import sys

    from rlhf_kit.run.rounds import run_rounds

    code = run_rounds(args)
    if code:
        sys.exit(code)


def make_parser():
    """The recipe's config parser (TRL's TrlParser over its dataclass); the same as `rlhf-kit rounds`."""
    return make_stage_parser((RoundsArguments,))


if __name__ == "__main__":
    run_recipe(main, make_parser)
