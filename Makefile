# make install: a .venv with the verified stack (idempotent; the mmcv build takes ~20 min once,
#               then pip's wheel cache makes it seconds)
# make test:    the test suite (installs first if needed)
# make demo:    tiny weights + synthetic ADE20K-layout data, train, test, print mIoU
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PYTEST_ARGS ?=

.PHONY: install test demo clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.py requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q torch==2.13.0 mmengine==0.10.7
	# mmcv 2.1.0 has no wheel for recent torch: build it against the installed torch
	# (its setup.py imports pkg_resources, hence setuptools<70)
	$(PIP) install -q "setuptools<70" wheel
	$(PY) -c "import mmcv.ops" 2>/dev/null || MMCV_WITH_OPS=1 MAX_JOBS=2 $(PIP) install --no-build-isolation mmcv==2.1.0
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-build-isolation -e ".[dev]"
	# torch wants setuptools>=77; mmengine's `mmseg::` config lookup still imports pkg_resources (gone in 81)
	$(PIP) install -q "setuptools>=77,<81"
	touch $@

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

demo: install
	$(PY) tools/demo.py --work-dir work_dirs/demo

clean:
	rm -rf work_dirs .pytest_cache
