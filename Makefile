# birdclef kit. `make help` lists the targets; README.md explains them.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
# pip on some machines warns about every missing local index folder: hide only those lines
QUIET_PIP := 2>&1 | sed -u '/is ignored: it is neither a file nor a directory/d'
.DEFAULT_GOAL := help

PYTHON      ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
# Exactly one ONNX Runtime build goes into the venv: the GPU one where nvidia-smi answers.
ORT         ?= $(if $(shell command -v nvidia-smi 2>/dev/null),onnxruntime-gpu,onnxruntime)
ORT_VERSION ?= 1.32.0
ORT_OTHER   := $(if $(filter onnxruntime-gpu,$(ORT)),onnxruntime,onnxruntime-gpu)

COMPETITION ?= birdclef-2024
DATA        ?= data/$(COMPETITION)
SAMPLE      ?= data/sample
MODELS      ?= simple_cnn resnet18 inception_v3
DENOISE     ?= none
SEED        ?= 0
RESUME      ?= 0
# GPUs for `make train`: more than 1 starts torchrun (DistributedDataParallel, one process per GPU)
GPUS        ?= 1
FOLDS       ?= 5
TRAIN_CMD   := $(if $(filter-out 0 1,$(GPUS)),$(VENV)/bin/torchrun --standalone --nproc_per_node=$(GPUS) -m train,$(PY) -m train)
# Extra flags per stage, e.g. TRAIN_ARGS="--epochs 30"
DATA_ARGS        ?=
PREPROCESS_ARGS  ?=
TRAIN_ARGS       ?=
EXPORT_ARGS      ?=
PACKAGE_ARGS     ?=
SCORE_ARGS       ?=
HOLDOUT_ARGS     ?=
UPLOAD_ARGS      ?=
PYTEST_ARGS      ?=

# A stage that needs DATA brings it in: the sample is generated, the competition downloaded
# (into a folder named after it, e.g. data/birdclef-2024, or where the user named COMPETITION). Any other
# missing folder is most likely a typo: the stage itself then says so instead of downloading.
COMPETITION_NAMED := $(filter command environment,$(firstword $(origin COMPETITION)))
# `make data` downloads COMPETITION where the user named it, else DATA's folder name where it is a
# BirdCLEF slug (data/birdclef-2025), else birdclef-2024
DATA_SLUG := $(filter birdclef-%,$(notdir $(abspath $(DATA))))
DOWNLOAD_COMPETITION := $(if $(COMPETITION_NAMED),$(COMPETITION),$(or $(DATA_SLUG),$(COMPETITION)))
DOWNLOADS_HERE := $(or $(COMPETITION_NAMED),$(DATA_SLUG),$(filter $(abspath data/$(COMPETITION)),$(abspath $(DATA))))
NEEDS_DATA := $(if $(wildcard $(DATA)/train_metadata.csv $(DATA)/train.csv),,$(if $(filter $(abspath $(SAMPLE)),$(abspath $(DATA))),sample,$(if $(DOWNLOADS_HERE),data,)))
# What `make train` trains, and what export and package train with when nothing is trained yet
# (passed to them as one shell word: TRAIN_ARGS's own single quotes escaped)
TRAIN_FLAGS = --models $(MODELS) --seed $(SEED) $(FEATURE_FLAGS) $(TRAIN_ARGS)
TRAIN_FLAGS_WORD = '$(subst ','\'',$(TRAIN_FLAGS))'
# A value make does not know would otherwise be dropped silently (features without the denoising asked for)
ifneq ($(filter-out none 0 no false 1 yes true spectral noisereduce,$(DENOISE)),)
$(error DENOISE=$(DENOISE): use none, spectral or noisereduce (1, yes or true: noisereduce))
endif
ifeq ($(shell [[ "$(GPUS)" =~ ^[0-9]+$$ ]] && echo ok),)
$(error GPUS=$(GPUS): give the number of GPUs to train on, e.g. GPUS=2 (1: a single process))
endif
FEATURE_FLAGS := $(if $(filter 1 yes true,$(DENOISE)),--denoise noisereduce,$(if $(filter spectral noisereduce,$(DENOISE)),--denoise $(DENOISE),))
# The competition the notebook attaches and the hold-out imitates: COMPETITION where the user set it,
# else DATA's folder name where it is a BirdCLEF slug (data/birdclef-2025), else birdclef-2024
# (data.layout.competition_of decides).
COMPETITION_ARG := $(if $(COMPETITION_NAMED),--competition $(COMPETITION),)
BENCH_ARGS  ?=
# bench-preprocess times DATA's audio where the user named DATA or it is there; else its default
# (../shared/realbirds when present, else a synthetic soundscape)
BENCH_DATA := $(if $(or $(filter command environment,$(firstword $(origin DATA))),$(wildcard $(DATA)/train_audio)),--data $(DATA),)
STAMP := $(VENV)/.installed-$(ORT)
# Free disk needed to build the venv (torch's CUDA build is 5.6 GB; pip needs room to unpack); checked first
VENV_NEEDS_BYTES ?= 8000000000

