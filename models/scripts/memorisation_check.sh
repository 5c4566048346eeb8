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
i=0
while IFS= read -r line; do
  file=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["file"])' "$line")
  caption=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["caption"])' "$line")
  "$bin" generate --caption "$caption" --tokens 64 --steps 50 --cfg 3 --count 4 --seed 1 \
    --dit "$out/dit.safetensors" --device cpu --out "$out/probe/$i/generated" >/dev/null
  "$bin" reconstruct --image "$corpus/$file" --caption "$caption" --tokens 64 --no-baseline --overwrite \
    --device cpu --out "$out/probe/$i/reconstructed" >/dev/null
  i=$((i + 1))
done <"$out/probe.jsonl"
python3 - "$out" <<'PY' || echo "no sheet (needs Pillow); the images are in $1/probe"
import glob, sys
from PIL import Image
out = sys.argv[1]
size = 128
sheet = Image.new("RGB", (6 * size, 4 * size), "white")
for row in range(4):
    images = [f"{out}/probe/{row}/reconstructed/original.png",
              f"{out}/probe/{row}/reconstructed/textok-64.png"]
    images += sorted(glob.glob(f"{out}/probe/{row}/generated/*.png"))
    for col, path in enumerate(images[:6]):
        sheet.paste(Image.open(path).convert("RGB").resize((size, size)), (col * size, row * size))
sheet.save(f"{out}/memorisation-sheet.png")
print(f"wrote {out}/memorisation-sheet.png")
PY
