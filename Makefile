# `make run` and `make test` each set up .venv on first use (and again when pyproject.toml changes).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Where the offline CPU wheel of torch lies on our machines; harmless where it does not exist.
WHEELS ?= /opt/wheels
PYTEST_ARGS ?=

.PHONY: setup run test serve clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip || true
	$(BIN)/python -m pip install --find-links $(WHEELS) "$(TORCH)"
	$(BIN)/python -m pip install --find-links $(WHEELS) -e '.[test]'
	# Test-only reference: k-diffusion's samplers. Its declared dependencies (torchvision, wandb, …)
	# would break our torch, and the tests load only its sampling module, so: no dependencies.
	$(BIN)/python -m pip install --no-deps k-diffusion==0.1.1.post1
	# Upscale models: spandrel declares torchvision, whose PyPI build breaks beside our torch. Only two
	# of its architectures use it; we import spandrel with a stand-in for those names
	# (diffusion/loading/upscale_models.py). Its real dependencies (einops, ...) are in pyproject.
	$(BIN)/python -m pip install --no-deps spandrel==0.4.2
	touch $(STAMP)

setup: $(STAMP)

TINY_CKPT := models/checkpoints/latentgraph-tiny-sd1.safetensors

# The small bundled model: random weights in the real SD1 layout, built once (seeded, a few MB).
$(TINY_CKPT): | $(STAMP)
	$(BIN)/python tools/make_tiny_checkpoint.py --out $@

run: setup $(TINY_CKPT)
	$(BIN)/python main.py run workflows/default.json

serve: setup $(TINY_CKPT)
	$(BIN)/python main.py

# Browser tests drive Debian's chromium; install it where it is missing (CI runs as root).
CHROMIUM ?= /usr/bin/chromium
$(CHROMIUM):
	if [ "$$(id -u)" = 0 ]; then (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
	  || echo "chromium could not be installed: the browser test will be skipped"; \
	else echo "chromium missing: sudo apt-get install chromium (the browser test will be skipped)"; fi

test: setup | $(CHROMIUM)
	$(BIN)/python -m pytest -q -m "not slow" -n 2 $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) *.egg-info
