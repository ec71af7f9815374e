#!/usr/bin/env bash
# One device session: GPU tests of the kernels, then a quick benchmark. Logs go to $OUT (or ./gpu_out).
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT/card.txt"
timeout ${BENCH_TIMEOUT:-300} python benchmarks/bench_attention.py --quick ${BENCH_ARGS:-} --out "$OUT/BENCHMARKS.md" \
  > "$OUT/bench.log" 2>&1
timeout ${TEST_TIMEOUT:-200} python -m pytest -q -x -k "cuda" tests/test_kernels_compact.py tests/test_kernels_triton.py \
  tests/test_kernels_reference.py tests/test_kernels_detect.py 2>&1 | tail -15 | tee "$OUT/tests.log"
grep -E "^\| (SDPA default|token|fused|  )" "$OUT/bench.log" | cut -c1-110
