#!/usr/bin/env bash
# The device call behind docs/results.md and docs/eval_results.md (one GPU, one call, under a time budget).
#
#   OUT=/some/folder bash tools/results_device_run.sh          # on the GPU machine, from the repository root
#   DEVICE=cpu PROMPTS=1 SEEDS=0 STEPS=6 LEVELS=0.75 METHODS="channel fbc" WORKERS=1 SMOKE=1 \
#       OUT=/tmp/dry bash tools/results_device_run.sh          # the same chain on a CPU, tiny settings
#   WORKERS=1 JOB_TIMEOUT=40 METHODS="pab ablation fbc" ABLATIONS="channel-alpha" SAME_SCALE=0.139 \
#       E2E_WAN_VARIANTS="stock;attention free;pab skip" E2E_MODELS=wan1.3b OUT=... bash tools/results_device_run.sh
#                                                              # a second call: only what the first did not reach
#
# One worker per GPU: on one GPU, several processes add no throughput (it time-slices between them).
# JOB_TIMEOUT: seconds each method (and each ablation run) may take; every running job is stopped at
# T0 + TINY_KILL - 5 s, so the merge always runs. SAME_SCALE: channel's knob at the ablation level from
# an earlier call (channel is then not re-run; channel-wK-same uses it; SAME_WINDOWS picks K).
#
# 1. WORKERS (default 1) processes of `tools/peers_tables.py run` share the job list (every registered method and the
#    ablation group); none starts a job after T0 + TINY_DEADLINE s, and all are stopped at T0 + TINY_KILL s.
# 2. `merge` joins their results; then `benchmarks/bench_peers_e2e.py` times the full-size transformers
#    alone on the GPU (Wan2.1-1.3B, then HunyuanVideo), each variant only if started before its deadline.
# 3. Everything (logs, JSON) is packed into $OUT/results.tar.gz (the folder run/ inside).
set -u
DEVICE=${DEVICE:-cuda}; WORKERS=${WORKERS:-1}; PROMPTS=${PROMPTS:-8}; SEEDS=${SEEDS:-"0 1"}; STEPS=${STEPS:-20}
LEVELS=${LEVELS:-"0.5 0.75 0.875"}; METHODS=${METHODS:-}; SMOKE=${SMOKE:-}; CAPTURE_LAYERS=${CAPTURE_LAYERS:-}
ABLATIONS=${ABLATIONS:-}; E2E_MODELS=${E2E_MODELS:-"wan1.3b hunyuan"}; E2E_VARIANTS=${E2E_VARIANTS:-}
E2E_WAN_VARIANTS=${E2E_WAN_VARIANTS:-$E2E_VARIANTS}; E2E_HY_VARIANTS=${E2E_HY_VARIANTS:-$E2E_VARIANTS}
JOB_TIMEOUT=${JOB_TIMEOUT:-0}; SAME_SCALE=${SAME_SCALE:-}; SAME_WINDOWS=${SAME_WINDOWS-"3 4 8"}
TINY_DEADLINE=${TINY_DEADLINE:-150}; TINY_KILL=${TINY_KILL:-210}
WAN_KILL=${WAN_KILL:-290}; HY_DEADLINE=${HY_DEADLINE:-385}; HY_KILL=${HY_KILL:-415}
T0=$(date +%s)
R=$OUT/run
mkdir -p "$R"
{ date -u; python3 -c "import torch, diffusers; print(torch.__version__, diffusers.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"; nvidia-smi -L 2>/dev/null; git log -1 --format=%H 2>/dev/null; } > "$R/env.txt" 2>&1
python3 - > "$R/jobs_preview.txt" 2>&1 <<'EOF'
import sys; sys.path.insert(0, "tools")
from peers_tables import jobs
print(jobs())
EOF
pids=()
for k in $(seq 1 "$WORKERS"); do
  timeout $((TINY_KILL - ($(date +%s) - T0))) python3 tools/peers_tables.py run --out "$R" --device "$DEVICE" \
    --prompts "$PROMPTS" --seeds $SEEDS --steps "$STEPS" --levels $LEVELS ${METHODS:+--methods $METHODS} \
    ${CAPTURE_LAYERS:+--capture-layers $CAPTURE_LAYERS} ${ABLATIONS:+--ablation-methods $ABLATIONS} \
    ${SAME_SCALE:+--same-scale $SAME_SCALE --same-windows $SAME_WINDOWS} --job-timeout "$JOB_TIMEOUT" \
    --deadline $((T0 + TINY_DEADLINE)) --stop-at $((T0 + TINY_KILL - 5)) > "$R/worker$k.log" 2>&1 &
  pids+=($!)
  sleep 1
done
for p in "${pids[@]}"; do wait "$p"; done
echo "tiny done at +$(( $(date +%s) - T0 )) s" | tee -a "$R/times.txt"
python3 tools/peers_tables.py merge "$R" > "$R/merge.log" 2>&1
echo "merged at +$(( $(date +%s) - T0 )) s" | tee -a "$R/times.txt"
cat "$R/merge.log"; grep -h "done in\|STOPPED\|SKIPPED" "$R"/worker*.log
cd benchmarks || exit 1
for model in $E2E_MODELS; do  # row labels ';'-separated, timed in that order (default: every row)
  if [ "$model" = hunyuan ]; then kill_at=$HY_KILL; dl=$HY_DEADLINE; reps=1; v=$E2E_HY_VARIANTS
  else kill_at=$WAN_KILL; dl=$((WAN_KILL - 25)); reps=2; v=$E2E_WAN_VARIANTS; fi
  left=$((kill_at - ($(date +%s) - T0)))
  if [ "$left" -lt 20 ]; then echo "$model not started: $left s left" | tee -a "$R/times.txt"; continue; fi
  IFS=';' read -ra VARIANTS <<< "$v"
  timeout "$left" python3 bench_peers_e2e.py --models "$model" --repeats $reps \
    --json "$R/e2e_$model.json" --deadline $((T0 + dl)) ${SMOKE:+--smoke} ${v:+--variants "${VARIANTS[@]}"} \
    > "$R/e2e_$model.log" 2>&1
  rc=$?
  echo "$model done at +$(( $(date +%s) - T0 )) s (rc $rc)" | tee -a "$R/times.txt"
  tail -n 30 "$R/e2e_$model.log"
done
# at most 8 files come back from the device: one archive, the timings and the logs' tails
cd "$OUT" && tar czf results.tar.gz run && cp run/times.txt run/merge.log . && tail -n 25 run/e2e_*.log > e2e_tail.txt
rm -rf run && ls -la "$OUT"
