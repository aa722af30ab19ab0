# The two commands a user needs: `make demo` and `make test`.
# Both install what they need: uv into .tools/, then the locked environment into .venv/.

PYTHON ?= python3.11
UV_VERSION := 0.13.9
UV := .tools/bin/uv
VENV := .venv

.PHONY: install demo test test-fast lint format clean

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet "uv==$(UV_VERSION)"

$(VENV)/.installed: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --python $(PYTHON)
	touch $@

install: $(VENV)/.installed  ## Install the locked environment into .venv/

demo: install  ## The story: refit up, built-in champion, a batch brings `truck`, summary
	$(VENV)/bin/refit demo

# pytest's "no tests collected" (exit 5) is not a failure; every other non-zero exit is.
PYTEST = $(VENV)/bin/pytest $(1); rc=$$?; [ $$rc -ne 5 ] || { echo "no tests collected"; rc=0; }; exit $$rc

test: install  ## Run the whole test suite (unit + end-to-end)
	@$(call PYTEST,)

test-fast: install  ## Skip the slow end-to-end tests while iterating
	@$(call PYTEST,-m "not e2e")

lint: install  ## ruff
	$(VENV)/bin/ruff check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:  ## Remove the environments (not the workspace: `refit down` first, then rm -r .refit)
	rm -rf $(VENV) .tools .pytest_cache .ruff_cache
