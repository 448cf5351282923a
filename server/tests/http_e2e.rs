//! The product end to end, on a real loopback socket with the real model: upload
//! adapters, create a collection, index 500 SciFact documents, search (with filter
//! and re-ranking), swap the adapter and watch the re-embedding complete, restart
//! the server and find everything.

mod common;

use aside_adapters::testing::random_adapter;
use aside_adapters::{format, Dims, Kind, Meta, Task};
use aside_backbone::testing::real_model;
use aside_backbone::{Backbone, LoadOptions};
use common::{scifact, wait_for, Server};
use serde_json::json;

fn adapter(b: &Backbone, kind: Kind, task: Task, seed: u64) -> Vec<u8> {
    let mut m = Meta::new(kind, task);
    m.r = Some(8);
    m.ar = Some(8);
    m.backbone = Some(b.sha256().to_owned());
    format::write_adapter(&random_adapter(&m, &Dims::of(b), b.bert(), seed)).unwrap()
}

#[test]
fn upload_index_search_rerank_swap_restart() {
    let Some(model) = real_model(env!("CARGO_MANIFEST_DIR")) else {
        return;
    };
    let Some(data) = scifact() else { return };
    let b = Backbone::load(&model, &LoadOptions::default()).unwrap();
    let (v1, v2) = (
        adapter(&b, Kind::IaaL, Task::Retrieval, 1),
        adapter(&b, Kind::IaaL, Task::Retrieval, 2),
    );
    let rr = adapter(&b, Kind::IaaL, Task::Rerank, 3);
    let store = tempfile::tempdir().unwrap();
    let s = Server::start(&model, store.path(), &[]);

    assert_eq!(s.raw("PUT", "/v1/adapters/scifact", &[], Some(&v1)).0, 201);
    assert_eq!(s.raw("PUT", "/v1/adapters/rr", &[], Some(&rr)).0, 201);
    let (st, c) = s.call(
        "PUT",
        "/v1/collections/scifact",
        Some(&json!({"adapter": "scifact"})),
    );
    assert_eq!(st, 201, "{c}");
    let version1 = c["adapter_version"].as_str().unwrap().to_owned();

    let corpus: Vec<serde_json::Value> = std::fs::read_to_string(data.join("corpus.jsonl"))
        .unwrap()
        .lines()
        .take(500)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (n, chunk) in corpus.chunks(100).enumerate() {
        let docs: Vec<serde_json::Value> = chunk
            .iter()
            .map(|d| json!({"id": d["_id"], "text": format!("{} {}", d["title"].as_str().unwrap(), d["text"].as_str().unwrap()),
                            "metadata": {"part": n, "even": d["_id"].as_str().unwrap().len() % 2 == 0}}))
            .collect();
        let (st, r) = s.call(
            "POST",
            "/v1/collections/scifact/documents",
            Some(&json!({"documents": docs})),
        );
        assert_eq!((st, r["upserted"].as_u64()), (200, Some(100)), "{r}");
    }
    let title = corpus[42]["title"].as_str().unwrap();
    let (st, r) = s.call(
        "POST",
        "/v1/collections/scifact/search",
        Some(&json!({"query": title, "k": 5})),
    );
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["hits"].as_array().unwrap().len(), 5);
    assert_eq!(r["adapter_version"], version1.as_str());
    assert!(r["hits"][0]["text"].as_str().unwrap().len() > 10);
    let (_, f) = s.call(
        "POST",
        "/v1/collections/scifact/search",
        Some(&json!({"query": title, "k": 10, "filter": {"part": {"in": [1, 2]}}})),
    );
    assert!(f["hits"]
        .as_array()
        .unwrap()
        .iter()
        .all(|h| h["metadata"]["part"] == 1 || h["metadata"]["part"] == 2));
    let (st, rr_hits) = s.call(
        "POST",
        "/v1/collections/scifact/search",
        Some(&json!({"query": title, "k": 5, "rerank": {"adapter": "rr", "candidates": 20}})),
    );
    assert_eq!(st, 200, "{rr_hits}");
    let scores: Vec<f64> = rr_hits["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["score"].as_f64().unwrap())
        .collect();
    assert_eq!(scores.len(), 5);
    assert!(
        scores.windows(2).all(|w| w[0] >= w[1]),
        "sorted by rerank score"
    );
    // Fused with a retrieval weight far above the head's scale, the order is retrieval's.
    let ids = |v: &serde_json::Value| -> Vec<String> {
        v["hits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, plain) = s.call(
        "POST",
        "/v1/collections/scifact/search",
        Some(&json!({"query": title, "k": 5})),
    );
    let (st, fused) = s.call(
        "POST",
        "/v1/collections/scifact/search",
        Some(&json!({"query": title, "k": 5, "rerank": {"adapter": "rr", "candidates": 20, "fuse": 1e5}})),
    );
    assert_eq!(st, 200, "{fused}");
    assert_eq!(ids(&fused)[0], ids(&plain)[0]);
    let mut a = ids(&fused);
    let mut b = ids(&plain);
    a.sort();
    b.sort();
    assert_eq!(a, b);
    let (st, e) = s.call(
        "POST",
        "/v1/collections/scifact/search",
        Some(&json!({"query": title, "rerank": {"adapter": "rr", "fuse": -1}})),
    );
    assert_eq!(st, 400, "{e}");
    assert!(e["error"].as_str().unwrap().contains("rerank.fuse"), "{e}");
    let (st, r) = s.call("POST", "/v1/rerank", Some(&json!({"query": "cells", "texts": ["a cell divides", "stock markets"], "adapter": "rr"})));
    assert_eq!(st, 200);
    assert_eq!(r["results"].as_array().unwrap().len(), 2);
    let (_, e) = s.call(
        "POST",
        "/v1/embed",
        Some(&json!({"inputs": ["hello"], "adapter": "scifact"})),
    );
    let v: Vec<f64> = e["embeddings"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(v.len(), 384);
    assert!((v.iter().map(|x| x * x).sum::<f64>().sqrt() - 1.0).abs() < 1e-4);

    // Swap: the collection re-embeds in the background while search keeps serving v1.
    let (st, info) = {
        let (st, _, body) = s.raw("PUT", "/v1/adapters/scifact", &[], Some(&v2));
        (
            st,
            serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
        )
    };
    assert_eq!(st, 201);
    let version2 = info["version"].as_str().unwrap().to_owned();
    let (_, c) = s.call("GET", "/v1/collections/scifact", None);
    if c["status"] == "reembedding" {
        let (st, r) = s.call(
            "POST",
            "/v1/collections/scifact/search",
            Some(&json!({"query": title, "k": 3})),
        );
        assert_eq!(st, 200);
        assert_eq!(
            r["adapter_version"],
            version1.as_str(),
            "old vectors are searched with the old version"
        );
        let (st, _) = s.call(
            "POST",
            "/v1/collections/scifact/documents",
            Some(&json!({"documents": [{"id": "x", "text": "y"}]})),
        );
        assert_eq!(st, 409, "writes wait for the re-embedding");
    }
    assert!(
        wait_for(600, || s.call("GET", "/v1/collections/scifact", None).1
            ["adapter_version"]
            == version2.as_str()
            && s.call("GET", "/v1/collections/scifact", None).1["status"]
                == "ready"),
        "re-embedding did not finish"
    );
    let (_, c) = s.call("GET", "/v1/collections/scifact", None);
    assert_eq!(c["count"], 500);
    assert_eq!(c["status"], "ready");
    let (_, r) = s.call(
        "POST",
        "/v1/collections/scifact/search",
        Some(&json!({"query": title, "k": 3})),
    );
    assert_eq!(r["adapter_version"], version2.as_str());
    let metrics = String::from_utf8(s.raw("GET", "/metrics", &[], None).2).unwrap();
    assert!(metrics.contains("aside_requests_total{route=\"/v1/collections/{name}/search\",adapter=\"scifact\",status=\"200\"}"), "{metrics}");
    assert!(metrics.contains("aside_batch_size_count"));
    s.stop();

    // Restart: adapters, versions and the collection are all there.
    let s = Server::start(&model, store.path(), &[]);
    let (_, l) = s.call("GET", "/v1/adapters", None);
    assert_eq!(l["adapters"].as_array().unwrap().len(), 2);
    let (_, c) = s.call("GET", "/v1/collections/scifact", None);
    assert_eq!(
        (c["count"].as_u64(), c["adapter_version"].as_str()),
        (Some(500), Some(version2.as_str()))
    );
    let (st, r) = s.call(
        "POST",
        "/v1/collections/scifact/search",
        Some(&json!({"query": title, "k": 3})),
    );
    assert_eq!(st, 200);
    assert_eq!(r["hits"].as_array().unwrap().len(), 3);
    s.stop();
}
