#!/usr/bin/env bash
# The alignment tax of PPO in the demo world, and the adaptive KL controller (issue 11): plain PPO (runs/demo, from
# `make demo`) against PPO-ptx with gamma 0.1 and 0.25 on the SFT demonstrations, and against adaptive KL with
# target 1.0 nats per response; then perplexity on held-out demonstrations, gold score and final KL of each.
#
#     make demo && make bench-alignment-tax
set -euo pipefail
LAUNCH="${PYTHON:-python3} -m rlhf_kit.run.launch --config_file recipes/accelerate/cpu.yaml"
variant() {
  local name=$1; shift
  mkdir -p "runs/$name"
  for stage in base sft compare reward; do ln -sfn "../demo/$stage" "runs/$name/$stage"; done
  $LAUNCH recipes/ppo.py --config recipes/configs/demo/ppo.yaml --output_dir "runs/$name/ppo" "$@"
  ${PYTHON:-python3} recipes/eval.py --config recipes/configs/demo/eval.yaml --run_dir "runs/$name"
}
variant demo_ptx010 --ptx_coef 0.1 --ptx_dataset runs/demo/sft
variant demo_ptx025 --ptx_coef 0.25 --ptx_dataset runs/demo/sft
variant demo_adaptive_kl --kl_target 1.0 --kl_horizon 256
${PYTHON:-python3} benchmarks/ppo_alignment_tax.py runs/demo runs/demo_ptx010 runs/demo_ptx025 runs/demo_adaptive_kl
