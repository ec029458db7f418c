# make install: a .venv with the verified stack of requirements/lock.txt (idempotent; the mmcv build
#               takes ~10 min once per kind, later installs reuse its cached wheel)
#               MMCV_OPS=auto|cpu|cuda picks mmcv's ops (auto: CUDA ops only with a GPU and a CUDA toolkit)
# make mmcv:    (re)install mmcv with MMCV_OPS's kind into an existing .venv
# make test:    the fast suite: every test but the end-to-end tool runs (installs first if needed)
# make test-e2e: the end-to-end runs of the tools in subprocesses (pytest marker e2e)
# make test-all: both in one run: what CI (.ci/run) runs
# make demo:    tiny weights + synthetic ADE20K-layout data, train, test, print mIoU
# make doctor:  the environment report with a fix for each failed check
# make lock:    re-resolve requirements.txt + setup.py in a fresh venv and rewrite requirements/lock.txt
# make test-gpu: the device selection of the suite on the GPU: pytest -m device --device cuda --dtype bf16
# make gpu-check: the whole project validated on a GPU machine in ~10 min, one report (docs/gpu.md);
#               GPU_CHECK_ARGS='--budget-s 900 --out DIR' passes options
# make gpu-check-dry: the same stages on the CPU at tiny sizes (= tools/gpu_check.py --dry-run)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
LOCK := requirements/lock.txt
MMCV_OPS ?= auto
PYTEST_ARGS ?=
GPU_CHECK_ARGS ?=

.PHONY: install mmcv test test-e2e test-all demo doctor lock clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.py requirements.txt $(LOCK) tools/install_mmcv.py
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first (a CUDA torch 2.13.0 already in the venv satisfies the lock's torch==2.13.0 and stays)
	$(PIP) install -q -c $(LOCK) torch mmengine
	MMCV_OPS=$(MMCV_OPS) $(PY) tools/install_mmcv.py
	# everything else at the locked versions (this also puts back the locked setuptools after mmcv's build)
	$(PIP) install -q -c $(LOCK) -r requirements.txt setuptools wheel
	$(PIP) install -q -c $(LOCK) --no-build-isolation -e ".[dev]"
	$(PY) tools/lockfile.py check $(LOCK)
	touch $@

mmcv:
	test -x $(PY) || { echo "no $(VENV): run make install first"; exit 1; }
	MMCV_OPS=$(MMCV_OPS) $(PY) tools/install_mmcv.py
	$(PIP) install -q -c $(LOCK) setuptools wheel

test: install
	$(PY) -m pytest -q -m "not e2e" $(PYTEST_ARGS) tests

test-e2e: install
	$(PY) -m pytest -q -m e2e $(PYTEST_ARGS) tests

test-all: install
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

demo: install
	$(PY) tools/demo.py --work-dir work_dirs/demo

doctor: install
	$(PY) tools/collect_env.py

# Resolve the ranges anew (newest allowed releases) in a throwaway venv; a lock change lands only after
# `rm -rf .venv && make install && make test` passed with it.
lock:
	rm -rf .venv-lock
	python3 -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q torch mmengine
	MMCV_OPS=cpu .venv-lock/bin/python tools/install_mmcv.py
	.venv-lock/bin/python -m pip install -q -r requirements.txt setuptools wheel
	.venv-lock/bin/python -m pip install -q --no-build-isolation -e ".[dev]"
	.venv-lock/bin/python tools/lockfile.py write $(LOCK)
	rm -rf .venv-lock

clean:
	rm -rf work_dirs .pytest_cache

.PHONY: test-gpu gpu-check gpu-check-dry

# the tests marked `device` on the GPU, frozen stacks in bf16 against fp32 references on the same GPU (docs/gpu.md)
test-gpu: install
	$(PY) -m pytest -q -m device --device cuda --dtype bf16 $(PYTEST_ARGS) tests

gpu-check: install
	$(PY) tools/gpu_check.py $(GPU_CHECK_ARGS)

gpu-check-dry: install
	$(PY) tools/gpu_check.py --dry-run $(GPU_CHECK_ARGS)
