# The README's two commands: `make demo` and `make test`. Both work on a fresh Debian machine.
.PHONY: uv install system lint test demo fmt

UV_VERSION := 0.13.8
UV ?= $(shell command -v uv 2>/dev/null || echo python3 -m uv)
NPM ?= npm
PYTEST_ARGS ?=

uv:
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet uv==$(UV_VERSION) \
		|| python3 -m pip install --quiet --break-system-packages uv==$(UV_VERSION)

install: uv
	$(UV) sync --frozen

system:
	./scripts/install-system-deps

# npm writes node_modules/.package-lock.json on every install, so Prism is reinstalled only when
# package-lock.json changes.
node_modules/.package-lock.json: package.json package-lock.json
	$(NPM) ci --no-audit --no-fund
	@touch $@

lint: install
	$(UV) run ruff check .
	$(UV) run ruff format --check .
	$(UV) run mypy

# The suite runs twice: on SQLite (the default) and on PostgreSQL (`--database=postgresql`). Every
# test's database is a fresh copy of a migrated template (a SQLite file; a database on the PostgreSQL
# server the tests start). Tests that do not reach the suite's database run once, in the SQLite pass
# (tests/support/servers.py). Each pass prints its 25 slowest tests.
# pytest exits 5 when it collected no test: a suite that ran nothing has not passed.
TEST_DATABASES ?= sqlite postgresql

# deploy/ checked by the programs that read it: nginx -t and systemd-analyze verify.
.PHONY: check-deploy
check-deploy: system
	./scripts/check-deploy

test: system install node_modules/.package-lock.json lint check-deploy
	@for database in $(TEST_DATABASES); do \
		echo "==> pytest on $$database"; \
		status=0; $(UV) run pytest --database=$$database --durations=25 $(PYTEST_ARGS) || status=$$?; \
		if [ "$$status" -eq 5 ]; then \
			echo "make test: pytest collected no tests on $$database; that is a failure, not a pass." >&2; \
			exit 1; \
		fi; \
		if [ "$$status" -ne 0 ]; then exit "$$status"; fi; \
	done

demo: install
	$(UV) run eirc-gateway demo

fmt: install
	$(UV) run ruff check --fix .
	$(UV) run ruff format .

# The §9 benchmark (benchmarks/README.md): `make bench` (about 5 minutes on an idle 2-core
# machine) or `make bench ARGS=--quick` (about 1); figures are reported, never asserted.
.PHONY: bench
bench: install
	$(UV) run python -m benchmarks.run $(ARGS)
