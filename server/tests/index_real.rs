//! The HNSW graph on real embeddings: SciFact titles and test queries embedded by the
//! real model, graph search against exact search with an explicit failure budget,
//! then the same after a snapshot and reopening (the graph read back, not rebuilt).

mod common;

use aside_backbone::testing::real_model;
use aside_backbone::{Backbone, EncodeOptions, Input, Item, LoadOptions};
use aside_index::{CollectionConfig, Doc, HnswParams, Index, Metric, SearchRequest, Space};
use common::scifact;

fn field(line: &str, key: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    v[key].as_str().unwrap_or_default().to_owned()
}

fn embed(b: &Backbone, texts: &[String]) -> Vec<Vec<f32>> {
    let pool = b.pooling();
    let items: Vec<Item<'_>> = texts
        .iter()
        .map(|t| Item {
            input: Input::Single(t),
            hooks: None,
            pooling: pool.pooling,
            normalize: pool.normalize,
        })
        .collect();
    let opts = EncodeOptions {
        max_length: 32,
        batch_size: 32,
    };
    b.encode(&items, &opts).unwrap()
}

/// Recall@10 of graph search against exact search, and how many queries fell
/// under 0.8.
fn recall(c: &aside_index::Collection, queries: &[Vec<f32>]) -> (f64, usize) {
    let ids = |exact: bool, q: &[f32]| -> Vec<String> {
        c.search(&SearchRequest {
            vector: q,
            k: 10,
            ef: Some(64),
            filter: None,
            threshold: None,
            exact,
        })
        .unwrap()
        .into_iter()
        .map(|h| h.id)
        .collect()
    };
    let (mut found, mut bad) = (0, 0);
    for q in queries {
        let want = ids(true, q);
        let hits = ids(false, q).iter().filter(|i| want.contains(i)).count();
        found += hits;
        bad += usize::from(hits < 8);
    }
    (found as f64 / (10 * queries.len()) as f64, bad)
}

#[test]
fn graph_recall_on_real_embeddings_within_budget_and_after_reopening() {
    let Some(model) = real_model(env!("CARGO_MANIFEST_DIR")) else {
        return;
    };
    let Some(data) = scifact() else { return };
    let b = Backbone::load(&model, &LoadOptions::default()).unwrap();
    let corpus = std::fs::read_to_string(data.join("corpus.jsonl")).unwrap();
    let (ids, titles): (Vec<String>, Vec<String>) = corpus
        .lines()
        .take(3000)
        .map(|l| (field(l, "_id"), field(l, "title")))
        .unzip();
    let queries: Vec<String> = std::fs::read_to_string(data.join("queries.jsonl"))
        .unwrap()
        .lines()
        .take(100)
        .map(|l| field(l, "text"))
        .collect();
    let vectors = embed(&b, &titles);
    let qv = embed(&b, &queries);
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let index = Index::open(dir.path()).unwrap();
        let c = index
            .create(CollectionConfig {
                name: "titles".into(),
                dim: b.bert().config().hidden_size,
                metric: Metric::Cosine,
                hnsw: HnswParams::default(),
                space: Space::default(),
                engine: Default::default(),
                lexical: None,
            })
            .unwrap();
        let docs: Vec<Doc> = ids
            .iter()
            .zip(&titles)
            .zip(vectors)
            .map(|((id, t), v)| Doc {
                id: id.clone(),
                vector: v,
                text: t.clone(),
                metadata: serde_json::json!({}),
            })
            .collect();
        for chunk in docs.chunks(500) {
            c.upsert(chunk.to_vec()).unwrap();
        }
        c.wait_indexed();
        let (r, bad) = recall(&c, &qv);
        assert!(r >= 0.97, "recall@10 {r} on real embeddings");
        assert!(bad <= 3, "{bad} of 100 queries under 0.8 recall (budget 3)");
        c.snapshot().unwrap();
        (r, bad)
    };
    let index = Index::open(dir.path()).unwrap();
    let c = index.get("titles").unwrap();
    assert_eq!(
        c.stats().unindexed,
        0,
        "the graph is read from the snapshot"
    );
    assert_eq!(recall(&c, &qv), before);
}
