#!/usr/bin/env python3
"""Build TexTok Studio's bundled training corpus from Debian packages.

    pip install fonttools            # reads the emoji font's CBDT bitmaps and GSUB ligatures
    python3 models/scripts/build_corpus.py OUT_DIR [--cache DIR] [--icons] [--emojione]

Fetches (apt-get download + dpkg -x, nothing is installed):
  fonts-noto-color-emoji  Noto Color Emoji bitmaps (OFL-1.1)
  unicode-data            emoji-test.txt: names, groups, subgroups (Unicode licence)
  unicode-cldr-core       CLDR English emoji keywords (Unicode licence)
  tuxpaint-stamps-default Tux Paint stamps with one-sentence captions (GPL-2)
  openclipart-png/-svg    Open Clip Art Library, titles and descriptions (public domain)
With --icons also 16 icon themes (ICON_THEMES; GPL, LGPL and CC-BY-SA licences, see the data
card) and librsvg2-bin for rsvg-convert: every freedesktop icon name that 3 or more themes draw,
once per theme, so the corpus holds several drawings of each of those things. The shipped
tokenizers were trained without it; the shipped DiT's last two stages with it.
With --emojione also ruby-gemojione's EmojiOne 2 drawings (CC-BY-SA-4.0; SVG, rasterised with
rsvg-convert) of the emoji Noto draws too, a second drawing of each, under emoji/emojione/.

Writes OUT_DIR/{emoji,tuxpaint,openclipart,icons}/... images, OUT_DIR/captions.jsonl (the dataset
format the app reads) and OUT_DIR/corpus-report.json (counts and caption examples).
The output is deterministic for the same package versions.
"""
import argparse
import glob
import html
import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

PACKAGES = ["fonts-noto-color-emoji", "unicode-data", "unicode-cldr-core",
            "tuxpaint-stamps-default", "openclipart-png", "openclipart-svg"]


# package -> (its main theme folder under usr/share/icons, the name captions give its style)
ICON_THEMES = {
    "adwaita-icon-theme": ("Adwaita", "Adwaita"), "breeze-icon-theme": ("breeze", "Breeze"),
    "elementary-xfce-icon-theme": ("elementary-xfce", "elementary Xfce"),
    "faba-icon-theme": ("Faba", "Faba"), "faenza-icon-theme": ("Faenza", "Faenza"),
    "gnome-colors-common": ("gnome-colors-common", "GNOME Colors"),
    "gnome-icon-theme": ("gnome", "GNOME"), "gnome-icon-theme-nuovo": ("Nuovo", "Nuovo"),
    "gnome-icon-theme-yasis": ("yasis", "YASIS"), "lxde-icon-theme": ("nuoveXT2", "nuoveXT2"),
    "mate-icon-theme": ("mate", "MATE"), "moka-icon-theme": ("Moka", "Moka"),
    "numix-icon-theme": ("Numix", "Numix"), "oxygen-icon-theme": ("oxygen", "Oxygen"),
    "papirus-icon-theme": ("Papirus", "Papirus"), "tango-icon-theme": ("Tango", "Tango"),
}
ICON_PACKAGES = list(ICON_THEMES) + ["librsvg2-bin"]
EMOJIONE_PACKAGES = ["ruby-gemojione", "librsvg2-bin"]


def fetch(cache, packages):
    """apt-get download + dpkg -x each package into cache/<name>/ (skips ones already there)."""
    os.makedirs(cache, exist_ok=True)
    roots = {}
    for name in packages:
        root = os.path.join(cache, name)
        if not os.path.isdir(root):
            debs = glob.glob(os.path.join(cache, f"{name}_*.deb"))
            if not debs:
                subprocess.run(["apt-get", "download", name], cwd=cache, check=True)
                debs = glob.glob(os.path.join(cache, f"{name}_*.deb"))
            subprocess.run(["dpkg", "-x", debs[0], root], check=True)
        roots[name] = root
    return roots


def clean(text):
    return re.sub(r"\s+", " ", html.unescape(text or "")).strip()


