# Two commands do everything on a fresh clone: `make demo` and `make test`. Both create the virtual
# environment on first use (pinned versions from requirements.lock; torch 2.14.1 installs from this machine's disk).
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-all test-slow bench bench-quick lock clean

$(STAMP): pyproject.toml requirements.lock
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; run make PYTHON=/path/to/python3.11"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[serve,test]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/enclip demo $(ARGS)

# The default suite runs on two pytest-xdist workers, one per core of the project's machines (each test uses one
# torch thread); `make test WORKERS=0` runs it in one process.
WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(WORKERS) $(ARGS)

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m '' $(ARGS)

# The slow set (.ci/run runs it after `make test`): long property-based runs, the scale-out engines (Milvus store,
# Ray embedding and training), benchmark smoke runs, kill and resume-equivalence runs. The scale extra is installed on
# first use, so `make test` never needs it.
SCALE_STAMP := $(VENV)/.installed-scale
$(SCALE_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[serve,test,scale]'
	touch $(SCALE_STAMP)

test-slow: $(SCALE_STAMP)
	$(BIN)/python -m pytest -q -m slow $(ARGS)

bench: $(STAMP)
	$(BIN)/python bench/run_all.py $(ARGS)

bench-quick: $(STAMP)
	$(BIN)/python bench/run_all.py --quick $(ARGS)

lock:
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^enclip' > requirements.lock.new
	(echo '# Exact versions every install uses (pip install -c requirements.lock); regenerate with `make lock`.'; cat requirements.lock.new) > requirements.lock
	rm requirements.lock.new

clean:
	rm -rf $(VENV) runs .pytest_cache
