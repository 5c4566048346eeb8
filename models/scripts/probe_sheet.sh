#!/usr/bin/env bash
# Generates each caption of a probe list (4 seeds, 64 tokens, 50 DDIM steps, guidance 3) next to
# its original and the shipped TexTok's own 64-token reconstruction, and lays them out as one
# sheet: a row per caption; columns original, reconstruction, seeds 1-4. Used by
# memorisation_check.sh and seen_unseen_sheet.sh.
#
#   bash models/scripts/probe_sheet.sh PROBE_JSONL CORPUS_DIR OUT_DIR SHEET TILE [DIT]
#
# PROBE_JSONL: lines of the dataset format ({"file": ..., "caption": ...}, files relative to
# CORPUS_DIR). Writes OUT_DIR/probe/ROW/{generated,reconstructed} and SHEET (TILE pixels a
# tile). Needs python3 and Pillow.
set -euo pipefail
probe=${1:?probe list} corpus=${2:?corpus folder} out=${3:?output folder}
sheet=${4:?sheet file} tile=${5:?tile size} dit=${6:-}
bin=${TEXTOK_STUDIO:-target/release/textok-studio}
dit_flag=()
[ -n "$dit" ] && dit_flag=(--dit "$dit")
mkdir -p "$out"
i=0
while IFS= read -r line; do
  file=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["file"])' "$line")
  caption=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["caption"])' "$line")
  "$bin" generate --caption "$caption" --tokens 64 --steps 50 --cfg 3 --count 4 --seed 1 \
    "${dit_flag[@]}" --device cpu --out "$out/probe/$i/generated" >/dev/null 2>"$out/log" \
    || { cat "$out/log"; exit 1; }
  "$bin" reconstruct --image "$corpus/$file" --caption "$caption" --tokens 64 --no-baseline \
    --overwrite --device cpu --out "$out/probe/$i/reconstructed" >/dev/null 2>"$out/log" \
    || { cat "$out/log"; exit 1; }
  i=$((i + 1))
done <"$probe"
python3 - "$out" "$i" "$sheet" "$tile" <<'PY' || echo "no sheet (needs Pillow); the images are in $out/probe"
import glob, sys
from PIL import Image
out, count, path, size = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
sheet = Image.new("RGB", (6 * size, count * size), "white")
for row in range(count):
    images = [f"{out}/probe/{row}/reconstructed/original.png",
              f"{out}/probe/{row}/reconstructed/textok-64.png"]
    images += sorted(glob.glob(f"{out}/probe/{row}/generated/*.png"))
    for col, image in enumerate(images[:6]):
        tile = Image.open(image).convert("RGB").resize((size, size), Image.LANCZOS)
        sheet.paste(tile, (col * size, row * size))
sheet.save(path)
print(f"wrote {path}")
PY
