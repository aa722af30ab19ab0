# The two commands a user needs: `make demo` and `make test`.
# Both install what they need: uv into .tools/, then the locked environment into .venv/,
# compiled to bytecode (so no process compiles TensorFlow's sources again on import).

PYTHON ?= python3.11
UV_VERSION := 0.13.9
UV := .tools/bin/uv
VENV := .venv

.PHONY: install browser team-tools imagenet-photos demo test test-fast lint format docs clean

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet "uv==$(UV_VERSION)"

$(VENV)/.installed: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --compile-bytecode --python $(PYTHON)
	touch $@

install: $(VENV)/.installed  ## Install the locked environment into .venv/

# The browser tests drive Debian's chromium: installed through apt when missing and root.
browser:  ## Make sure chromium is there for tests/browser
	@command -v chromium >/dev/null && exit 0; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "Installing Debian's chromium for the browser tests (apt-get)…"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
		echo "error: the browser tests need chromium: run 'sudo apt-get install chromium' (Debian/Ubuntu), then make test again" >&2; \
		exit 1; \
	fi

# The team-topology test (tests/e2e/test_team.py) runs nginx and PostgreSQL in network
# namespaces: Debian's packages, installed through apt when missing and root (it skips,
# saying why, without root).
team-tools:  ## Make sure nginx and PostgreSQL are there for tests/e2e/test_team.py
	@missing=""; command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing=" nginx-light"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	[ -z "$$missing" ] && exit 0; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "Installing Debian's$$missing for the team-topology test (apt-get)…"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	else \
		echo "note: the team-topology test will skip: it needs root and$$missing"; \
	fi

# The pretrained backbones' check (tests/unit/test_backbones.py) classifies real photos with
# ImageNet's label list: both come in Debian's darknet package, unpacked (not installed) into
# .tools/imagenet-photos/.
PHOTOS := .tools/imagenet-photos
imagenet-photos:  ## Fetch Debian's darknet photos and ImageNet labels for the backbone test
	@[ -f $(PHOTOS)/imagenet.labels.list ] && exit 0; \
	command -v apt-get >/dev/null || { echo "note: the ImageNet photo test will skip: no apt-get"; exit 0; }; \
	rm -rf $(PHOTOS).tmp && mkdir -p $(PHOTOS).tmp && cd $(PHOTOS).tmp && \
	{ apt-get download darknet >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get download darknet >/dev/null; }; } && \
	dpkg-deb -x darknet_*.deb deb && mkdir -p ../imagenet-photos && \
	cp deb/usr/share/darknet/data/*.jpg deb/usr/share/darknet/data/imagenet.*.list ../imagenet-photos/ && \
	cd .. && rm -rf imagenet-photos.tmp || echo "note: the ImageNet photo test will skip: could not fetch Debian's darknet package"

demo: install  ## The story: refit up, built-in champion, a batch brings `truck`, summary
	$(VENV)/bin/refit demo

# pytest's "no tests collected" (exit 5) is not a failure; every other non-zero exit is.
PYTEST = $(VENV)/bin/pytest $(1); rc=$$?; [ $$rc -ne 5 ] || { echo "no tests collected"; rc=0; }; exit $$rc

# Two pytest-xdist workers by default, each end-to-end module (and each live platform's
# tests) kept on one worker, longest first; `make test TEST_WORKERS=0` runs one process.
TEST_WORKERS ?= 2

test: install browser team-tools imagenet-photos  ## Run the whole test suite (unit + end-to-end + browser)
	@$(call PYTEST,$(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder,))

test-fast: install  ## Skip the slow end-to-end tests while iterating
	@$(call PYTEST,-m "not e2e")

docs: install  ## Build the documentation site into site/ (strict: a broken link fails)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

lint: install  ## ruff
	$(VENV)/bin/ruff check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:  ## Remove the environments (not the workspace: `refit down` first, then rm -r .refit)
	rm -rf $(VENV) .tools .pytest_cache .ruff_cache site
