# Every target installs what it needs first; a second run reuses the installed .venv.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PIP_VERSION := 26.3

SAMPLE_ROOT ?= data/sample
C4_ROOT ?= data/c4
C4_LOCAL_DIR ?=
C4_ARGS ?=
# `make shards INPUT="notes/ extra/*.jsonl.gz" OUT=data/mycorpus SHARDS_ARGS="--tokenizer data/mytok --chunk"`
INPUT ?=
SHARDS_ARGS ?=
# `make tokenizer INPUT=corpus/ OUT=tokenizers/mine TOKENIZER_ARGS="--vocab-size 30522 --compare bert-base-uncased"`
TOKENIZER_ARGS ?=
NOW := $(shell date +%Y%m%d-%H%M%S)
DEMO_RUN ?= demo-$(NOW)
# Extra `key=value` overrides for the demos, e.g. DEMO_ARGS="max_duration=2m" for a shorter demo.
DEMO_ARGS ?=
GLUE_DEMO_ARGS ?=
PYTEST_ARGS ?=
TEST_WORKERS ?= 2

GLUE_DEMO_ROOT ?= data/glue_demo
GLUE_DEMO_RUN ?= glue-demo-$(NOW)
FINETUNE_DEMO_ARGS ?=
EARLYBERT_RUN ?= earlybert-demo-$(NOW)
EARLYBERT_REPEATS ?= 3
EARLYBERT_DEMO_ARGS ?=
EARLYBERT_SEEDS := $(shell seq 17 $$((16 + $(EARLYBERT_REPEATS))))

# The Pareto demo's sweep folder: a second `make pareto-demo` resumes it (finished runs are kept).
PARETO_FOLDER ?= runs/sweeps/pareto-demo
# Extra `key=value` changes to yamls/sweeps/demo.yaml, e.g. PARETO_ARGS="grid.seed=[17]".
PARETO_ARGS ?=
# Options of benchmarks/throughput.py, e.g. BENCH_ARGS="--preset base --batch-size 8".
BENCH_ARGS ?=
# `make export`: the checkpoint (default: the newest `make demo` run's) and the folder to write
# (default: exported/<run name>); TOKENIZER names the tokenizer when no run record beside CKPT does.
CKPT ?= $(shell ls -td runs/demo-*/checkpoints/latest-rank0.pt 2>/dev/null | head -1)
# A checkpoint's run name (runs/<run>/checkpoints/<file>.pt), else the file or folder's own name.
OUT ?= exported/$(if $(findstring /checkpoints/,$(CKPT)),$(notdir $(patsubst %/checkpoints/,%,$(dir $(CKPT)))),$(basename $(notdir $(patsubst %/,%,$(CKPT)))))
TOKENIZER ?=
OVERWRITE ?=

GPU_CHECK_OUT ?= runs/gpu-check
GPU_CHECK_ARGS ?=
# What a GPU image with its own torch lacks: Composer, Streaming and transformers at this project's versions
# (transformers 4.53 checks its tokenizers and huggingface_hub versions on import) and their small
# dependencies (Composer imports mosaicml-cli, `mcli`, and with it gql, questionary and the rest; Streaming needs
# brotli, torch-optimizer pytorch-ranger). Versions as in requirements.lock, but zstd 1.5.6.2: 1.5.7.2 has no
# Python 3.12 wheel and 1.5.7.3 was withdrawn.
GPU_WHEELS := mosaicml==0.32.1 mosaicml-streaming==0.13.0 transformers==4.53.3 tokenizers==0.21.4 \
	huggingface_hub==0.36.2 coolname==2.2.0 torch-optimizer==0.3.0 catalogue==2.0.10 omegaconf==2.4.0 \
	antlr4-python3-runtime==4.13.2 python-snappy==0.7.3 cramjam==2.14.0 zstd==1.5.6.2 importlib_metadata==8.9.0 \
	mosaicml-cli==0.7.5 backoff==2.2.1 gql==3.5.3 graphql-core==3.2.6 websockets==11.0.3 ruamel.yaml==0.19.1 \
	questionary==2.0.1 prompt-toolkit==3.0.36 wcwidth==0.9.4 validators==0.36.0 brotli==1.2.1 pytorch-ranger==0.1.1
GPU_WHEEL_PLATFORMS := manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64

.PHONY: shards tokenizer install demo glue-demo finetune-demo earlybert-demo pareto-demo earlybert-remedies bench gpu-check gpu-wheels export time-to-quality test test-fast sample-shards c4-shards lock clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "need Python 3.11; set PYTHON=/path/to/python3.11"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "pip==$(PIP_VERSION)"
	$(PY) -m pip install --disable-pip-version-check --progress-bar off -c requirements.lock -e ".[test]"
	touch $@

