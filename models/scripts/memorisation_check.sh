#!/usr/bin/env bash
# Can the DiT + sampler + detokenizer make a recognisable image at all, given enough training
# per image? Trains a `small` DiT on 256 emoji of the corpus (no skin-tone variants, no flags;
# a fixed random choice) at 64 tokens until it nearly memorises them, then generates 4 of its
# own training captions (4 seeds each) next to the originals and their 64-token
# reconstructions. If these generations look like the reconstructions, the pipeline is sound
# and what the full-corpus generator lacks is training; if not, something in between is wrong.
#
#   bash models/scripts/memorisation_check.sh CORPUS_DIR OUT_DIR [STEPS]
#
# Needs python3 (to pick the subset) and, for the sheet, Pillow. 600 steps took 17 minutes on
# our 2-core CPU (both cores, 18 images/s).
set -euo pipefail
corpus=$(cd "${1:?corpus folder}" && pwd)
out=${2:?output folder}
steps=${3:-600}
bin=${TEXTOK_STUDIO:-target/release/textok-studio}
mkdir -p "$out/corpus"
ln -sfn "$corpus/emoji" "$out/corpus/emoji"
python3 - "$corpus" "$out" <<'PY'
import json, random, sys
corpus, out = sys.argv[1], sys.argv[2]
rows = [json.loads(line) for line in open(f"{corpus}/captions.jsonl", encoding="utf-8")]
emoji = [r for r in rows if r["file"].startswith("emoji/")
         and "skin tone" not in r["caption"] and "flag" not in r["caption"]]
random.seed(1)
random.shuffle(emoji)
chosen = emoji[:256]
with open(f"{out}/corpus/captions.jsonl", "w", encoding="utf-8") as f:
    for r in chosen:
        f.write(json.dumps(r) + "\n")
# Four captions to try: evenly spaced through the subset in file order (every kind of emoji).
with open(f"{out}/probe.jsonl", "w", encoding="utf-8") as f:
    for r in sorted(chosen, key=lambda r: r["file"])[::64]:
        f.write(json.dumps(r) + "\n")
PY
flags=()
[ -f "$out/run/state.safetensors" ] && flags+=(--resume)
"$bin" train dit --data "$out/corpus" --preset small --steps "$steps" --batch 32 --lr 5e-4 \
  --min-budget 64 --max-budget 64 --position-init geometry --checkpoint-minutes 5 --seed 0 \
  --device cpu --out "$out/run" "${flags[@]}"
"$bin" export-f16 "$out/run/ema.safetensors" "$out/dit.safetensors"
bash "$(dirname "$0")/probe_sheet.sh" "$out/probe.jsonl" "$corpus" "$out" "$out/memorisation-sheet.png" 128 \
  "$out/dit.safetensors"
