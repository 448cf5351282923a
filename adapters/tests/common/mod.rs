//! Shared helpers of the adapters tests.
#![allow(dead_code)]

use aside_adapters::{Adapter, Dims, Task};
use aside_backbone::testing::TinyBert;
use aside_backbone::{Backbone, EncodeOptions, Hooks, Input, Item, LoadOptions};

pub fn tiny() -> (tempfile::TempDir, Backbone) {
    let dir = tempfile::tempdir().unwrap();
    TinyBert::default().write(dir.path()).unwrap();
    let b = Backbone::load(dir.path(), &LoadOptions::default()).unwrap();
    (dir, b)
}

pub fn dims(b: &Backbone) -> Dims {
    Dims::of(b)
}

pub fn read_jsonl(path: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Max length 256, or the model's positions if fewer (the tiny model has 64).
pub fn opts(b: &Backbone) -> EncodeOptions {
    EncodeOptions {
        max_length: 256.min(b.config().max_position_embeddings),
        batch_size: 4,
    }
}

/// Embeddings of texts through an adapter (or none), with the adapter's pooling.
pub fn embed(b: &Backbone, a: Option<&Adapter>, texts: &[&str]) -> Vec<Vec<f32>> {
    let pool = a.map_or(b.pooling(), |a| a.pooling(b.pooling()));
    let items: Vec<Item<'_>> = texts
        .iter()
        .map(|t| Item {
            input: Input::Single(t),
            hooks: a.map(|a| a as &dyn Hooks),
            pooling: pool.pooling,
            normalize: pool.normalize,
        })
        .collect();
    b.encode(&items, &opts(b)).unwrap()
}

/// Rerank scores of (query, text) pairs through a rerank adapter.
pub fn scores(b: &Backbone, a: &Adapter, pairs: &[(&str, &str)]) -> Vec<f32> {
    assert_eq!(a.task(), Task::Rerank);
    let pool = a.pooling(b.pooling());
    let items: Vec<Item<'_>> = pairs
        .iter()
        .map(|(q, t)| Item {
            input: Input::Pair(q, t),
            hooks: Some(a as &dyn Hooks),
            pooling: pool.pooling,
            normalize: pool.normalize,
        })
        .collect();
    b.encode(&items, &opts(b))
        .unwrap()
        .iter()
        .map(|v| a.head_score(v).unwrap().unwrap())
        .collect()
}

pub fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

// Not every test binary that includes this module compares vectors.
#[allow(unused_imports)]
pub use aside_backbone::pooling::cosine as cos;
