"""The client libraries people already use, against a running aside server.

Usage: clients_check.py BASE_URL RETRIEVAL_ADAPTER RERANK_ADAPTER MODEL_ID

Each check compares what a client gets with aside's own routes (/v1/embed,
/v1/rerank, /tokenize) on the same server, and that unsupported fields are refused
with the server's message. Prints one `ok NAME` line per check; any failure raises.
"""

import base64
import json
import math
import struct
import sys
import urllib.error
import urllib.request

URL, ADAPTER, RERANKER, MODEL = sys.argv[1:5]


def post(path, body):
    req = urllib.request.Request(URL + path, json.dumps(body).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def own_embed(texts, adapter=None):
    body = {"inputs": texts}
    if adapter:
        body["adapter"] = adapter
    return post("/v1/embed", body)["embeddings"]


def close(a, b, tol=1e-5):
    assert len(a) == len(b), (len(a), len(b))
    worst = max(abs(x - y) for x, y in zip(a, b))
    assert worst <= tol, f"vectors differ by {worst}"


def ok(name):
    print(f"ok {name}", flush=True)


def check_openai():
    import openai

    client = openai.OpenAI(base_url=URL + "/v1", api_key="unused")
    texts = ["The weather is lovely today.", "He drove to the stadium."]
    want = own_embed(texts)
    # The SDK asks for base64 by default and decodes it.
    got = client.embeddings.create(model=MODEL, input=texts)
    for g, w in zip(got.data, want):
        close(g.embedding, w)
    assert got.model == MODEL
    tokens = post("/tokenize", {"inputs": texts})
    assert got.usage.prompt_tokens == sum(len(t) for t in tokens), got.usage
    ok("openai: backbone by id, base64 by default, usage in tokens")
    got = client.embeddings.create(model="sentence-transformers/" + MODEL, input=texts[0], encoding_format="float")
    close(got.data[0].embedding, want[0])
    ok("openai: organisation-qualified id, float format")
    got = client.embeddings.create(model=ADAPTER, input=texts)
    for g, w in zip(got.data, own_embed(texts, ADAPTER)):
        close(g.embedding, w)
    ok("openai: an adapter as the model")
    # Token ids of our tokenizer, without the special tokens: as the text.
    ids = [t["id"] for t in post("/tokenize", {"inputs": texts[1], "add_special_tokens": False})[0]]
    got = client.embeddings.create(model=MODEL, input=[ids, ids[:3]])
    close(got.data[0].embedding, want[1])
    assert got.usage.prompt_tokens == len(ids) + 2 + 3 + 2
    ok("openai: token-id input")
    raw = client.embeddings.with_raw_response.create(model=MODEL, input="x", encoding_format="base64")
    b64 = json.loads(raw.text)["data"][0]["embedding"]
    floats = struct.unpack(f"<{len(base64.b64decode(b64)) // 4}f", base64.b64decode(b64))
    close(floats, own_embed(["x"])[0])
    ok("openai: base64 is little-endian f32")
    for kwargs, err, text in [
        ({"dimensions": 128}, openai.BadRequestError, "Matryoshka"),
        ({"model": "text-embedding-3-small"}, openai.NotFoundError, MODEL),
        ({"encoding_format": "int8"}, openai.BadRequestError, "encoding_format"),
    ]:
        args = {"model": MODEL, "input": "x", **kwargs}
        try:
            client.embeddings.create(**args)
        except err as e:
            assert text in str(e), str(e)
        else:
            raise AssertionError(f"{kwargs} was accepted")
    ok("openai: dimensions, unknown models and formats refused by name")
    ids = [m.id for m in client.models.list().data]
    assert MODEL in ids and ADAPTER in ids and RERANKER not in ids, ids
    ok("openai: models.list")


def check_huggingface():
    import numpy as np
    from huggingface_hub import InferenceClient

    client = InferenceClient(base_url=URL)
    texts = ["The weather is lovely today.", "It's so sunny outside!"]
    got = np.asarray(client.feature_extraction(texts))
    want = own_embed(texts)
    assert got.shape == (2, len(want[0])), got.shape
    for g, w in zip(got, want):
        close(list(g), w)
    raw = np.asarray(client.feature_extraction(texts[0], normalize=False)).reshape(-1)
    assert abs(float(np.linalg.norm(raw)) - 1.0) > 1e-3, "normalize false gave a unit vector"
    close(list(raw / np.linalg.norm(raw)), want[0])
    ok("huggingface_hub: feature_extraction (normalize true and false)")
    sims = client.sentence_similarity(texts[0], other_sentences=[texts[1], "He drove to the stadium."])
    assert abs(sims[0] - sum(a * b for a, b in zip(want[0], want[1]))) < 1e-5
    assert sims[0] > sims[1], sims
    ok("huggingface_hub: sentence_similarity")
    long = "word " * 600
    try:
        client.feature_extraction(long, truncate=False)
    except Exception as e:
        assert "413" in str(e) or "limit" in str(e), str(e)
    else:
        raise AssertionError("truncate=False accepted an input over the limit")
    text = "the start " + long + " the end"
    left = np.asarray(client.feature_extraction(text, truncation_direction="left")).reshape(-1)
    right = np.asarray(client.feature_extraction(text, truncation_direction="right")).reshape(-1)
    assert float(np.abs(left - right).max()) > 1e-4, "truncation_direction had no effect"
    ok("huggingface_hub: truncate false refused, truncation_direction honoured")


def check_cohere():
    import cohere

    docs = ["A cell divides into two cells.", "Stock markets fell today.", "Mitosis is cell division."]
    own = post("/v1/rerank", {"query": "cell division", "texts": docs, "adapter": RERANKER})["results"]
    sig = {r["index"]: 1 / (1 + math.exp(-r["score"])) for r in own}
    v1 = cohere.Client(api_key="unused", base_url=URL)
    got = v1.rerank(model=RERANKER, query="cell division", documents=docs, top_n=2)
    assert [r.index for r in got.results] == [r["index"] for r in own[:2]], got.results
    for r in got.results:
        assert abs(r.relevance_score - sig[r.index]) < 1e-5
    ok("cohere v1: rerank on /v1/rerank (top_n, sigmoid scores)")
    v2 = cohere.ClientV2(api_key="unused", base_url=URL)
    got = v2.rerank(model=RERANKER, query="cell division", documents=docs)
    assert [r.index for r in got.results] == [r["index"] for r in own]
    ok("cohere v2: rerank on /v2/rerank")
    try:
        v2.rerank(model=RERANKER, query="q", documents=docs, max_tokens_per_doc=10)
    except Exception as e:
        assert "max_tokens_per_doc" in str(e), str(e)
    else:
        raise AssertionError("max_tokens_per_doc was accepted")
    ok("cohere: unsupported fields refused by name")
    # Jina's shape: documents as strings or {text}, return_documents.
    got = post("/v1/rerank", {"model": RERANKER, "query": "cell division",
                              "documents": [{"text": d} for d in docs], "return_documents": True})
    assert [r["document"]["text"] for r in got["results"]] == [docs[r["index"]] for r in own]
    ok("jina: rerank with {text} documents and return_documents")


def check_langchain():
    from langchain_openai import OpenAIEmbeddings

    texts = ["The weather is lovely today.", "He drove to the stadium."]
    # check_embedding_ctx_length=False: LangChain sends the texts (its default
    # tokenises them with OpenAI's tiktoken vocabulary, which is not this model's).
    emb = OpenAIEmbeddings(model=MODEL, base_url=URL + "/v1", api_key="unused", check_embedding_ctx_length=False)
    for g, w in zip(emb.embed_documents(texts), own_embed(texts)):
        close(g, w)
    close(emb.embed_query(texts[0]), own_embed(texts[:1])[0])
    ok("langchain-openai: embed_documents, embed_query")


def check_llama_index():
    from llama_index.embeddings.openai import OpenAIEmbedding

    texts = ["The weather is lovely today.", "He drove to the stadium."]
    emb = OpenAIEmbedding(model_name=ADAPTER, api_base=URL + "/v1", api_key="unused")
    for g, w in zip(emb.get_text_embedding_batch(texts), own_embed(texts, ADAPTER)):
        close(g, w)
    close(emb.get_query_embedding(texts[0]), own_embed(texts[:1], ADAPTER)[0])
    ok("llama-index-embeddings-openai: text and query embeddings with an adapter")


def expect_error(path, body, status, text):
    try:
        post(path, body)
    except urllib.error.HTTPError as e:
        msg = e.read().decode()
        assert e.code == status and text in msg, (e.code, msg)
    else:
        raise AssertionError(f"{path} {body} was accepted")


def check_tei_routes():
    text = "The weather is lovely today."
    want = own_embed([text])[0]
    # embed_all: one vector per token; their mean, normalised, is the embedding
    # (the model pools by mean).
    toks = post("/embed_all", {"inputs": text})[0]
    ids = post("/tokenize", {"inputs": text})[0]
    assert len(toks) == len(ids), (len(toks), len(ids))
    mean = [sum(t[i] for t in toks) / len(toks) for i in range(len(toks[0]))]
    norm = math.sqrt(sum(x * x for x in mean))
    close([x / norm for x in mean], want)
    ok("tei: embed_all (mean of the token vectors is the embedding)")
    assert ids[0]["special"] and ids[-1]["special"] and not ids[1]["special"]
    assert text[ids[1]["start"]:ids[1]["stop"]].lower() == ids[1]["text"]
    back = post("/decode", {"ids": [t["id"] for t in ids]})[0]
    assert back == text.lower(), back
    ok("tei: tokenize and decode round trip")
    info = json.loads(urllib.request.urlopen(URL + "/info").read())
    for k in ["model_id", "model_sha", "model_dtype", "model_type", "max_concurrent_requests",
              "max_input_length", "max_batch_tokens", "max_client_batch_size", "version"]:
        assert k in info, k
    assert info["model_id"] == MODEL and info["max_input_length"] == 256
    ok("tei: /info fields")
    docs = ["A cell divides.", "Stocks fell."]
    raw = post("/rerank", {"query": "cells", "texts": docs, "adapter": RERANKER, "raw_scores": True})
    prob = post("/rerank", {"query": "cells", "texts": docs, "adapter": RERANKER, "return_text": True})
    for r, p in zip(raw, prob):
        assert r["index"] == p["index"] and abs(1 / (1 + math.exp(-r["score"])) - p["score"]) < 1e-6
        assert p["text"] == docs[p["index"]]
    ok("tei: rerank raw_scores and return_text")
    expect_error("/embed", {"inputs": text, "prompt_name": "query"}, 400, "prompt_name")
    expect_error("/embed", {"inputs": text, "normalise": True}, 400, "normalise")
    ok("tei: prompt_name and unknown fields refused by name")
    # A client batch over --max-inputs (256) is split inside, written as one.
    many = [{"id": f"d{i}", "text": f"document number {i}"} for i in range(600)]
    req = urllib.request.Request(URL + "/v1/collections/big", b"", method="PUT")
    urllib.request.urlopen(req).read()
    assert post("/v1/collections/big/documents", {"documents": many})["upserted"] == 600
    ok("upsert: 600 documents in one request")


if __name__ == "__main__":
    for check in [check_tei_routes, check_openai, check_huggingface, check_cohere, check_langchain, check_llama_index]:
        check()
    print("all client checks passed")