# Offline corpus (Python stdlib docs) + WordPiece tokenizer; existing splits are kept.
sample-shards: $(SAMPLE_ROOT)/val_small/index.json
$(SAMPLE_ROOT)/val_small/index.json: | $(STAMP)
	$(PY) data_prep/convert_dataset.py sample --out-root $(SAMPLE_ROOT) --skip-existing

# C4 en from the hub (or C4_LOCAL_DIR=folder of json.gz files); re-running keeps finished splits.
c4-shards: $(STAMP)
	$(PY) data_prep/convert_dataset.py c4 --out-root $(C4_ROOT) --skip-existing \
		$(if $(C4_LOCAL_DIR),--local-dir $(C4_LOCAL_DIR)) $(C4_ARGS)

# Your own text (files, folders, globs, or SHARDS_ARGS="--hf-dataset NAME") -> MDS splits; existing splits are kept.
shards: $(STAMP)
	@test -n "$(INPUT)$(findstring --hf-dataset,$(SHARDS_ARGS))" || { echo "error: name the text: make shards INPUT='folder/ or files' OUT=data/mycorpus" >&2; exit 2; }
	@test -n "$(filter command line environment,$(origin OUT))" || { echo "error: name the dataset folder: make shards INPUT=... OUT=data/mycorpus" >&2; exit 2; }
	$(PY) data_prep/convert_dataset.py text $(if $(INPUT),--input $(INPUT)) --out-root $(OUT) $(if $(findstring --overwrite,$(SHARDS_ARGS)),,--skip-existing) $(SHARDS_ARGS)

# Your own tokenizer from your text (files, folders, globs, or TOKENIZER_ARGS="--hf-dataset NAME"); OUT must not exist.
tokenizer: $(STAMP)
	@test -n "$(INPUT)$(findstring --hf-dataset,$(TOKENIZER_ARGS))" || { echo "error: name the text: make tokenizer INPUT='folder/ or files' OUT=tokenizers/mine" >&2; exit 2; }
	@test -n "$(filter command line environment,$(origin OUT))" || { echo "error: name the tokenizer folder: make tokenizer INPUT=... OUT=tokenizers/mine" >&2; exit 2; }
	$(PY) data_prep/train_tokenizer.py $(if $(INPUT),--input $(INPUT)) --out $(OUT) $(TOKENIZER_ARGS)

# Trains for 5 minutes of training time on any CPU (yamls/demo.yaml: max_duration: 5m; a slower CPU
# trains fewer batches), plus start-up and evaluations. Each run gets its own folder under runs/.
demo: $(STAMP) sample-shards
	$(VENV)/bin/composer src/main.py yamls/demo.yaml run_name=$(DEMO_RUN) $(DEMO_ARGS)

# Fine-tunes the newest `make demo` checkpoint (running the demo first if there is none) on
# generated GLUE-format tasks, offline, with the paper protocol's two rounds.
# Shell lines that set $ckpt to the newest `make demo` checkpoint, running the demo first if there is none.
DEMO_CHECKPOINT = ckpt=$$(ls -td runs/demo-*/checkpoints/latest-rank0.pt 2>/dev/null | head -1); \
	if [ -z "$$ckpt" ]; then $(MAKE) demo DEMO_ARGS='$(DEMO_ARGS)' && ckpt=$$(ls -td runs/demo-*/checkpoints/latest-rank0.pt | head -1); fi; \
	echo "fine-tuning $$ckpt"

glue-demo: $(STAMP) sample-shards $(GLUE_DEMO_ROOT)/RTE/dev.tsv
	@$(DEMO_CHECKPOINT); \
	$(PY) src/glue.py yamls/glue/demo.yaml starting_checkpoint=$$ckpt data_local=$(GLUE_DEMO_ROOT) run_name=$(GLUE_DEMO_RUN) $(GLUE_DEMO_ARGS)

$(GLUE_DEMO_ROOT)/RTE/dev.tsv: | $(STAMP) sample-shards
	$(PY) data_prep/glue_demo_tasks.py --out $(GLUE_DEMO_ROOT)