# ---------------------------------------------------------------- emoji
def emoji_test(path):
    """sequence (hex without FE0F) -> (name, group, subgroup) for fully-qualified emoji."""
    out, group, subgroup = {}, "", ""
    for line in open(path, encoding="utf-8"):
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line.startswith("# subgroup:"):
            subgroup = line.split(":", 1)[1].strip()
        elif line.strip() and not line.startswith("#"):
            codes, rest = line.split(";", 1)
            status, comment = rest.split("#", 1)
            if status.strip() not in ("fully-qualified", "component"):
                continue
            name = comment.strip().split(" ", 2)[2]  # "😀 E1.0 grinning face"
            key = tuple(c for c in codes.split() if c != "FE0F")
            out.setdefault(key, (name, group, subgroup))
    return out


def cldr_keywords(path):
    """emoji string (without FE0F) -> list of keywords."""
    out = {}
    for node in ET.parse(path).getroot().iter("annotation"):
        if node.get("type") == "tts":
            continue
        key = node.get("cp").replace("\ufe0f", "")
        out[key] = [k.strip() for k in (node.text or "").split("|") if k.strip()]
    return out


def glyph_sequences(font):
    """glyph name -> tuple of codepoints (hex), from cmap and GSUB ligatures."""
    cmap = font.getBestCmap()
    seq = {glyph: (f"{cp:04X}",) for cp, glyph in cmap.items()}
    changed = True
    ligatures = []
    for lookup in font["GSUB"].table.LookupList.Lookup:
        for sub in lookup.SubTable:
            if lookup.LookupType == 7:
                sub = sub.ExtSubTable
            if getattr(sub, "LookupType", lookup.LookupType) == 4:
                for first, ligs in sub.ligatures.items():
                    for lig in ligs:
                        ligatures.append(([first] + list(lig.Component), lig.LigGlyph))
    while changed:  # ligatures of ligatures resolve in a few passes
        changed = False
        for components, glyph in ligatures:
            if glyph not in seq and all(c in seq for c in components):
                seq[glyph] = tuple(cp for c in components for cp in seq[c] if cp != "FE0F")
                changed = True
    return seq


def emoji_tables(roots):
    """(sequence -> (name, group, subgroup), emoji string -> CLDR keywords)."""
    names = emoji_test(os.path.join(roots["unicode-data"], "usr/share/unicode/emoji/emoji-test.txt"))
    cldr = os.path.join(roots["unicode-cldr-core"], "usr/share/unicode/cldr/common")
    keywords = cldr_keywords(os.path.join(cldr, "annotations/en.xml"))
    # Skin-tone, gender and other derived sequences have their keywords here.
    for key, words in cldr_keywords(os.path.join(cldr, "annotationsDerived/en.xml")).items():
        keywords.setdefault(key, words)
    return names, keywords


def emoji_caption(key, names, keywords, style=None):
    """"grinning face, an emoji (smileys & emotion, face smiling); face, grin"; a style other than
    Noto's is named in the brackets ("...; EmojiOne style)"), as icon captions name their theme."""
    name, group, subgroup = names[key]
    text = "".join(chr(int(c, 16)) for c in key)
    words = [k for k in keywords.get(text, []) if k.lower() != name.lower()][:5]
    caption = f"{name}, an emoji ({group.lower()}, {subgroup.replace('-', ' ')}"
    caption += f"; {style} style)" if style else ")"
    if words:
        caption += "; " + ", ".join(words)
    return caption


