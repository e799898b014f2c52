# Two commands do all set-up on a fresh machine:
#   make demo   -- creates .venv, installs deploykit, then the whole pipeline on scikit-learn's digits:
#                  train LeNet, export FP32/FP16/INT8 ONNX (+ TensorRT engines where TensorRT is installed),
#                  verify with accuracy on held-out digits, eval, bench, and demo/export/report.md
#   make test   -- creates .venv, installs deploykit + pytest, runs the test suite
# Both install deploykit[all] (torch, scikit-learn, matplotlib); a device needs only `pip install deploykit`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DK     := $(VENV)/bin/deploykit
DEMO   ?= demo

.PHONY: install demo test clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e ".[all,dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(DK) train lenet --data digits --threads 1 --out $(DEMO)/run
	$(DK) export $(DEMO)/run/best.pth --out $(DEMO)/export --dynamic-batch --fp16 --int8 --int8-for trt \
		--int8-for cpu --calib digits --data digits
	@if $(PY) -c "import tensorrt" 2>/dev/null; then \
		$(DK) build $(DEMO)/export --precision fp16 && $(DK) build $(DEMO)/export --precision int8; \
	else \
		echo "TensorRT is not installed here: no engine built. On a CUDA host: pip install \"deploykit[trt]\";" \
		     "on a Jetson: JetPack's python3-libnvinfer. Then: deploykit build $(DEMO)/export --precision fp16"; \
	fi
	$(DK) eval $(DEMO)/export --data digits --plot $(DEMO)/export/confusion.png
	$(DK) bench $(DEMO)/export --batch 1,32 --iters 50 --threads 1 --plot $(DEMO)/export/bench.png --json > $(DEMO)/export/bench.json
	$(DK) report $(DEMO)/export --print

test: install
	$(PY) -m pytest -q

clean:
	rm -rf $(DEMO) exports/*/ runs/ .pytest_cache