# Your own tasks, offline: the newest `make demo` checkpoint fine-tuned on a generated topic
# classification task (CSV) and a named-entity task (CoNLL), as yamls/finetune/*.yaml define them.
finetune-demo: $(STAMP) sample-shards data/finetune_demo/ner/dev.conll
	@$(DEMO_CHECKPOINT); \
	$(PY) src/glue.py yamls/finetune/topic.yaml starting_checkpoint=$$ckpt run_name=finetune-topic-$(NOW) $(FINETUNE_DEMO_ARGS) && \
	$(PY) src/glue.py yamls/finetune/ner.yaml starting_checkpoint=$$ckpt run_name=finetune-ner-$(NOW) $(FINETUNE_DEMO_ARGS)

data/finetune_demo/ner/dev.conll: | $(STAMP) sample-shards
	$(PY) data_prep/finetune_demo_tasks.py --out data/finetune_demo

# EarlyBERT at CPU scale: an unpruned baseline and a search-prune-train run of the same length on the
# same data and seed, then their training time and MLM accuracy side by side. EARLYBERT_REPEATS=3
# repeats the pair with seeds 17, 18, 19, interleaved (baseline 17, EarlyBERT 17, baseline 18, ...) so
# a busy spell of a shared machine hits both arms, and reports mean and spread over the pairs.
# EARLYBERT_DEMO_ARGS are composer overrides for both arms (CI: EARLYBERT_DEMO_ARGS="max_duration=...").
earlybert-demo: $(STAMP) sample-shards
	$(foreach seed,$(EARLYBERT_SEEDS),\
	$(VENV)/bin/composer src/main.py yamls/earlybert/demo.yaml run_name=$(EARLYBERT_RUN)-seed$(seed)-baseline seed=$(seed) algorithms=null $(EARLYBERT_DEMO_ARGS) && \
	$(VENV)/bin/composer src/main.py yamls/earlybert/demo.yaml run_name=$(EARLYBERT_RUN)-seed$(seed) seed=$(seed) $(EARLYBERT_DEMO_ARGS) && )\
	$(PY) src/compare_runs.py $(foreach seed,$(EARLYBERT_SEEDS),runs/$(EARLYBERT_RUN)-seed$(seed)-baseline runs/$(EARLYBERT_RUN)-seed$(seed))

# MosaicBERT against a Hugging Face BERT of the same size, same tokens, two seeds each, on this
# machine's CPU: held-out MLM accuracy of every checkpoint against training wall clock, with each
# model's Pareto frontier (results.csv, results.json, pareto.png in PARETO_FOLDER).
pareto-demo: $(STAMP) sample-shards
	$(PY) src/sweep.py yamls/sweeps/demo.yaml --launcher local folder=$(PARETO_FOLDER) $(PARETO_ARGS)

# Time to quality (docs/time-to-quality.md): each model's learning rate tuned at the middle budget, then
# MosaicBERT, a Hugging Face BERT and EarlyBERT each trained to 1.5, 3 and 6 minute budgets, 3 seeds, on this
# machine's CPU; time to target accuracies with bootstrap intervals in TTQ_FOLDER. A second run continues.
TTQ_FOLDER ?= runs/sweeps/time-to-quality
# Options and `key=value` changes of the study, e.g. TTQ_ARGS="--no-tuning grid.seed=[17]".
TTQ_ARGS ?=
time-to-quality: $(STAMP) sample-shards
	$(PY) src/time_to_quality.py yamls/sweeps/time-to-quality.yaml folder=$(TTQ_FOLDER) $(TTQ_ARGS)

# EarlyBERT's remedies (docs/time-to-quality.md): two-phase pilot searches with the study's EarlyBERT settings
# (seed 17, the 3-minute schedule), one at its ratios whose ticket `earlybert-reused` trains, one at half ratios for
# `earlybert-half-reused`; then MosaicBERT beside the remedies of yamls/sweeps/time-to-quality.yaml at 1.5 and 3
# minutes, seed 17, at the tuned rate (1e-3). A pilot runs once (delete runs/<pilot> after changing its settings);
# it keeps no checkpoints, so one that died starts again, and one that drew no ticket stops here.
EARLYBERT_PILOT := {mode: two_phase, head_prune_ratio: 0.3333333, unit_prune_ratio: 0.3, l1_heads: 1.0e-4, \
	l1_units: 1.0e-4, check_interval: 5, window: 5, epsilon: 0.1, min_search_steps: 40, max_search_steps: 150, \
	min_units_per_layer: 64}
