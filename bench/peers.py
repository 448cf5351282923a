"""Peer encoders for bench/peers.sh: the corpus encoded by sentence-transformers on
PyTorch or by ONNX Runtime (the same model exported once), timed as `aside bench
encode` times itself: the first DOCS documents of a BEIR corpus ("title text"),
max length 256, batch 32, every core; one warm-up batch, then REPEATS timed passes.

  python bench/peers.py st|ort MODEL_DIR CORPUS_JSONL DOCS REPEATS [ONNX_DIR]

Prints `repeat i: S s, R docs/s` lines, as aside does.
"""
import json
import os
import sys
import time


def corpus(path, n):
    out = []
    with open(path) as f:
        for line in f:
            if len(out) >= n:
                break
            if not line.strip():
                continue
            d = json.loads(line)
            title, text = d.get("title", ""), d.get("text", "")
            out.append(f"{title} {text}" if title else text)
    return out


def timed(encode, docs, repeats):
    encode(docs[:32])
    for r in range(repeats):
        t0 = time.perf_counter()
        encode(docs)
        s = time.perf_counter() - t0
        print(f"repeat {r + 1}: {s:.2f} s, {len(docs) / s:.1f} docs/s", flush=True)


def sentence_transformers(model, docs, repeats):
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(os.cpu_count())
    m = SentenceTransformer(model, device="cpu")
    m.max_seq_length = 256
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    timed(lambda d: m.encode(d, batch_size=32, normalize_embeddings=True), docs, repeats)


def onnx_runtime(model, docs, repeats, onnx_dir):
    import numpy as np
    import onnxruntime as ort
    from transformers import AutoTokenizer

    path = os.path.join(onnx_dir, "model.onnx")
    tok = AutoTokenizer.from_pretrained(model)
    if not os.path.exists(path):
        import torch
        from transformers import AutoModel

        m = AutoModel.from_pretrained(model).eval()
        enc = tok(["a sample"], return_tensors="pt")
        torch.onnx.export(
            m,
            (enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]),
            path,
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["last_hidden_state"],
            dynamic_axes={k: {0: "b", 1: "t"} for k in ["input_ids", "attention_mask", "token_type_ids", "last_hidden_state"]},
            opset_version=17,
        )
    so = ort.SessionOptions()
    so.intra_op_num_threads = os.cpu_count()
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    print(f"onnxruntime {ort.__version__}, {os.cpu_count()} threads", flush=True)

    def encode(d):
        out = []
        for i in range(0, len(d), 32):
            enc = tok(d[i : i + 32], padding=True, truncation=True, max_length=256, return_tensors="np")
            feed = {k: enc[k].astype(np.int64) for k in ["input_ids", "attention_mask", "token_type_ids"]}
            h = sess.run(None, feed)[0]
            mask = feed["attention_mask"][..., None].astype(np.float32)
            v = (h * mask).sum(1) / np.clip(mask.sum(1), 1e-9, None)
            out.append(v / np.linalg.norm(v, axis=1, keepdims=True))
        return np.concatenate(out)

    timed(encode, docs, repeats)


if __name__ == "__main__":
    which, model, path, n, repeats = sys.argv[1:6]
    docs = corpus(path, int(n))
    if which == "st":
        sentence_transformers(model, docs, int(repeats))
    else:
        onnx_runtime(model, docs, int(repeats), sys.argv[6])
