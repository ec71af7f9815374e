#!/usr/bin/env bash
# Run diffusers' own model and pipeline tests for Wan, HunyuanVideo and CogVideoX stock, with an all-dense
# TimeRipple schedule and with reuse (tools/diffusers_tests_plugin.py), and print each run's summary.
#
#   tools/run_diffusers_tests.sh DIFFUSERS [REF] [MODES]
#
# DIFFUSERS: a diffusers work tree (with tests/), or a git directory (then tests/ of REF, default the tag
# v$(installed diffusers version) when it exists, else HEAD, is extracted to a temporary folder).
# MODES: default "stock dense reuse". Extra pytest arguments: TIMERIPPLE_PYTEST_ARGS. The tests run against
# the installed diffusers; they need accelerate, and the pipeline tests download tiny text encoders from
# the Hugging Face Hub (offline, those fail alike in every mode). Not part of CI.
set -euo pipefail
DIFFUSERS=${1:?usage: tools/run_diffusers_tests.sh DIFFUSERS [REF] [MODES]}
REF=${2:-}
MODES=${3:-stock dense reuse}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
FILES=(
  tests/models/transformers/test_models_transformer_wan.py
  tests/models/transformers/test_models_transformer_hunyuan_video.py
  tests/models/transformers/test_models_transformer_cogvideox.py
)
if [ -n "${TIMERIPPLE_WITH_PIPELINES:-}" ]; then  # slow, and offline their text encoders cannot load
  FILES+=(tests/pipelines/wan/test_wan.py tests/pipelines/hunyuan_video/test_hunyuan_video.py
          tests/pipelines/cogvideo/test_cogvideox.py)
fi
if [ -d "$DIFFUSERS/tests" ]; then
  WORK=$DIFFUSERS
else
  VERSION=$(python3 -c "import diffusers; print(diffusers.__version__)")
  if [ -z "$REF" ]; then
    if git --git-dir="$DIFFUSERS" rev-parse -q --verify "refs/tags/v$VERSION" >/dev/null; then REF=v$VERSION; else REF=HEAD; fi
  fi
  WORK=$(mktemp -d)
  git --git-dir="$DIFFUSERS" archive "$REF" tests | tar -x -C "$WORK"
  echo "diffusers tests from $REF ($(git --git-dir="$DIFFUSERS" rev-parse --short "$REF")); installed diffusers $VERSION"
fi
cd "$WORK"
for MODE in $MODES; do
  echo "=== $MODE ==="
  PYTHONPATH="$HERE:$ROOT/src${PYTHONPATH:+:$PYTHONPATH}" python3 -m pytest -q -p no:cacheprovider \
    -p diffusers_tests_plugin --timeripple="$MODE" ${TIMERIPPLE_PYTEST_ARGS:-} "${FILES[@]}" 2>&1 \
    -rfE | grep -E "^(FAILED|ERROR) |^ *(passed|failed|skipped) \| TimeRipple|^refused|^[0-9]+ (passed|failed)" || true
done
