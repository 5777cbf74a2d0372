#!/usr/bin/env bash
# Lab II on one GPU, end to end (docs/lab-results.md): learning-rate sweep, the study at the chosen rate,
# the clipping ablations, KL per saved step, series with geometry, and the comparison report.
#
#   PYTHONPATH=. bash docs/lab2/run_study.sh WORK OUT       # WORK: scratch (weights stay there), OUT: results
#
# The learning rate is chosen by a rule fixed before the study: the smallest rate of the sweep at which the
# random-reward run's clip fraction, averaged over its optimizer steps, is at least 2% (the precondition of the
# clipping-bias mechanism); the largest rate when none reaches it. Each base has its own lab folder, so the
# bases train at the same time.
set -u
WORK=${1:?work folder}
OUT=${2:?output folder}
DYN="python -m dynamics.cli"
SEEDS="1 2 3"
LRS="3e-5 1e-4 3e-4 1e-3"
mkdir -p "$WORK" "$OUT"
phase() { echo "[$(date +%T)] $*"; }

phase "1: learning-rate sweep (code-helps; random and true; seed 1) and the SFT runs of every base"
for lr in $LRS; do
  $DYN lab run --size small --out "$WORK/lr-$lr" --bases code-helps --rewards random true --seeds 1 \
    --grpo-lr "$lr" --parallel 2 --device cuda -q > "$WORK/lr-$lr.log" 2>&1 &
done
for base in code-helps code-hurts no-code template; do
  $DYN lab run --size small --out "$WORK/$base" --bases "$base" --rewards sft --seeds $SEEDS --parallel 3 \
    --device cuda -q > "$WORK/sft-$base.log" 2>&1 &
done
wait
LR=$(python - "$WORK" "$OUT" $LRS <<'EOF'
import json, statistics, sys
from pathlib import Path
work, out, rates = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
sweep = {}
for rate in rates:
    for reward in ("random", "true"):
        log = work / f"lr-{rate}" / "code-helps" / f"grpo-{reward}-s1" / "train_log.jsonl"
        rows = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
        if rows:
            sweep[f"{reward}@{rate}"] = {k: statistics.fmean(r[k] for r in rows) for k in
                                         ("clip_fraction", "clip_fraction_low", "clip_fraction_high")} | {
                "steps": len(rows), "p_code_style_first": rows[0]["p_code_style"],
                "p_code_style_last": rows[-1]["p_code_style"], "kl_to_base_last": rows[-1]["kl_to_base"],
                "reward_first": rows[0]["reward_mean"], "reward_last": rows[-1]["reward_mean"]}
binding = [r for r in rates if sweep.get(f"random@{r}", {}).get("clip_fraction", 0) >= 0.02]
chosen = min(binding, key=float) if binding else max(rates, key=float)
(out / "lr_sweep.json").write_text(json.dumps({"rule": "smallest rate with mean clip fraction >= 0.02 (random)",
                                               "chosen": chosen, "runs": sweep}, indent=1))
print(chosen)
EOF
)
phase "chosen GRPO learning rate: $LR"

phase "2: the study at $LR, then the ablations on code-helps"
(
  $DYN lab run --size small --out "$WORK/code-helps" --bases code-helps --seeds $SEEDS --grpo-lr "$LR" \
    --rewards true format random random-0.3 incorrect noisy-0.2 noisy-0.4 noisy-0.5 rpr --parallel 9 \
    --device cuda -q > "$WORK/main-code-helps.log" 2>&1
  $DYN lab run --size small --out "$WORK/code-helps" --bases code-helps --seeds $SEEDS --grpo-lr "$LR" \
    --rewards true random --ablation clip-off on-policy --parallel 12 --device cuda -q \
    > "$WORK/ablations.log" 2>&1
) &
for base in code-hurts no-code; do
  $DYN lab run --size small --out "$WORK/$base" --bases "$base" --seeds $SEEDS --grpo-lr "$LR" \
    --rewards true format random incorrect --parallel 6 --device cuda -q > "$WORK/main-$base.log" 2>&1 &
done
$DYN lab run --size small --out "$WORK/template" --bases template --seeds $SEEDS --grpo-lr "$LR" \
  --rewards true random --parallel 6 --device cuda -q > "$WORK/main-template.log" 2>&1 &
wait

phase "3: KL per saved step, series with geometry per run"
LABS="$WORK/code-helps $WORK/code-hurts $WORK/no-code $WORK/template"
for lab in $LABS; do $DYN lab link "$lab" --device cuda -q > "$lab-link.log" 2>&1 & done
wait
python - $LABS <<'EOF' | xargs -P 16 -I{} sh -c "$DYN series {} --geometry --device cuda -q > /dev/null 2>&1"
import json, sys
from pathlib import Path
for lab in map(Path, sys.argv[1:]):
    for entry in json.loads((lab / "manifest.json").read_text())["runs"]:
        print(lab / entry["path"])
EOF

phase "4: the comparison report, and the files behind it packed into OUT (weights stay in WORK)"
$DYN report compare $LABS -o "$WORK/compare" --device cuda -q > "$WORK/compare.log" 2>&1
(cd "$WORK" && find . -name run.json -o -name train_log.jsonl -o -name style.jsonl -o -name series.json \
   -o -path "*/kl/step_*.json" -o -name manifest.json -o -name "majority-*.json" -o -name "*.log" \
   -o -path "./compare/*" | grep -v "/cache/" | tar -czf "$OUT/results.tar.gz" -T -)
for base in code-helps code-hurts no-code template; do
  (cd "$WORK" && find "$base" -name generations.jsonl | tar -cJf "$OUT/generations-$base.tar.xz" -T -)
done
phase "done"
