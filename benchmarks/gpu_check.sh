#!/usr/bin/env bash
# One device session: GPU tests of the kernels, then a quick benchmark. Logs go to $OUT (or ./gpu_out).
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT/card.txt"
timeout ${BENCH_TIMEOUT:-300} python benchmarks/bench_attention.py --quick ${BENCH_ARGS:-} --out "$OUT/BENCHMARKS.md" \
  > "$OUT/bench.log" 2>&1
# every kernel test (CPU-shaped ones too: they run compiled here), spread over 8 workers when pytest-xdist is there
par=$(python -c "import xdist" 2>/dev/null && echo "-n 8 -p xdist")
timeout ${TEST_TIMEOUT:-300} python -m pytest -q $par tests/test_kernels*.py 2>&1 | tail -25 | tee "$OUT/tests.log"
grep -E "^\| (SDPA default|token|fused|  )" "$OUT/bench.log" | cut -c1-110
