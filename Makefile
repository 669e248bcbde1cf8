# The two commands of the README. Both set up what they need first.
.PHONY: demo test setup setup-test lint

demo: setup          ## build the real test video, caption it on CPU, show the tree
	.venv/bin/lvr1 demo

test: setup-test     ## lint and run every test, slow ones included
	.venv/bin/ruff check src tests scripts benchmarks
	.venv/bin/python -m pytest

setup:
	scripts/setup.sh

setup-test:
	scripts/setup.sh test
