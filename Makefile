# The two commands of the README. Both set up what they need first.
.PHONY: demo test test-fast setup setup-test lint

demo: setup          ## build the real test video, caption it on CPU, show the tree
	.venv/bin/lvr1 demo

test: setup-test     ## lint and run every test, slow ones included
	$(MAKE) lint
	.venv/bin/python -m pytest

test-fast: setup-test ## lint and run the tests that load no model and build no video (minutes)
	$(MAKE) lint
	.venv/bin/python -m pytest -m "not slow"

lint:                ## ruff, and the import layers of docs/design.md (pyproject's importlinter)
	.venv/bin/ruff check src tests scripts benchmarks
	.venv/bin/lint-imports --no-cache --no-logo

setup:
	scripts/setup.sh

setup-test:
	scripts/setup.sh test