.PHONY: help venv data sample preprocess train export package score holdout demo test report \
        bench-preprocess bench-infer bench-train floor cv upload clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-17s %s\n", $$1, $$2}'
	@echo "  variables: DATA=$(DATA) MODELS='$(MODELS)' DENOISE=$(DENOISE) ORT=$(ORT)"

venv: $(STAMP)  ## create .venv with the pinned dependencies
$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m data.paths $(VENV) $(VENV_NEEDS_BYTES)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt $(QUIET_PIP)
	-$(PY) -m pip uninstall --quiet --yes $(ORT_OTHER) 2>/dev/null
	$(PY) -m pip install --quiet $(ORT)==$(ORT_VERSION) $(QUIET_PIP)
	@rm -f $(VENV)/.installed-*
	@touch $@

data: venv  ## download COMPETITION from Kaggle into DATA and check its layout
	$(PY) -m data.download --competition $(DOWNLOAD_COMPETITION) --out $(DATA) $(DATA_ARGS)

sample: venv  ## generate the embedded synthetic sample dataset into data/sample
	$(PY) -m data.synth --out $(SAMPLE) --seed $(SEED)

preprocess: venv $(NEEDS_DATA)  ## audio -> cached 5-s mel windows for DATA (resumable)
	$(PY) -m data.preprocess --data $(DATA) $(FEATURE_FLAGS) $(PREPROCESS_ARGS)

train: venv $(NEEDS_DATA)  ## train MODELS on DATA (preprocesses first when the cache is missing or stale)
	$(TRAIN_CMD) --data $(DATA) $(TRAIN_FLAGS) $(if $(filter 1 yes true,$(RESUME)),--resume,)

cv: venv $(NEEDS_DATA)  ## FOLDS-fold cross-validation of MODELS grouped by recording (the folds of `make floor`)
	$(TRAIN_CMD) --data $(DATA) --models $(MODELS) --seed $(SEED) $(FEATURE_FLAGS) --cv $(FOLDS) \
	    --holdout-fraction 0 $(if $(filter 1 yes true,$(RESUME)),--resume,) $(TRAIN_ARGS)

report: venv  ## compare every run on DATA
	$(PY) -m train.report --data $(DATA)

export: venv $(NEEDS_DATA)  ## best run by val ROC-AUC -> ONNX, checked against torch
	$(PY) -m export --data $(DATA) --train-args=$(TRAIN_FLAGS_WORD) $(EXPORT_ARGS)

package: venv $(NEEDS_DATA)  ## Kaggle notebook + dataset folder in submission/dist/
	$(PY) -m submission.package --data $(DATA) --train-args=$(TRAIN_FLAGS_WORD) $(COMPETITION_ARG) $(PACKAGE_ARGS)

upload: venv  ## create or version the Kaggle dataset, wait until it is ready, push the notebook
	$(PY) -m submission.upload $(UPLOAD_ARGS)

holdout: venv $(NEEDS_DATA)  ## labelled held-out soundscapes from withheld recordings of DATA
	$(PY) -m data.holdout --data $(DATA) --seed $(SEED) $(COMPETITION_ARG) $(HOLDOUT_ARGS)

score: package  ## run the packaged notebook on labelled soundscapes, print Kaggle's metric
	$(PY) -m submission.score --data $(DATA) $(COMPETITION_ARG) $(SCORE_ARGS)

bench-preprocess: venv  ## decode + denoise + mel speed per core for each denoise mode
	$(PY) -m bench.preprocess $(BENCH_DATA) $(BENCH_ARGS)

bench-infer: venv  ## the notebook's inference on synthetic soundscapes: time, memory, Kaggle projection
	$(PY) -m bench.infer --data $(DATA) $(BENCH_ARGS)

bench-train: venv $(NEEDS_DATA)  ## training samples/s from the cache vs the compute-only ceiling, per model
	$(PY) -m bench.train --data $(DATA) --models $(MODELS) $(BENCH_ARGS)

floor: venv $(NEEDS_DATA)  ## the non-deep floor: log-mel band stats + logistic regression, grouped FOLDS-fold CV
	$(PY) -m bench.floor --data $(DATA) --folds $(FOLDS) --seed $(SEED) $(BENCH_ARGS)

demo: venv  ## the whole pipeline on the embedded sample, in minutes, no GPU needed
	$(PY) -m data.synth --out $(SAMPLE) --seed $(SEED)
	$(MAKE) --no-print-directory DATA=$(SAMPLE) TRAIN_ARGS="--schedule demo $(TRAIN_ARGS)" \
	    PACKAGE_ARGS="--no-wheels $(PACKAGE_ARGS)" train export score
	$(PY) -m train.report --data $(SAMPLE)

test: venv  ## the test suite (installs .venv first)
	$(PY) -m pytest -q --durations=15 $(PYTEST_ARGS) tests

clean:  ## remove generated data, caches, runs and build outputs (keeps .venv, downloads and bench/out's results)
	rm -rf $(SAMPLE) data/sample_solution.csv data/cache data/holdout data/gpu train/runs export/out submission/dist submission/score