def build_emoji(roots, tables, out_dir, records):
    from fontTools.ttLib import TTFont
    font_path = glob.glob(os.path.join(roots["fonts-noto-color-emoji"], "usr/share/fonts/**/NotoColorEmoji.ttf"), recursive=True)[0]
    names, keywords = tables
    font = TTFont(font_path)
    sequences = glyph_sequences(font)
    by_multiset, ambiguous = {}, set()
    for key in names:
        sorted_key = tuple(sorted(key))
        if sorted_key in by_multiset:
            ambiguous.add(sorted_key)
        by_multiset[sorted_key] = key
    for sorted_key in ambiguous:
        del by_multiset[sorted_key]
    os.makedirs(os.path.join(out_dir, "emoji"), exist_ok=True)
    stats = {"bitmaps": 0, "named": 0}
    for glyph, bitmap in sorted(font["CBDT"].strikeData[0].items()):
        stats["bitmaps"] += 1
        key = tuple(c for c in sequences.get(glyph, ()) if c != "FE0F")
        if key not in names:
            # Some of the font's ligatures are built in stages whose component order differs
            # from the emoji sequence; match those by their set of codepoints when unambiguous.
            key = by_multiset.get(tuple(sorted(key)))
            if key is None:
                continue
        if names[key][1] == "Component":
            continue
        caption = emoji_caption(key, names, keywords)
        file = "emoji/" + "-".join(key).lower() + ".png"
        with open(os.path.join(out_dir, file), "wb") as f:
            f.write(bitmap.imageData)
        records.append({"file": file, "caption": caption, "source": "fonts-noto-color-emoji"})
        stats["named"] += 1
    return stats


def rsvg_convert(roots):
    """The path of rsvg-convert from librsvg2-bin, once it is known to run here."""
    rsvg = os.path.join(roots["librsvg2-bin"], "usr/bin/rsvg-convert")
    try:
        check = subprocess.run([rsvg, "--version"], capture_output=True, text=True)
        problem = check.stderr.strip() if check.returncode != 0 else None
    except OSError as error:  # missing, or not an executable for this machine
        problem = str(error)
    if problem is not None:
        sys.exit(f"{rsvg} does not run here (it needs the system's librsvg2-2): {problem}")
    return rsvg


def build_emojione(roots, tables, out_dir, records):
    """EmojiOne's drawing of every emoji the Noto font draws too (so the two share a subject and
    the DiT sees such subjects in two styles), rasterised to 128 px."""
    rsvg = rsvg_convert(roots)
    names, keywords = tables
    drawn_by_noto = {r["file"] for r in records if r["source"] == "fonts-noto-color-emoji"}
    base = glob.glob(os.path.join(roots["ruby-gemojione"], "usr/share/rubygems-integration/all/gems/gemojione-*/assets/svg"))[0]
    stats = {"drawings": 0, "kept": 0, "not_in_noto": 0, "failed": 0}
    os.makedirs(os.path.join(out_dir, "emoji/emojione"), exist_ok=True)
    for path in sorted(glob.glob(os.path.join(base, "*.svg"))):
        stats["drawings"] += 1
        codes = os.path.splitext(os.path.basename(path))[0].upper().split("-")
        key = tuple(c for c in codes if c != "FE0F")
        noto_file = "emoji/" + "-".join(key).lower() + ".png"
        if noto_file not in drawn_by_noto:  # its key is then one of `names`
            stats["not_in_noto"] += 1
            continue
        file = "emoji/emojione/" + "-".join(key).lower() + ".png"
        target = os.path.join(out_dir, file)
        result = subprocess.run([rsvg, "-w", "128", "-h", "128", "--keep-aspect-ratio", "-o", target, path],
                                capture_output=True)
        if result.returncode != 0 or not os.path.isfile(target):
            stats["failed"] += 1
            continue
        caption = emoji_caption(key, names, keywords, style="EmojiOne")
        records.append({"file": file, "caption": caption, "source": "ruby-gemojione"})
        stats["kept"] += 1
    return stats


# ---------------------------------------------------------------- tux paint
def build_tuxpaint(roots, out_dir, records):
    base = os.path.join(roots["tuxpaint-stamps-default"], "usr/share/tuxpaint/stamps")
    stats = {"png_with_caption": 0, "svg_skipped": 0, "no_caption": 0}
    for path in sorted(glob.glob(os.path.join(base, "**/*"), recursive=True)):
        ext = os.path.splitext(path)[1].lower()
        if ext == ".svg":
            stats["svg_skipped"] += 1
            continue
        if ext != ".png":
            continue
        sidecar = os.path.splitext(path)[0] + ".txt"
        if not os.path.isfile(sidecar):
            stats["no_caption"] += 1
            continue
        first = open(sidecar, encoding="utf-8", errors="replace").readline()
        caption = clean(first)
        if not caption or "=" in caption.split(" ")[0]:
            stats["no_caption"] += 1
            continue
        rel = os.path.relpath(path, base)
        file = "tuxpaint/" + rel.replace(os.sep, "/")
        os.makedirs(os.path.dirname(os.path.join(out_dir, file)), exist_ok=True)
        shutil.copyfile(path, os.path.join(out_dir, file))
        records.append({"file": file, "caption": caption, "source": "tuxpaint-stamps-default"})
        stats["png_with_caption"] += 1
    return stats


