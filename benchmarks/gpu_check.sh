#!/usr/bin/env bash
# One device session: GPU tests of the kernels, then a quick benchmark. Logs go to $OUT (or ./gpu_out).
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT/card.txt"
timeout ${TEST_TIMEOUT:-200} python -m pytest -q -x tests/test_kernels_reference.py tests/test_kernels_triton.py \
  tests/test_kernels_detect.py 2>&1 | tail -30 | tee "$OUT/tests.log"
timeout ${BENCH_TIMEOUT:-300} python benchmarks/bench_attention.py --quick ${BENCH_ARGS:-} --out "$OUT/BENCHMARKS.md" \
  2>&1 | tee "$OUT/bench.log" | tail -80
