#!/usr/bin/env bash
# Lab II on one GPU, end to end (docs/lab-results.md): learning-rate sweep, the study at the chosen rate with
# the clipping ablations, KL per saved step, series with geometry, the comparison report.
#
#   PYTHONPATH=. bash docs/lab2/run_study.sh WORK OUT [SECONDS]
#
# WORK: scratch (weights stay there); OUT: results.tar.gz (logs, run.json, train logs, style records, series,
# KL files, the comparison report), lr_sweep.json and the generations per base. SECONDS: a wall-clock budget;
# training stops (unfinished runs are dropped, finished ones stay listed) SECONDS - 200 s after the start, so
# that linking and the report fit; 0 = none. Runs are listed in priority order: what is cut is the tail.
#
# The learning rate is chosen by a rule fixed before the study: the smallest rate of the sweep at which the
# random-reward run's clip fraction, averaged over its optimizer steps, is at least 2% (the precondition of the
# clipping-bias mechanism); the largest rate when none reaches it. Each base has its own lab folder, so the
# bases train at the same time.
set -u
WORK=${1:?work folder}
OUT=${2:?output folder}
BUDGET=${3:-0}
RESERVE=200
START=$(date +%s)
DYN="python -m dynamics.cli"
SEEDS="1 2 3"
LRS="1e-4 3e-4 1e-3"
mkdir -p "$WORK" "$OUT"
phase() { echo "[$(date +%T)] $*"; }
lab() { local out=$1 log=$2; shift 2; $DYN lab run --size small --out "$WORK/$out" --device cuda -q "$@" >> "$WORK/$log.log" 2>&1; }
stop_training_at_reserve() {  # kills every lab run (and its spawned workers) when only RESERVE seconds are left
  [ "$BUDGET" -gt 0 ] || return 0
  ( sleep $(( BUDGET - RESERVE - ($(date +%s) - START) )) 2>/dev/null
    pkill -f "dynamics.cli lab run"; pkill -f "multiprocessing.spawn"; echo "[$(date +%T)] training stopped: budget" ) &
  WATCHDOG=$!
}
WATCHDOG=
jobs_of_phase=()
started() { jobs_of_phase+=("$!"); }
finish_phase() { wait "${jobs_of_phase[@]}"; jobs_of_phase=(); }

phase "1: learning-rate sweep (code-helps, random reward, seed 1) and SFT runs (pretrains the bases)"
stop_training_at_reserve
for lr in $LRS; do lab "lr-$lr" "lr-$lr" --bases code-helps --rewards random --seeds 1 --grpo-lr "$lr" & started; done
lab code-helps sft-code-helps --bases code-helps --rewards sft --seeds $SEEDS --parallel 3 & started
for base in code-hurts no-code; do lab "$base" "sft-$base" --bases "$base" --rewards sft --seeds 1 & started; done
finish_phase
LR=$(python - "$WORK" "$OUT" $LRS <<'EOF'
import json, statistics, sys
from pathlib import Path
work, out, rates = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
sweep = {}
for rate in rates:
    log = work / f"lr-{rate}" / "code-helps" / "grpo-random-s1" / "train_log.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    if rows:
        sweep[rate] = {k: statistics.fmean(r[k] for r in rows) for k in
                       ("clip_fraction", "clip_fraction_low", "clip_fraction_high", "entropy_style")} | {
            "steps": len(rows), "p_code_style_first": rows[0]["p_code_style"],
            "p_code_style_last": rows[-1]["p_code_style"], "kl_to_base_last": rows[-1]["kl_to_base"]}
binding = [r for r in rates if sweep.get(r, {}).get("clip_fraction", 0) >= 0.02]
chosen = min(binding, key=float) if binding else max(rates, key=float)
(out / "lr_sweep.json").write_text(json.dumps({"rule": "smallest rate whose random-reward run has a mean clip "
                                               "fraction >= 0.02; else the largest", "chosen": chosen,
                                               "random_reward_runs": sweep}, indent=1))
print(chosen)
EOF
)
if ! grep -q '"steps"' "$OUT/lr_sweep.json"; then
  phase "no run of the learning-rate sweep finished (budget too small for pretraining + one run): stopping"
  exit 1
fi
phase "chosen GRPO learning rate: $LR"

phase "2: the study at $LR (code-helps first, its ablations; code-hurts and no-code beside)"
mkdir -p "$WORK/code-helps-on-policy" && cp -r "$WORK/code-helps/base-code-helps" "$WORK/code-helps-on-policy/"
(
  lab code-helps main-code-helps --bases code-helps --seeds $SEEDS --grpo-lr "$LR" --parallel 9 \
    --rewards random true --ablation clip-off
  lab code-helps main-code-helps --bases code-helps --seeds $SEEDS --grpo-lr "$LR" --parallel 9 \
    --rewards format incorrect random-0.3 noisy-0.5 noisy-0.2 rpr noisy-0.4
) & started
lab code-helps-on-policy on-policy --bases code-helps --seeds $SEEDS --grpo-lr "$LR" --parallel 6 \
  --rewards random --ablation on-policy & started
for base in code-hurts no-code; do
  lab "$base" "main-$base" --bases "$base" --seeds $SEEDS --grpo-lr "$LR" --parallel 6 \
    --rewards random true format incorrect & started
done
finish_phase
[ -n "$WATCHDOG" ] && kill "$WATCHDOG" 2>/dev/null

phase "3: KL per saved step, series with geometry per run"
LABS=$(for lab in code-helps code-helps-on-policy code-hurts no-code; do
         [ -f "$WORK/$lab/manifest.json" ] && echo "$WORK/$lab"; done)
for lab in $LABS; do $DYN lab link "$lab" --device cuda -q > "$lab-link.log" 2>&1 & started; done
finish_phase
python - $LABS <<'EOF' | xargs -P 16 -I{} sh -c "$DYN series {} --geometry --device cuda -q > /dev/null 2>&1"
import json, sys
from pathlib import Path
for lab in map(Path, sys.argv[1:]):
    for entry in json.loads((lab / "manifest.json").read_text())["runs"]:
        print(lab / entry["path"])
EOF

phase "4: the comparison report, and the files behind it packed into OUT"
# the on-policy folder's plain random runs repeat code-helps' (same seeds): only its ablation runs are compared
ON_POLICY=$(ls -d "$WORK"/code-helps-on-policy/code-helps/grpo-random-on-policy-s* 2>/dev/null | while read -r run; do
              grep -q "code-helps/$(basename "$run")" "$WORK/code-helps-on-policy/manifest.json" && echo "$run"; done)
$DYN report compare $(echo "$LABS" | grep -v on-policy) $ON_POLICY -o "$WORK/compare" --device cuda -q \
  > "$WORK/compare.log" 2>&1
(cd "$WORK" && find . -name run.json -o -name train_log.jsonl -o -name style.jsonl -o -name series.json \
   -o -path "*/kl/step_*.json" -o -name manifest.json -o -name "majority-*.json" -o -name "*.log" \
   -o -path "./compare/*" | grep -v "/cache/" | tar -czf "$OUT/results.tar.gz" -T -)
for lab in $LABS; do
  (cd "$WORK" && find "$(basename "$lab")" -name generations.jsonl | tar -cJf "$OUT/generations-$(basename "$lab").tar.xz" -T -)
done
phase "done in $(( $(date +%s) - START )) s"
