# The two set-up commands of the README: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := demo
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: install demo test test-fast bench lint clean

install: $(STAMP)

# '.[dev]' brings the onnx extra too (pyproject.toml): the tests export and run ONNX files.
# PYTHONWARNINGS: setuptools warns on every editable install that a folder named like the
# package may shadow it; here that folder is the package itself, so that note (only it) is off.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	PYTHONWARNINGS=ignore::UserWarning:setuptools.command.editable_wheel \
		$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# The demo's data: 4 classes, each decided by the shape and colour of the headlight and both
# wheel hubs; 200 train (160 train + 40 val after prepare) and 50 test drawings per class.
demo: $(STAMP)
	$(BIN)/carsweep synth $(DEMO)/source --seed 0 --per-class 200 --test-per-class 50 \
		--size 64 --cues headlight+wheel
	$(BIN)/carsweep prepare $(DEMO)/source --out $(DEMO)/data --val-fraction 0.2 --force
	rm -rf $(DEMO)/train  # one standalone trial, 2 quick CPU epochs at 32 px
	$(BIN)/carsweep train --data $(DEMO)/data --out $(DEMO)/train --set epochs=2 \
		--set resize=32 --set batch_size=32 --set optimizer=adam --set lr=0.001 \
		--set num_workers=0 --set device=cpu
	rm -rf $(DEMO)/results/demo  # a fresh sweep each time (`carsweep sweep` never overwrites one)
	$(BIN)/carsweep sweep configs/demo.yaml --data $(DEMO)/data --storage $(DEMO)/results
	$(BIN)/carsweep status $(DEMO)/results/demo
	$(BIN)/carsweep analyze $(DEMO)/results/demo  # retrain the best on train+val, test once
	$(BIN)/carsweep export $(DEMO)/results/demo --out $(DEMO)/best.pt
	$(BIN)/carsweep predict --weights $(DEMO)/best.pt --top 3 --cam $(DEMO)/cam \
		$$(for class in $(DEMO)/source/test/*/; do ls "$$class"* | head -1; done)
	@echo "report: $(DEMO)/results/demo/analysis/report.html (open it in a browser)"
	@echo "weights: $(DEMO)/best.pt   Grad-CAM of the predictions: $(DEMO)/cam/"
	@echo "the sweep's study, live: $(BIN)/carsweep dashboard $(DEMO)/results/demo"

# --durations: the slowest tests end CI's log, where a suite growing past ~15 minutes shows.
test: $(STAMP)
	$(BIN)/python -m pytest --durations=15

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

# CPU data path (seed-style vs decoded cache, small Cars-shaped set; the full-size command is in
# BENCHMARKS.md) and the batch ops here; the GPU rows need a GPU box (BENCHMARKS.md).
bench: $(STAMP)
	$(BIN)/python bench/data_path.py --small
	$(BIN)/python bench/augment_ops.py
	$(BIN)/python bench/cache_build.py --small
	$(BIN)/python bench/replay.py --small  # the scheduler replay of bench/curves/ (BENCHMARKS.md)
	$(BIN)/python bench/train_gpu.py \
		$$($(BIN)/python -c "import torch; print('' if torch.cuda.is_available() else '--smoke')")

lint: $(STAMP)
	$(BIN)/ruff check carsweep tests bench

clean:
	rm -rf $(VENV) $(DEMO) results .pytest_cache
