# quantpipe — one target per stage; `make demo` and `make test` work on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
QP := $(BIN)/quantpipe
STAMP := $(VENV)/.installed-stamp
SERVE_VENV := .venv-serve
SERVE_STAMP := $(SERVE_VENV)/.installed-stamp

# Stage variables: make export MODEL=cifar10-resnet20 WEIGHTS=path DATA=cifar10:path
MODEL ?= fmnist-cnn
DATA ?= fashion-mnist
WEIGHTS ?=
RUN ?=
SPLIT ?= test
BACKEND ?= onnxruntime-cpu
EXTRA ?=
RUNS_DIR ?= runs
STAGE_ARGS = --model $(MODEL) $(if $(WEIGHTS),--weights $(WEIGHTS)) $(if $(RUN),--run $(RUN)) $(EXTRA)

.PHONY: setup demo test lint unit integration train export eval btc calibrate ptq qat mixed engines triton bench-run report bench bench-btc bench-btc-stage bench-ptq bench-models bench-engines bench-pareto bench-serve bench-reliability zoo docker models datasets backends clean

setup: $(STAMP) $(SERVE_STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	scripts/install-fashion-mnist.sh
	scripts/install-container-tools.sh
	touch $@

# The serving environment: Triton (nvidia-pytriton) needs numpy < 2, the pipeline numpy 2.
$(SERVE_STAMP): pyproject.toml requirements-serve.txt
	$(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/pip install -q --upgrade pip
	$(SERVE_VENV)/bin/pip install -q -r requirements-serve.txt
	$(SERVE_VENV)/bin/pip install -q --no-deps -e .
	touch $@

demo: setup
	$(QP) run --runs-dir $(RUNS_DIR)

lint: setup
	$(BIN)/ruff check quantpipe tests
	$(BIN)/ruff format --check quantpipe tests
	$(BIN)/mypy quantpipe
	$(BIN)/hadolint docker/Dockerfile.cpu docker/Dockerfile.gpu

test: lint
	$(BIN)/python -m pytest -q tests

unit: setup
	$(BIN)/python -m pytest -q tests/unit

integration: setup
	$(BIN)/python -m pytest -q tests/integration

train: setup
	$(QP) train $(STAGE_ARGS) --data $(DATA)

export: setup
	$(QP) export $(STAGE_ARGS) $(if $(DATA),--data $(DATA))

eval: setup
	$(QP) eval $(STAGE_ARGS) --data $(DATA) --split $(SPLIT) --backend $(BACKEND)

btc: setup
	$(QP) btc $(STAGE_ARGS) --data $(DATA)

calibrate: setup
	$(QP) calibrate $(if $(RUN),--run $(RUN)) --data $(DATA) $(EXTRA)

ptq: setup
	$(QP) ptq $(if $(RUN),--run $(RUN)) --data $(DATA) $(EXTRA)

# QAT on one process; data-parallel: torchrun --nproc_per_node=N -m quantpipe qat ... (README)
# Every built-in trained model (and ../shared's chenyaofo ResNet-20 where it exists) through
# export, btc, ptq and eval: zoo/report.md. CI runs `quantpipe zoo --quick` in the tests.
ZOO_CHECKPOINT ?= ../shared/weights/chenyaofo-cifar10_resnet20-4118986f.pt
ZOO_DATA ?= cifar10:../shared/data/cifar10-test-jpeg.tar
zoo: setup
	$(QP) zoo --out zoo $(if $(wildcard $(ZOO_CHECKPOINT)),--checkpoint chenyaofo-cifar10-resnet20 $(ZOO_CHECKPOINT) $(ZOO_DATA)) $(EXTRA)

qat: setup
	$(QP) qat $(if $(RUN),--run $(RUN)) --data $(DATA) $(EXTRA)

mixed: setup
	$(QP) mixed $(if $(RUN),--run $(RUN)) --data $(DATA) $(EXTRA)

engines: setup
	$(QP) engines $(if $(RUN),--run $(RUN)) $(if $(DATA),--data $(DATA)) $(EXTRA)

# A Triton model repository of the run's engines: runs/NAME/triton (and OUT=DIR, a copy).
triton: setup
	$(QP) triton $(if $(RUN),--run $(RUN)) $(if $(OUT),--out $(OUT)) $(EXTRA)

# The bench stage of a run (make bench runs the benchmark scripts below).
bench-run: setup
	$(QP) bench $(if $(RUN),--run $(RUN)) --data $(DATA) $(EXTRA)

report: setup
	$(QP) report $(if $(RUN),--run $(RUN)) $(EXTRA)

# Benchmarks print a table and write JSON to bench-results/ (never run by make test).
bench: bench-btc bench-btc-stage bench-ptq bench-models bench-engines bench-pareto

bench-btc: setup
	mkdir -p bench-results
	$(BIN)/python tests/bench/bench_btc.py --out bench-results/bench-btc.json

# The whole btc command on ResNet-20 and -32 (../shared); BTC_MODELS="NAME=WEIGHTS ..."
# adds others (a ResNet-56 you trained). About 10 minutes on 2 cores.
bench-btc-stage: setup
	mkdir -p bench-results
	$(BIN)/python tests/bench/bench_btc_stage.py --out bench-results/bench-btc-stage.json \
		$(foreach m,$(BTC_MODELS),--model $(m))

bench-ptq: setup
	mkdir -p bench-results
	$(BIN)/python tests/bench/bench_ptq.py --out bench-results/bench-ptq.json

bench-models: setup
	mkdir -p bench-results
	$(BIN)/python tests/bench/bench_models.py --out bench-results/bench-models.json

bench-engines: setup
	mkdir -p bench-results
	$(BIN)/python tests/bench/bench_engines.py --workdir $(RUNS_DIR)/bench-engines \
		--out bench-results/bench-engines.json

# Triton under load (1, 8, 32 clients, 30 s each) on the demo run's FP32 and INT8 engines;
# run `make demo` first. Also writes runs/demo/bench/serve.json for `quantpipe report`.
bench-serve: setup
	mkdir -p bench-results
	$(BIN)/python tests/bench/bench_serve.py --run $(RUNS_DIR)/demo --out bench-results/bench-serve.json

bench-pareto: setup
	mkdir -p bench-results
	$(BIN)/python tests/bench/bench_pareto.py --out bench-results/bench-pareto.json

# Faults, hostile input and load (issue 14): every stage stopped 10 ways (17 min), 100,000
# fuzz cases per file format (47 CPU-min), a 10-minute server soak and flood, and peak memory
# on 1,024 images at 224x224 (about 1 h; needs ../shared's CIFAR-10 tar): about 2.5 h on
# 2 cores. Each writes JSON and exits non-zero on a fault.
SHARED_CIFAR ?= ../shared/data/cifar10-test-jpeg.tar
bench-reliability: setup
	mkdir -p bench-results
	$(BIN)/python tests/reliability/interruption.py --plan full --out bench-results/bench-interruption.json
	$(BIN)/python tests/bench/bench_fuzz.py --examples 100000 --out bench-results/bench-fuzz.json
	$(BIN)/python tests/bench/bench_serve_soak.py --duration 600 --out bench-results/bench-serve-soak.json
	$(BIN)/python tests/bench/bench_memory.py --data cifar10:$(SHARED_CIFAR) --out bench-results/bench-memory.json

models datasets backends: setup
	$(QP) $@

# Both images on a Docker host (DOCKER=podman works too); the GPU one needs NVIDIA's registry.
DOCKER ?= docker
docker:
	$(DOCKER) build -f docker/Dockerfile.cpu -t quantpipe-cpu .
	$(DOCKER) build -f docker/Dockerfile.gpu -t quantpipe-gpu .

clean:
	rm -rf runs zoo .pytest_cache .mypy_cache .ruff_cache
