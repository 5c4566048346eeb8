#!/usr/bin/env bash
# Fine-tune the detokenizers of the shipped TexTok and Baseline with identical settings, then
# score them against the shipped pair. The tokenizers (encoders) stay frozen, so the tokens, and
# a DiT trained on them, stay exactly as they were. Safe to run again: every run resumes.
#
#   bash models/scripts/finetune_decoders.sh CORPUS_DIR RUNS_DIR [STEPS [NOISE [MINUTES]]]
#
# STEPS (default 400) is the schedule's length; MINUTES (default: none) shortens it to what fits
# in that time, so the learning rate still decays. NOISE (default 0.5) trains on tokens off by
# up to that share of their spread: the first shipped decoders turned tokens that are off by
# 10-30 % (what a small DiT samples) into a mosaic of wrong patches. NOISE 0 trains on clean
# tokens: a sharper decoder after the shipped one's single epoch. Runs side by side, one
# thread each, nice 19. SEED (environment, default 0) picks the random draws (with
# replacement) of each batch: a further round with another seed does not repeat an earlier
# round's draws. REFINE_HEAD (environment, default none) adds a refinement head of that many
# channels to files that have none (`train tokenizer --refine-head`); files with one keep it.
set -euo pipefail
corpus=${1:?corpus folder}
runs=${2:?runs folder}
steps=${3:-400}
noise=${4:-0.5}
minutes=${5:-}
bin=${TEXTOK_STUDIO:-target/release/textok-studio}
models=${TEXTOK_MODELS_DIR:-models}
common=(--data "$corpus" --preset small --steps "$steps" --batch 8 --lr 3e-4 --warmup 20
        --eval-every 250 --eval-images 64 --checkpoint-minutes 10 --seed "${SEED:-0}" --device cpu
        --freeze-encoder --token-noise "$noise")
[ -n "$minutes" ] && common+=(--max-minutes "$minutes")
[ -n "${REFINE_HEAD:-}" ] && common+=(--refine-head "$REFINE_HEAD")
mkdir -p "$runs"
pids=()
for model in textok baseline; do
  flags=(--init-from "$models/$model-small.safetensors")
  [ "$model" = baseline ] && flags+=(--no-text)
  [ -f "$runs/$model/state.safetensors" ] && flags+=(--resume)
  RAYON_NUM_THREADS=1 nice -n 19 "$bin" train tokenizer "${common[@]}" "${flags[@]}" --out "$runs/$model" \
    >>"$runs/$model.log" 2>&1 &
  pids+=($!)
done
trap 'kill -INT "${pids[@]}" 2>/dev/null; wait' INT TERM
wait "${pids[@]}"
for model in textok baseline; do
  "$bin" export-f16 "$runs/$model/ema.safetensors" "$runs/$model-small.safetensors"
done
new=(--model "$runs/textok-small.safetensors" --baseline "$runs/baseline-small.safetensors")
# Plain reconstruction (the shipping table), new pair.
"$bin" eval --data "$corpus" "${new[@]}" --tokens 32,64,128,256 --json "$runs/eval.json" \
  --sheet "$runs/contact-sheet.png" --device cpu | tee "$runs/eval.txt"
if [ "$noise" != 0 ]; then
  # Robustness (tokens off by 30 %), new and shipped.
  "$bin" eval --data "$corpus" "${new[@]}" --tokens 64 --token-noise 0.3 \
    --json "$runs/eval-noise.json" --device cpu | tee "$runs/eval-noise.txt"
  "$bin" eval --data "$corpus" --tokens 64 --token-noise 0.3 \
    --json "$runs/eval-noise-shipped.json" --device cpu | tee "$runs/eval-noise-shipped.txt"
fi