# ---------------------------------------------------------------- openclipart
JUNK_TITLE = re.compile(r"^(untitled|unnamed|new document|drawing|image|clipart|clip art|test|[\w-]*\d{2,}[\w-]*|.{0,2})$", re.I)
DC = "{http://purl.org/dc/elements/1.1/}"


def svg_metadata(path):
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        return "", ""
    title = desc = ""
    for node in root.iter():
        if node.tag == DC + "title" and not title:
            title = clean("".join(node.itertext()))
        elif node.tag == DC + "description" and not desc:
            desc = clean("".join(node.itertext()))
    return title, desc


def build_openclipart(roots, out_dir, records):
    png_base = os.path.join(roots["openclipart-png"], "usr/share/openclipart/png")
    svg_base = os.path.join(roots["openclipart-svg"], "usr/share/openclipart/svg")
    stats = {"png": 0, "no_svg": 0, "junk_title": 0, "duplicate": 0, "kept": 0}
    seen = set()
    for path in sorted(glob.glob(os.path.join(png_base, "**/*.png"), recursive=True)):
        stats["png"] += 1
        rel = os.path.relpath(path, png_base)
        # The same drawing is filed under several categories; keep its first copy.
        if os.path.basename(rel) in seen:
            stats["duplicate"] += 1
            continue
        seen.add(os.path.basename(rel))
        svg = os.path.join(svg_base, os.path.splitext(rel)[0] + ".svg")
        if not os.path.isfile(svg):
            stats["no_svg"] += 1
            continue
        title, desc = svg_metadata(svg)
        if not title or JUNK_TITLE.match(title) or title.startswith("Part of the Flat Icon Collection"):
            stats["junk_title"] += 1
            continue
        caption = title
        if desc and desc.lower() != title.lower() and not desc.startswith("Part of the Flat Icon Collection"):
            caption += ". " + desc
        # The category folders (e.g. "animals/birds") add the words most titles leave out.
        category = os.path.dirname(rel).replace(os.sep, ", ").replace("_", " ")
        caption = caption[:250] + (f" (clip art: {category})" if category else " (clip art)")
        file = "openclipart/" + rel.replace(os.sep, "/")
        os.makedirs(os.path.dirname(os.path.join(out_dir, file)), exist_ok=True)
        shutil.copyfile(path, os.path.join(out_dir, file))
        records.append({"file": file, "caption": caption, "source": "openclipart"})
        stats["kept"] += 1
    return stats


# ---------------------------------------------------------------- icon themes
# The freedesktop icon contexts, as words for the caption.
ICON_CONTEXTS = {
    "actions": "action", "animations": "animation", "apps": "application", "categories": "category",
    "devices": "device", "emblems": "emblem", "emotes": "emote", "intl": "international",
    "mimetypes": "file type", "places": "place", "status": "status", "panel": "panel",
}
MIN_THEMES = 3  # a name is kept when this many themes draw it


def icon_size(parts):
    """The size folder of an icon path ("64x64", "64", "scalable"); 0 when there is none."""
    for part in parts:
        if part == "scalable":
            return 10_000
        match = re.fullmatch(r"(\d+)(?:x\d+)?(?:@\dx)?", part)
        if match:
            return int(match.group(1))
    return 0


