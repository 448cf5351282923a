#!/usr/bin/env python3
"""Creates the PEFT LoRA fixtures with the real `peft` library on the tiny random
BERT of the tests, and the embeddings PEFT computes with them.

    python3 tools/make_peft_fixtures.py TINY_MODEL_DIR OUT_DIR

TINY_MODEL_DIR is written by `cargo run --release -p aside-adapters --example
write_test_adapters -- TINY_MODEL_DIR SCRATCH_DIR --tiny`. Needs torch,
transformers, peft, tokenizers (run once by a developer; outputs are committed).
"""
import json
import os
import sys

import torch
from peft import LoraConfig, get_peft_model
from tokenizers import Tokenizer
from transformers import BertForMaskedLM, BertModel

model_dir, out = sys.argv[1], sys.argv[2]
texts = [json.loads(l)["text"] for l in open(os.path.join(
    os.path.dirname(__file__), "..", "adapters", "tests", "fixtures", "tiny_inputs.jsonl"))]
tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
tok.no_padding()
tok.enable_truncation(64)

CASES = {
    # name: (model class, LoraConfig kwargs)
    "query-value": (BertModel, dict(r=4, lora_alpha=8, target_modules=["query", "value"])),
    "all-linear-rslora-layer1": (BertForMaskedLM, dict(
        r=3, lora_alpha=5, use_rslora=True,
        target_modules=["query", "key", "value", "dense"], layers_to_transform=[1])),
    "rank-alpha-patterns": (BertModel, dict(
        r=4, lora_alpha=8, target_modules=["query", "value", "intermediate.dense"],
        rank_pattern={"encoder.layer.0.attention.self.query": 2, "intermediate.dense": 6},
        alpha_pattern={"value": 3})),
}

torch.manual_seed(0)
for name, (cls, kw) in CASES.items():
    base = cls.from_pretrained(model_dir)
    base.eval()
    model = get_peft_model(base, LoraConfig(init_lora_weights=False, **kw))
    model.eval()
    d = os.path.join(out, name)
    model.save_pretrained(d)
    encoder = model.base_model.model
    encoder = encoder.bert if hasattr(encoder, "bert") else encoder
    with open(os.path.join(d, "embeddings.jsonl"), "w") as f:
        for i, t in enumerate(texts):
            e = tok.encode(t)
            ids = torch.tensor([e.ids])
            with torch.no_grad():
                h = encoder(input_ids=ids, attention_mask=torch.ones_like(ids),
                            token_type_ids=torch.tensor([e.type_ids])).last_hidden_state[0]
            v = torch.nn.functional.normalize(h.mean(0), dim=0)
            f.write(json.dumps({"id": "t%d" % i, "embedding": [float(x) for x in v]}) + "\n")
    # No path of the machine that made the fixture goes into the repository.
    cfg_path = os.path.join(d, "adapter_config.json")
    cfg = json.load(open(cfg_path))
    cfg["base_model_name_or_path"] = "tiny-random-bert"
    json.dump(cfg, open(cfg_path, "w"), indent=2, sort_keys=True)
    # Files PEFT writes that the server does not read.
    for extra in ("README.md",):
        p = os.path.join(d, extra)
        if os.path.exists(p):
            os.remove(p)
    print(name, sorted(os.listdir(d)))
