#!/usr/bin/env python3
"""An independent NumPy implementation of the backbone and every adapter kind of
method.md, used to check `aside embed` (tests call it; it is not part of the server).

    python3 tools/reference.py --model DIR [--adapter FILE] [--max-length N]
        < input.jsonl > output.jsonl

Input and output lines follow `aside embed`: {"id", "text"} -> {"id", "embedding"}.
A line may instead carry {"id", "query", "text"} for a rerank adapter; then the
output is {"id", "score"}.
"""
import argparse
import json
import math
import os
import sys

import numpy as np
from safetensors import safe_open
from tokenizers import Tokenizer


def erf(x):
    return np.vectorize(math.erf)(x)


def gelu(x):
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


ACTS = {
    "relu": lambda x: np.maximum(x, 0.0),
    "gelu": gelu,
    "swish": lambda x: x / (1.0 + np.exp(-x)),
    "silu": lambda x: x / (1.0 + np.exp(-x)),
    "tanh": np.tanh,
}


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def load_tensors(path):
    out = {}
    with safe_open(path, "np") as f:
        meta = f.metadata() or {}
        for k in f.keys():
            out[k] = f.get_tensor(k).astype(np.float64)
    return out, meta


class Adapter:
    def __init__(self, path):
        self.t, self.meta = load_tensors(path)
        self.kind = self.meta["kind"]
        self.act = ACTS[self.meta.get("activation", "relu")]
        self.task = self.meta.get("task", "retrieval")

    def bn(self, prefix, x):
        t = self.t
        z = x @ t[prefix + ".down.weight"].T + t[prefix + ".down.bias"]
        return self.act(z) @ t[prefix + ".up.weight"].T + t[prefix + ".up.bias"]

    def has(self, name):
        return name in self.t


class Bert:
    def __init__(self, model_dir):
        self.cfg = json.load(open(os.path.join(model_dir, "config.json")))
        w, _ = load_tensors(os.path.join(model_dir, "model.safetensors"))
        self.w = {k[5:] if k.startswith("bert.") else k: v for k, v in w.items()}
        self.tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
        self.tok.no_padding()
        pool_path = os.path.join(model_dir, "1_Pooling", "config.json")
        self.pooling = "mean"
        if os.path.exists(pool_path):
            p = json.load(open(pool_path))
            self.pooling = "cls" if p.get("pooling_mode_cls_token") else "mean"

    def param(self, name, adapter):
        if adapter is not None and adapter.kind == "bitfit" and adapter.has("bitfit." + name):
            return adapter.t["bitfit." + name]
        return self.w[name]

    def linear(self, x, prefix, layer, module, adapter):
        y = x @ self.w[prefix + ".weight"].T + self.param(prefix + ".bias", adapter)
        if adapter is not None and adapter.kind == "lora":
            a = "lora.%d.%s.A" % (layer, module)
            if adapter.has(a):
                r = adapter.t[a].shape[0]
                alpha = float(adapter.meta.get("lora_alpha", r))
                scale = alpha / math.sqrt(r) if adapter.meta.get("lora_rslora") == "true" else alpha / r
                y = y + scale * (x @ adapter.t[a].T @ adapter.t["lora.%d.%s.B" % (layer, module)].T)
        return y

    def forward(self, ids, types, adapter):
        c, w = self.cfg, self.w
        eps = c.get("layer_norm_eps", 1e-12)
        n = len(ids)
        e = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n] \
            + w["embeddings.token_type_embeddings.weight"][types]
        e = layer_norm(e, self.param("embeddings.LayerNorm.weight", adapter),
                       self.param("embeddings.LayerNorm.bias", adapter), eps)
        nh = c["num_attention_heads"]
        hd = c["hidden_size"] // nh
        kind = adapter.kind if adapter is not None else None
        inner = kind in ("iaa-s", "iaa-l", "iaa-m", "houlsby")
        h = e
        for l in range(c["num_hidden_layers"]):
            p = "encoder.layer.%d." % l
            q = self.linear(h, p + "attention.self.query", l, "query", adapter)
            k = self.linear(h, p + "attention.self.key", l, "key", adapter)
            v = self.linear(h, p + "attention.self.value", l, "value", adapter)
            q, k, v = (x.reshape(n, nh, hd).transpose(1, 0, 2) for x in (q, k, v))
            s = q @ k.transpose(0, 2, 1) / math.sqrt(hd)
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            ctx = (s @ v).transpose(1, 0, 2).reshape(n, -1)
            a = self.linear(ctx, p + "attention.output.dense", l, "attn_out", adapter)
            if inner:
                a = a + adapter.bn("inner.%d.attn" % l, a)
            u = layer_norm(h + a, self.param(p + "attention.output.LayerNorm.weight", adapter),
                           self.param(p + "attention.output.LayerNorm.bias", adapter), eps)
            if kind == "iaa-s":
                u = u + adapter.bn("aside.%d.attn" % l, h)
            f = gelu(self.linear(u, p + "intermediate.dense", l, "inter", adapter))
            f = self.linear(f, p + "output.dense", l, "out", adapter)
            if inner:
                f = f + adapter.bn("inner.%d.ffn" % l, f)
            out = layer_norm(u + f, self.param(p + "output.LayerNorm.weight", adapter),
                             self.param(p + "output.LayerNorm.bias", adapter), eps)
            if kind == "iaa-s":
                out = out + adapter.bn("aside.%d.ffn" % l, u)
            if kind == "iaa-l":
                out = out + adapter.bn("aside.%d" % l, h)
            h = out
        if kind == "iaa-m":
            h = h + adapter.bn("aside", e)
        return h


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--adapter")
    ap.add_argument("--max-length", type=int, default=256)
    args = ap.parse_args()
    bert = Bert(args.model)
    bert.tok.enable_truncation(args.max_length)
    adapter = Adapter(args.adapter) if args.adapter else None
    pooling, normalize = bert.pooling, True
    if adapter is not None:
        pooling = adapter.meta.get("pooling", pooling)
        normalize = adapter.meta.get("normalize", "true") == "true"
    for line in sys.stdin:
        if not line.strip():
            continue
        obj = json.loads(line)
        if "query" in obj:
            enc = bert.tok.encode(obj["query"], obj["text"])
        else:
            enc = bert.tok.encode(obj["text"])
        h = bert.forward(np.array(enc.ids), np.array(enc.type_ids), adapter)
        if adapter is not None and adapter.task == "rerank":
            score = float(h[0] @ adapter.t["head.weight"][0] + adapter.t["head.bias"][0])
            print(json.dumps({"id": obj["id"], "score": score}))
            continue
        v = h[0] if pooling == "cls" else h.mean(0)
        if normalize:
            v = v / max(np.linalg.norm(v), 1e-12)
        print(json.dumps({"id": obj["id"], "embedding": [float(x) for x in v]}))


if __name__ == "__main__":
    main()
