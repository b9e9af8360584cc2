# The two commands a newcomer runs: `make setup`, then `make test`.
.PHONY: setup test test-all lint

setup:
	bash scripts/setup.sh

test:
	.venv/bin/python -m ruff check qnas search_spaces tests benchmarks
	.venv/bin/python -m pytest -q

test-all:
	.venv/bin/python -m pytest -q -m ""
