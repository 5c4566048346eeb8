#!/usr/bin/env bash
# Train (or resume) the shipped `small` TexTok and Baseline with identical settings and compute,
# then evaluate them. Safe to run again: every run resumes where it stopped.
#
#   bash models/scripts/train_shipped.sh CORPUS_DIR RUNS_DIR [STEPS [LR]]
#
# CORPUS_DIR comes from models/scripts/build_corpus.py. On a 2-core CPU the two runs go side by
# side, one thread each (3.4 images/s each at batch 8, measured), at low priority so the machine
# stays usable. Ctrl-C (or SIGINT to the runs) saves their state.
set -euo pipefail
corpus=${1:?corpus folder}
runs=${2:?runs folder}
steps=${3:-8000}
lr=${4:-6e-4}
bin=${TEXTOK_STUDIO:-target/release/textok-studio}
common=(--data "$corpus" --preset small --steps "$steps" --batch 8 --lr "$lr" --warmup 200
        --eval-every 250 --eval-images 64 --checkpoint-minutes 10 --seed 0 --device cpu)
mkdir -p "$runs"
pids=()
for model in textok baseline; do
  flags=()
  [ "$model" = baseline ] && flags+=(--no-text)
  [ -f "$runs/$model/state.safetensors" ] && flags+=(--resume)
  RAYON_NUM_THREADS=1 nice -n 19 "$bin" train tokenizer "${common[@]}" "${flags[@]}" --out "$runs/$model" \
    >>"$runs/$model.log" 2>&1 &
  pids+=($!)
done
trap 'kill -INT "${pids[@]}" 2>/dev/null; wait' INT TERM
wait "${pids[@]}"
"$bin" eval --data "$corpus" --model "$runs/textok/ema.safetensors" --baseline "$runs/baseline/ema.safetensors" \
  --tokens 32,64,128,256 --json "$runs/eval.json" --sheet "$runs/contact-sheet.png" --device cpu | tee "$runs/eval.txt"