HALF_RATIOS := algorithms.earlybert.head_prune_ratio=0.5 algorithms.earlybert.unit_prune_ratio=0.5
# $(call pilot,RUN_NAME,KEY=VALUE ...): the pilot search RUN_NAME, the study's settings changed by the key=values.
pilot = test -f runs/$(1)/ticket.json || { $(PY) src/main.py yamls/demo.yaml run_name=$(1) seed=17 max_duration=3m \
	eval_loader=null progress_bar=false save_folder=null 'algorithms={earlybert: $(EARLYBERT_PILOT)}' $(2) && \
	{ test -f runs/$(1)/ticket.json || { echo "error: the pilot search $(1) drew no ticket within its 3 minutes" >&2; false; }; }; }
REMEDIES_FOLDER ?= runs/sweeps/earlybert-remedies
REMEDIES_ARGS ?=
earlybert-remedies: $(STAMP) sample-shards
	$(call pilot,earlybert-pilot,)
	$(call pilot,earlybert-pilot-half,$(HALF_RATIOS))
	$(PY) src/time_to_quality.py yamls/sweeps/time-to-quality.yaml --no-tuning folder=$(REMEDIES_FOLDER) \
		'grid.model=[mosaicbert,earlybert-short-search,earlybert-half,earlybert-reused,earlybert-half-reused]' \
		'grid.seed=[17]' 'grid.max_duration=[1.5m,3m]' $(REMEDIES_ARGS)

# Training-step throughput of MosaicBERT, BertForMaskedLM (SDPA) and ModernBertForMaskedLM side by side
# on this machine (its GPU when there is one) at the offline corpus's real padding and at none: a table,
# results.json, a bar chart and per-op profiles in runs/bench/<time>/ (docs/benchmarks.md).
bench: $(STAMP) sample-shards
	$(PY) benchmarks/throughput.py $(BENCH_ARGS)

# On a CUDA machine: the GPU tests, agreement of the attention kernels and 200 bf16 training steps of each
# model, in one command (docs/benchmarks.md, "GPU check"); elsewhere one line and nothing measured. No `install`
# first: on a GPU image without network it runs on the image's torch with the wheels of `make gpu-wheels`.
gpu-check:
	GPU_CHECK_OUT=$(GPU_CHECK_OUT) benchmarks/gpu_check.sh $(GPU_CHECK_ARGS)

# This project's packages (not torch) as Python 3.12 wheels in .whl/, for `make gpu-check` on a GPU image
# without network, installed there over the image's own torch without dependencies.
gpu-wheels:
	$(PYTHON) -m pip download --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp $(foreach p,$(GPU_WHEEL_PLATFORMS),--platform $(p)) -d .whl $(GPU_WHEELS)

# A checkpoint (or fine-tuned model folder) as a Hugging Face folder that loads with plain transformers
# (trust_remote_code=True), checked for logit parity in a separate process first (docs/export.md).
export: $(STAMP)
	@test -n "$(CKPT)" || { echo "error: no checkpoint to export: run \`make demo\` first or set CKPT=runs/<run>/checkpoints/<file>.pt" >&2; exit 2; }
	$(PY) src/export.py $(CKPT) $(OUT) $(if $(TOKENIZER),--tokenizer $(TOKENIZER)) $(if $(OVERWRITE),--overwrite)

# The whole suite (CI's command), on TEST_WORKERS processes (pytest-xdist). A test file stays on one
# worker, so a module's fixtures (the test Slurm cluster, a shared straight run) start once. Tests marked
# `serial` compare machine-wide state, which the other worker would change: they run alone afterwards
# (exit status 5 is pytest's "no test selected", when PYTEST_ARGS picks none of them).
test: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not serial" $(PYTEST_ARGS)
	$(PY) -m pytest -m serial $(PYTEST_ARGS) || [ $$? -eq 5 ]

# The suite without the `slow` end-to-end tests (training runs, CLIs in subprocesses, Slurm): a quick check.
# (PYTEST_ARGS adds options such as -x or -k; a -m there would replace these selections.)
test-fast: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not slow and not serial" $(PYTEST_ARGS)
	$(PY) -m pytest -m "serial and not slow" $(PYTEST_ARGS) || [ $$? -eq 5 ]

# Re-resolve the pinned stack from pyproject.toml in a scratch venv and rewrite requirements.lock.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet "pip==$(PIP_VERSION)" && .lock-venv/bin/pip install --quiet -e ".[test]"
	{ echo "# Exact versions of the tested stack (pip freeze on Python 3.11, Linux x86_64)."; \
	  echo "# \`make install\` installs the package with these as constraints; regenerate with \`make lock\`."; \
	  .lock-venv/bin/pip freeze --exclude-editable; } > requirements.lock
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) .pytest_cache
