# Two commands do all set-up on a fresh machine:
#   make demo   -- creates .venv, installs deploykit, runs the pipeline on bundled data, prints the results
#   make test   -- creates .venv, installs deploykit + pytest, runs the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DK     := $(VENV)/bin/deploykit
DEMO   ?= demo

.PHONY: install demo test clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) scripts/make_demo_checkpoint.py $(DEMO)/resnet18_flowers5.pth
	$(DK) export $(DEMO)/resnet18_flowers5.pth --out $(DEMO)/export
	$(DK) verify $(DEMO)/export
	$(DK) predict $(DEMO)/export $$($(PY) -c "import skimage.data, pathlib; print(pathlib.Path(skimage.data.__file__).parent / 'chelsea.png')") --topk 3

test: install
	$(PY) -m pytest -q

clean:
	rm -rf $(DEMO) exports/*/ runs/ .pytest_cache
