# Developer and CI entry points; .ci/run installs the system packages and then runs `make test`.
.PHONY: install lint test demo fmt

UV ?= uv
NPM ?= npm
PYTEST_ARGS ?=

install: node_modules/.package-lock.json
	$(UV) sync --frozen

# npm writes node_modules/.package-lock.json on every install, so Prism is reinstalled only when
# package-lock.json changes.
node_modules/.package-lock.json: package.json package-lock.json
	$(NPM) ci --no-audit --no-fund
	@touch $@

lint:
	$(UV) run ruff check .
	$(UV) run ruff format --check .
	$(UV) run mypy

# pytest exits 5 when it collected no test: a suite that ran nothing has not passed.
test: install lint
	@status=0; $(UV) run pytest $(PYTEST_ARGS) || status=$$?; \
	if [ "$$status" -eq 5 ]; then \
		echo "make test: pytest collected no tests; that is a failure, not a pass." >&2; \
		exit 1; \
	fi; \
	exit "$$status"

demo: install
	$(UV) run eirc-gateway demo

fmt:
	$(UV) run ruff check --fix .
	$(UV) run ruff format .
