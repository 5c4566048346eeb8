"""Packs a GPU stage of the DiT (`train_dit_shipped.sh`'s GPU_MINUTES) for a machine that is
reached through a narrow channel (here: a lent GPU whose tool sends at most 64 MiB per call).

    python3 models/scripts/device/pack.py CORPUS RUNS OUT [MODELS]

MODELS: the twins to pack, comma-separated (default textok,baseline). The binary packed is
target/release/textok-studio, or the one TEXTOK_STUDIO names.

OUT/common: the release binary (stripped, xz), the text encoder with the word-embedding rows no
corpus caption uses and the positions past 32 zeroed (the captions encode bit for bit as with the
full file), its tokenizer and config, the cached images' captions, and the scripts.
OUT/textok and OUT/baseline: a tokenizer checkpoint with every tensor zeroed (`train dit` reads
only its config when the latents are cached), the cached latents cut to the 96 tokens the stage
trains and sent as f16 (run.sh widens them to f32 there), and the DiT to start from (RUNS/dit-MODEL-small.safetensors).
A twin's folder plus common is about 58 MiB. Needs numpy, the `tokenizers` package and xz.
"""
import hashlib, json, os, shutil, struct, subprocess, sys
import numpy as np
from tokenizers import Tokenizer

corpus, runs, out = sys.argv[1:4]
twins = sys.argv[4].split(",") if len(sys.argv) > 4 else ["textok", "baseline"]
repo = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../.."))
models = os.path.join(repo, "models")
MAX_BUDGET = 96  # the stage trains budgets 32..96 (the focus stage's)


def read_safetensors(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), bytearray(raw[8 + n:])


def write_safetensors(path, header, data):
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + bytes(data))


def xz(src, dst, filters=("-9e",)):
    with open(dst, "wb") as f:
        subprocess.run(["xz", *filters, "-T2", "-c", src], stdout=f, check=True)


def latents_header(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


common = os.path.join(out, "common")
os.makedirs(common, exist_ok=True)
work = os.path.join(out, "tmp")
os.makedirs(work, exist_ok=True)

# The images every twin's latents cover: the packed corpus lists exactly these, so the trainer
# accepts the cached latents (an image it would have to encode has no pixels there).
headers = {m: latents_header(os.path.join(runs, f"focus-{m}", "latents.bin")) for m in twins}
paths = set(headers[twins[0]][0]["paths"])
assert all(paths == set(h[0]["paths"]) for h in headers.values()), "the twins' latents cover different images"
lines = [l for l in open(os.path.join(corpus, "captions.jsonl"))
         if l.strip() and json.loads(l)["file"] in paths]
open(os.path.join(work, "captions.jsonl"), "w").writelines(lines)
xz(os.path.join(work, "captions.jsonl"), os.path.join(common, "captions.jsonl.xz"))

# Text encoder: zero what these captions never look up.
tokenizer = Tokenizer.from_file(os.path.join(models, "text-encoder", "tokenizer.json"))
used = set(range(1000))  # [PAD], [UNK], [CLS], [SEP], [MASK] and the unused slots
for encoding in tokenizer.encode_batch([json.loads(l)["caption"] for l in lines] + [""]):
    used.update(encoding.ids)
header, data = read_safetensors(os.path.join(models, "text-encoder", "model.safetensors"))
for name, keep in (("word_embeddings.weight", sorted(used)), ("position_embeddings.weight", range(32))):
    meta = header[name]
    assert meta["dtype"] == "F16", meta
    a, b = meta["data_offsets"]
    rows = np.frombuffer(bytes(data[a:b]), dtype=np.float16).reshape(meta["shape"]).copy()
    mask = np.ones(rows.shape[0], bool)
    mask[list(keep)] = False
    rows[mask] = 0
    data[a:b] = rows.tobytes()
write_safetensors(os.path.join(work, "text-encoder.safetensors"), header, data)
xz(os.path.join(work, "text-encoder.safetensors"), os.path.join(common, "te.xz"))
xz(os.path.join(models, "text-encoder", "tokenizer.json"), os.path.join(common, "tokenizer.json.xz"))
shutil.copy(os.path.join(models, "text-encoder", "config.json"), common)
binary = os.path.join(work, "textok-studio")
shutil.copy(os.environ.get("TEXTOK_STUDIO", os.path.join(repo, "target", "release", "textok-studio")), binary)
subprocess.run(["strip", binary], check=True)
# x86 branch filter first: about a tenth smaller for machine code.
xz(binary, os.path.join(common, "bin.xz"), ("--x86", "--lzma2=preset=9e"))
here = os.path.dirname(os.path.abspath(__file__))
for script in ("run.sh", "placeholders.py", "widen_latents.py"):
    shutil.copy(os.path.join(here, script), common)
vocabulary = header["word_embeddings.weight"]["shape"][0]
print(f"common: {len(lines)} captions, {len(used)} of {vocabulary} word rows kept")

for model in twins:
    twin = os.path.join(out, model)
    os.makedirs(twin, exist_ok=True)
    checkpoint = os.path.join(models, f"{model}-small.safetensors")
    header, data = read_safetensors(checkpoint)
    zeroed = os.path.join(work, f"{model}-tokenizer.safetensors")
    write_safetensors(zeroed, header, bytes(len(data)))
    h, values = headers[model]
    # The cache was made by this file, or by one with the same encoder (only the detokenizer
    # fine-tuned since): `textok-studio info` prints that hash.
    info = subprocess.run([binary, "info", checkpoint], check=True, capture_output=True, text=True).stdout
    encoder = next(line.split()[-1] for line in info.splitlines() if line.startswith("encoder:"))
    assert h["tokenizer_sha256"] == hashlib.sha256(open(checkpoint, "rb").read()).hexdigest() \
        or h.get("encoder_sha256") == encoder, f"{model}: the cached latents were made by another tokenizer"
    tokens, dim = h["tokens"], h["dim"]
    v = np.frombuffer(values, dtype="<f4").reshape(len(h["paths"]), tokens, dim)[:, :MAX_BUDGET, :]
    # Sent as f16 (a quarter less after xz than f16-rounded f32); run.sh widens them back with
    # widen_latents.py, so the trainer reads the f16-rounded values as f32.
    v = v.astype("<f2")
    # Keyed to the zeroed stand-in file, but naming the real encoder: the DiT records that
    # hash, so `generate` pairs it with the real tokenizer without a warning.
    cut = {"tokenizer_sha256": hashlib.sha256(open(zeroed, "rb").read()).hexdigest(),
           "encoder_sha256": encoder, "tokens": MAX_BUDGET, "dim": dim, "paths": h["paths"]}
    cut = json.dumps(cut).encode()
    with open(os.path.join(work, f"{model}-latents.bin"), "wb") as f:
        f.write(struct.pack("<Q", len(cut)) + cut + v.tobytes())
    xz(zeroed, os.path.join(twin, "tokenizer.xz"))
    xz(os.path.join(work, f"{model}-latents.bin"), os.path.join(twin, "latents-f16.xz"))
    xz(os.path.join(runs, f"dit-{model}-small.safetensors"), os.path.join(twin, "dit.xz"))
    print(f"{model}: {len(h['paths'])} images x {MAX_BUDGET} tokens")
shutil.rmtree(work)
