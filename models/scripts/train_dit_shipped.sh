#!/usr/bin/env bash
# Train (or resume) the `small` DiT on the shipped TexTok's tokens and, with identical settings,
# on the shipped Baseline's tokens; then compare them with FD-EffNet of generated images against
# the validation images (the paper's gFID claim). Safe to run again: every run resumes.
# The shipped generator is $RUNS/dit-textok-small.safetensors, copied to models/dit-small.safetensors.
#
#   bash models/scripts/train_dit_shipped.sh CORPUS_DIR RUNS_DIR [STEPS [FOCUS_STEPS]]
#
# Two stages per model: STEPS (default 1200) on nested budgets 32..256, then the focus stage,
# started from that stage's EMA weights on budgets 32..96 only: this tokenizer's decoder reads
# hardly anything past slot 85, so the focus stage spends all of its compute on the tokens that
# make the picture (2.7x the examples per second). FOCUS_STEPS is a comma-separated list of step
# counts the focus stage is trained to in turn (default 2400,4800; 0 skips it): each one after
# the first continues the run with `--resume`, which stretches the cosine schedule to the new
# count (the learning rate climbs back, then decays again). The shipped dit-small is the focus
# stage's EMA after the last count.
#
# GPU_MINUTES (default 0: skipped) adds the GPU stage the shipped dit-small ends with: both models
# continue from their focus-stage EMA on the GPU (`--device gpu`, batch 256, learning rate 3e-4,
# 100 warm-up steps) for that many minutes each, side by side on the one GPU; `--max-minutes`
# shortens each cosine schedule to the steps its measured speed reaches, so both end annealed.
# The shipped one: GPU_MINUTES=8 on an NVIDIA H200 through wgpu/Vulkan (models/README.md).
#
# DIT_FLAGS holds the architecture/normalisation flags of `train dit`; its default is the recipe
# of the shipped dit-small (see models/README.md).
# The two runs go side by side, one thread each, at low priority (as train_shipped.sh).
set -euo pipefail
corpus=${1:?corpus folder}
runs=${2:?runs folder}
steps=${3:-1200}
focus_steps=${4:-2400,4800}
bin=${TEXTOK_STUDIO:-target/release/textok-studio}
models=${TEXTOK_MODELS_DIR:-models}
base=(--data "$corpus" --preset small --batch 32 --checkpoint-minutes 10 --device cpu)
read -ra recipe <<<"${DIT_FLAGS:---latent-norm channel}"
mkdir -p "$runs"
pids=()
trap 'kill -INT "${pids[@]}" 2>/dev/null; wait' INT TERM
# train_both STAGE FROM COMMAND...: runs COMMAND (a `train dit` with the stage's settings) for both
# models side by side into $runs/STAGE-MODEL, starting from $runs/FROM-MODEL's EMA weights unless
# FROM is empty and resuming a folder that holds a state, then waits for both.
train_both() {
  local stage=$1 from=$2 model
  shift 2
  pids=()
  for model in textok baseline; do
    local flags=()
    [ -n "$from" ] && flags+=(--init-from "$runs/$from-$model/ema.safetensors")
    [ -f "$runs/$stage-$model/state.safetensors" ] && flags+=(--resume)
    "$@" "${flags[@]}" --tokenizer "$models/$model-small.safetensors" --out "$runs/$stage-$model" \
      >>"$runs/$stage-$model.log" 2>&1 &
    pids+=($!)
  done
  wait "${pids[@]}"
}
cpu=(env RAYON_NUM_THREADS=1 nice -n 19 "$bin" train dit "${base[@]}")
train_both dit "" "${cpu[@]}" --steps "$steps" --seed 0 "${recipe[@]}"
final=dit
if [ "$focus_steps" != 0 ]; then
  IFS=, read -ra focus_counts <<<"$focus_steps"
  for count in "${focus_counts[@]}"; do
    train_both focus dit "${cpu[@]}" --steps "$count" --seed 1 --min-budget 32 --max-budget 96
  done
  final=focus
fi
gpu_minutes=${GPU_MINUTES:-0}
if [ "$gpu_minutes" != 0 ]; then
  train_both gpu "$final" "$bin" train dit --data "$corpus" --preset small --device gpu --batch 256 --lr 3e-4 \
    --warmup 100 --steps 100000 --max-minutes "$gpu_minutes" --checkpoint-minutes 2 --seed 2 \
    --min-budget 32 --max-budget 96
  final=gpu
fi
# Evaluate what ships: the EMA weights stored as f16.
for model in textok baseline; do
  "$bin" export-f16 "$runs/$final-$model/ema.safetensors" "$runs/dit-$model-small.safetensors"
done
"$bin" gen-eval --data "$corpus" --images 500 --tokens 64 --steps 50 --cfg 3 \
  --model "$models/textok-small.safetensors" --dit "$runs/dit-textok-small.safetensors" \
  --baseline "$models/baseline-small.safetensors" --baseline-dit "$runs/dit-baseline-small.safetensors" \
  --json "$runs/gen-eval.json" --sheet "$runs/gen-sheet.png" --device cpu | tee "$runs/gen-eval.txt"
