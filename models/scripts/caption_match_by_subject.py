#!/usr/bin/env python3
"""Splits a `gen-eval` caption match by whether the training split drew the caption's subject.

    python3 models/scripts/caption_match_by_subject.py CORPUS_DIR GEN_EVAL.json [TRAINING_CORPUS_DIR]

CORPUS_DIR is the corpus `gen-eval --data` read (its `captions.jsonl`); GEN_EVAL.json what
`gen-eval --json` wrote (records with `per_image`); TRAINING_CORPUS_DIR, when the DiT trained on
another corpus than CORPUS_DIR (one with more drawings, e.g. `build_corpus.py --emojione`), the
corpus whose training split decides what was drawn (default: CORPUS_DIR's). A validation image's
subject is drawn in training when a training image has the same subject: for an emoji its name without the skin
tone ("woman walking: medium-dark skin tone" -> "woman walking"), for an icon its name (each
theme draws it in its own style), for clip art its title, for a Tux Paint stamp its caption.
Prints, per generator, the caption match (rank under 5) of both groups, overall and by source.
"""
import json
import sys
from collections import defaultdict

MATCH_K = 5


def in_validation(relative):
    # app/data/dataset.rs `split_of`: FNV-1a of the relative path, 5 % validation.
    h = 0xCBF29CE484222325
    for byte in relative.encode():
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h % 100 < 5


def subject(file, caption):
    source = file.split("/", 1)[0]  # EmojiOne's emoji/emojione/... count as emoji too
    if source == "emoji":
        name = caption.split(", an emoji", 1)[0]
        head, _, tail = name.partition(": ")
        return source, (head if "skin tone" in tail else name).strip().lower()
    if source == "icons":
        return source, caption.split(", an icon", 1)[0].strip().lower()
    if source == "openclipart":
        return source, caption.split(" (clip art", 1)[0].strip().lower()
    return source, caption.strip().lower()


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    corpus, report = sys.argv[1], sys.argv[2]
    training = sys.argv[3] if len(sys.argv) == 4 else corpus
    rows = [json.loads(line) for line in open(f"{training}/captions.jsonl", encoding="utf-8")]
    drawn = {subject(r["file"], r["caption"]) for r in rows if not in_validation(r["file"])}
    for record in json.load(open(report, encoding="utf-8")):
        images = record.get("per_image") or []
        if not images:
            print(f"{record['model']}: no per-image ranks (an older gen-eval)")
            continue
        groups = defaultdict(lambda: [0, 0])
        for image in images:
            if image["rank"] is None:
                continue
            source, name = subject(image["file"], image["caption"])
            kind = "drawn in training" if (source, name) in drawn else "never drawn"
            matched = image["rank"] < MATCH_K
            for key in [(kind, "all"), (kind, source)]:
                groups[key][0] += matched
                groups[key][1] += 1
        print(f"{record['model']}: {record['tokens']} tokens, {len(images)} images")
        for (kind, source), (matched, total) in sorted(groups.items()):
            print(f"  {kind:<18} {source:<12} {matched:>4} of {total:>4} match "
                  f"({100.0 * matched / total:5.1f} %)")


if __name__ == "__main__":
    main()
