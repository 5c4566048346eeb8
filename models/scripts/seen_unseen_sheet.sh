#!/usr/bin/env bash
# What does the shipped full-corpus DiT make of captions it trained on, and of captions it never
# saw? Generates, at 64 tokens, the four captions of memorisation_check.sh's probe (three are
# training captions, "fearful face" is a validation one), four validation emoji captions (every
# 17th of the 71 validation emoji that are neither skin-tone variants nor flags) and four
# validation skin-tone variants (every 20th of 80: the same emoji in other skin tones is in the
# training split), four seeds each, next to the original and the shipped TexTok's own 64-token
# reconstruction. With a corpus built with `build_corpus.py --icons`, four validation icons follow
# (every 64th of the 259: each icon name is drawn by other themes in the training split).
#
#   bash models/scripts/seen_unseen_sheet.sh CORPUS_DIR OUT_DIR [DIT]
#
# Writes OUT_DIR/seen-unseen-sheet.png (rows in that order; columns: original, reconstruction,
# seeds 1-4). Needs python3 and Pillow; 2-3 minutes on our 2-core CPU with the dev build.
set -euo pipefail
corpus=$(cd "${1:?corpus folder}" && pwd)
out=${2:?output folder}
dit=${3:-}
mkdir -p "$out"
python3 - "$corpus" "$out" <<'PY'
import json, random, sys
corpus, out = sys.argv[1], sys.argv[2]
rows = [json.loads(line) for line in open(f"{corpus}/captions.jsonl", encoding="utf-8")]


def validation(relative):
    # app/data/dataset.rs `split_of`: FNV-1a of the relative path, 5 % validation.
    h = 0xcbf29ce484222325
    for byte in relative.encode():
        h = ((h ^ byte) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h % 100 < 5


plain = [r for r in rows if r["file"].startswith("emoji/")
         and "skin tone" not in r["caption"] and "flag" not in r["caption"]]
# memorisation_check.sh's choice, then its four probe captions.
chosen = list(plain)
random.seed(1)
random.shuffle(chosen)
probe = sorted(chosen[:256], key=lambda r: r["file"])[::64]


def four_spread(group):
    """Four of the group, evenly spaced (all of it when it has fewer than four; none if empty)."""
    return group[::max(1, len(group) // 4)][:4]


probe += four_spread([r for r in plain if validation(r["file"])])
probe += four_spread([r for r in rows if "skin tone" in r["caption"] and validation(r["file"])])
probe += four_spread([r for r in rows if r["file"].startswith("icons/") and validation(r["file"])])
with open(f"{out}/probe.jsonl", "w", encoding="utf-8") as f:
    for r in probe:
        f.write(json.dumps(r) + "\n")
        print(("validation" if validation(r["file"]) else "training  "), r["caption"])
PY
bash "$(dirname "$0")/probe_sheet.sh" "$out/probe.jsonl" "$corpus" "$out" "$out/seen-unseen-sheet.png" 96 "$dit"