def png_side(path):
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n":
        return 0
    return min(int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big"))


def build_icons(roots, out_dir, records):
    rsvg = rsvg_convert(roots)
    stats = {"themes": len(ICON_THEMES), "names_drawn": 0, "names_kept": 0, "kept": 0, "failed": 0,
             "not_square": 0}
    # name -> package -> (size, kind, path, context): the largest drawing of it in that theme.
    best = {}
    for package, (folder, _) in ICON_THEMES.items():
        base = os.path.join(roots[package], "usr/share/icons", folder)
        for path in sorted(glob.glob(os.path.join(base, "**/*"), recursive=True)):
            name, ext = os.path.splitext(os.path.basename(path))
            parts = os.path.relpath(path, base).split(os.sep)[:-1]
            # Symbolic icons are monochrome glyphs, links are aliases of another name.
            if ext not in (".png", ".svg") or "symbolic" in name or "symbolic" in parts or os.path.islink(path):
                continue
            size = icon_size(parts)
            if ext == ".png":
                size = png_side(path)
                if size < 64:
                    continue
            context = next((ICON_CONTEXTS[p] for p in parts if p in ICON_CONTEXTS), None)
            if context is None:
                continue
            current = best.setdefault(name, {}).get(package)
            # SVGs first (they rasterise sharp at any size), then the larger drawing.
            if current is None or (ext == ".svg", size) > (current[1] == ".svg", current[0]):
                best[name][package] = (size, ext, path, context)
    stats["names_drawn"] = len(best)
    for name in sorted(best):
        themes = best[name]
        if len(themes) < MIN_THEMES:
            continue
        stats["names_kept"] += 1
        words = name.replace("-", " ").replace("_", " ")
        for package in sorted(themes):
            _, ext, path, context = themes[package]
            label = ICON_THEMES[package][1]
            file = f"icons/{package.removesuffix('-icon-theme')}/{name}.png"
            target = os.path.join(out_dir, file)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if ext == ".svg":
                result = subprocess.run([rsvg, "-w", "128", "-h", "128", "--keep-aspect-ratio", "-o", target, path],
                                        capture_output=True)
                if result.returncode != 0 or not os.path.isfile(target):
                    stats["failed"] += 1
                    continue
            else:
                shutil.copyfile(path, target)
            # Banners and separators: the loader's centre square would show a sliver of them.
            if png_side(target) < 64:
                os.remove(target)
                stats["not_square"] += 1
                continue
            caption = f"{words}, an icon ({context}; {label} icon theme)"
            records.append({"file": file, "caption": caption, "source": "icon-themes"})
            stats["kept"] += 1
    return stats


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--cache", default=os.path.expanduser("~/.cache/textok-studio/debs"))
    parser.add_argument("--icons", action="store_true", help="add the icon themes (the shipped DiT's last stages trained with them)")
    parser.add_argument("--emojione", action="store_true", help="add EmojiOne's drawings of the emoji Noto draws (a second style of each)")
    args = parser.parse_args()
    try:
        import fontTools  # noqa: F401
    except ImportError:
        sys.exit("fontTools is needed to read the emoji font: pip install fonttools")
    extra = (ICON_PACKAGES if args.icons else []) + (EMOJIONE_PACKAGES if args.emojione else [])
    roots = fetch(args.cache, PACKAGES + list(dict.fromkeys(extra)))
    os.makedirs(args.out, exist_ok=True)
    records = []
    tables = emoji_tables(roots)  # names and keywords, for the emoji of both styles
    report = {
        "emoji": build_emoji(roots, tables, args.out, records),
        "tuxpaint": build_tuxpaint(roots, args.out, records),
        "openclipart": build_openclipart(roots, args.out, records),
    }
    if args.icons:
        report["icons"] = build_icons(roots, args.out, records)
    if args.emojione:
        report["emojione"] = build_emojione(roots, tables, args.out, records)
    with open(os.path.join(args.out, "captions.jsonl"), "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps({"file": record["file"], "caption": record["caption"]}, ensure_ascii=False) + "\n")
    by_source = {}
    for record in records:
        by_source.setdefault(record["source"], []).append(record)
    report["images"] = {source: len(items) for source, items in by_source.items()}
    report["total"] = len(records)
    report["examples"] = {source: [r["caption"] for r in items[:: max(1, len(items) // 5)][:5]] for source, items in by_source.items()}
    with open(os.path.join(args.out, "corpus-report.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2, ensure_ascii=False)
    print(json.dumps({k: report[k] for k in ("images", "total")}, indent=2))


if __name__ == "__main__":
    main()
