# The two commands a newcomer runs: `make setup`, then `make test`.
.PHONY: setup test test-all lint

setup:
	bash scripts/setup.sh

# One torch thread per process: tests spawn worker subprocesses (two search workers, torchrun ranks),
# and several multi-threaded torch processes on 2 cores slow each other ~25x; it also makes float
# reductions, and so exact-equality assertions, independent of the core count.
test:
	.venv/bin/python -m ruff check qnas search_spaces tests benchmarks
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python -m pytest -q

test-all:
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python -m pytest -q -m ""
