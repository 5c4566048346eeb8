"""How many drawings of the same thing would Debian's icon themes add to the corpus?

    python3 models/scripts/survey_icon_themes.py WORK_DIR

Downloads the themes below with `apt-get download` into WORK_DIR (nothing is installed; about
180 MB), unpacks them with `dpkg -x`, and counts the freedesktop icon names that several themes
draw: one image per theme and name, PNG at 64 px or more or SVG (which `build_corpus.py` would
have to rasterise, e.g. with `rsvg-convert` from librsvg2-bin), symbolic (monochrome) icons left
out. The corpus today has about one drawing per thing, which is why the DiT cannot draw most
validation captions (models/README.md, "What is left").
"""
import collections, os, struct, subprocess, sys

THEMES = [
    "adwaita-icon-theme", "breeze-icon-theme", "elementary-xfce-icon-theme", "faba-icon-theme",
    "faenza-icon-theme", "gnome-colors-common", "gnome-icon-theme", "gnome-icon-theme-nuovo",
    "gnome-icon-theme-yasis", "lxde-icon-theme", "mate-icon-theme", "moka-icon-theme",
    "numix-icon-theme", "oxygen-icon-theme", "papirus-icon-theme", "tango-icon-theme",
]


def large_png(path):
    with open(path, "rb") as f:
        head = f.read(24)
    return head[:8] == b"\x89PNG\r\n\x1a\n" and min(struct.unpack(">II", head[16:24])) >= 64


work = sys.argv[1]
debs, trees = os.path.join(work, "debs"), os.path.join(work, "themes")
os.makedirs(debs, exist_ok=True)
os.makedirs(trees, exist_ok=True)
themes_of = collections.defaultdict(set)
for theme in THEMES:
    if not any(f.startswith(theme + "_") for f in os.listdir(debs)):
        subprocess.run(["apt-get", "download", theme], cwd=debs, check=True,
                       stdout=subprocess.DEVNULL)
    deb = next(f for f in os.listdir(debs) if f.startswith(theme + "_"))
    tree = os.path.join(trees, theme)
    if not os.path.isdir(tree):
        subprocess.run(["dpkg", "-x", os.path.join(debs, deb), tree], check=True)
    for folder, _, files in os.walk(tree):
        if "/symbolic" in folder:
            continue
        for file in files:
            path = os.path.join(folder, file)
            name, ext = os.path.splitext(file)
            if os.path.islink(path) or "symbolic" in name:
                continue
            if ext == ".svg" or (ext == ".png" and large_png(path)):
                themes_of[name].add(theme)
for k in (2, 3, 4, 6, 8):
    names = [n for n, t in themes_of.items() if len(t) >= k]
    print(f"drawn by {k} or more of {len(THEMES)} themes: {len(names)} names, "
          f"{sum(len(themes_of[n]) for n in names)} images (one per theme)")
