//! Every adapter kind against the independent NumPy implementation of method.md
//! (`tools/reference.py`; outputs committed by `tools/make_fixtures.sh`), on the
//! tiny random BERT and on the real model; identity of fresh adapters; mixed batches.

mod common;

use aside_adapters::testing::{random_adapter, test_metas};
use aside_adapters::{format, Adapter, Kind, Meta, Task};
use aside_backbone::testing::real_model;
use aside_backbone::{Backbone, LoadOptions};
use common::*;

const FX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn check_set(b: &Backbone, set: &str, inputs: &str, pairs: &str) {
    let inputs = read_jsonl(inputs);
    let texts: Vec<&str> = inputs.iter().map(|v| v["text"].as_str().unwrap()).collect();
    let pairs = read_jsonl(pairs);
    let pair_refs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|v| (v["query"].as_str().unwrap(), v["text"].as_str().unwrap()))
        .collect();
    for (i, (label, meta)) in test_metas(b.sha256()).into_iter().enumerate() {
        let a = random_adapter(&meta, &dims(b), b.bert(), 100 + i as u64);
        // Through the file format, as `aside embed --adapter` loads it.
        let bytes = format::write_adapter(&a).unwrap();
        let a = format::read_adapter(&bytes, &dims(b), u64::MAX).unwrap();
        let want = read_jsonl(&format!("{FX}/{set}/{label}.jsonl"));
        if meta.task == Task::Rerank {
            let got = scores(b, &a, &pair_refs);
            for (g, w) in got.iter().zip(&want) {
                let w = w["score"].as_f64().unwrap() as f32;
                assert!((g - w).abs() <= 1e-4, "{set}/{label}: score {g} vs {w}");
            }
            continue;
        }
        let got = embed(b, Some(&a), &texts);
        let bare = embed(b, None, &texts);
        for ((g, w), base) in got.iter().zip(&want).zip(&bare) {
            let w: Vec<f32> = w["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            assert!(
                cos(g, &w) >= 0.9999,
                "{set}/{label} {}: cosine {}",
                w.len(),
                cos(g, &w)
            );
            assert!(
                max_abs(g, &w) <= 1e-4,
                "{set}/{label}: max abs diff {}",
                max_abs(g, &w)
            );
            assert!(
                max_abs(g, base) > 1e-3,
                "{set}/{label}: the adapter changed nothing"
            );
        }
    }
}

#[test]
fn every_kind_matches_the_reference_on_the_tiny_model() {
    let (_d, b) = tiny();
    check_set(
        &b,
        "tiny",
        &format!("{FX}/tiny_inputs.jsonl"),
        &format!("{FX}/tiny_pairs.jsonl"),
    );
}

#[test]
fn every_kind_matches_the_reference_on_the_real_model() {
    let Some(dir) = real_model(env!("CARGO_MANIFEST_DIR")) else {
        return;
    };
    let b = Backbone::load(&dir, &LoadOptions::default()).unwrap();
    check_set(
        &b,
        "minilm",
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../backbone/tests/fixtures/minilm_inputs.jsonl"
        ),
        &format!("{FX}/minilm_pairs.jsonl"),
    );
}

#[test]
fn fresh_adapters_with_zero_up_projections_are_the_identity() {
    let (_d, b) = tiny();
    let texts = ["the cell is a protein", "hello world", ""];
    let bare = embed(&b, None, &texts);
    for (label, meta) in test_metas(b.sha256()) {
        if meta.task == Task::Rerank || meta.pooling.is_some() {
            continue;
        }
        let t = Adapter::init_tensors(&meta, &dims(&b), b.bert(), 1, &b.bert().device().clone())
            .unwrap();
        let a = Adapter::from_tensors(meta, t, &dims(&b)).unwrap();
        let got = embed(&b, Some(&a), &texts);
        for (g, w) in got.iter().zip(&bare) {
            assert!(
                max_abs(g, w) < 1e-6,
                "{label}: fresh adapter changed the output by {}",
                max_abs(g, w)
            );
        }
    }
}

#[test]
fn a_batch_mixing_adapters_equals_each_adapter_alone() {
    let (_d, b) = tiny();
    let texts = [
        "the cell is a protein",
        "hello world",
        "gene cancer",
        "a b c",
    ];
    let adapters: Vec<Adapter> = test_metas(b.sha256())
        .into_iter()
        .filter(|(_, m)| m.task == Task::Retrieval)
        .enumerate()
        .map(|(i, (_, m))| random_adapter(&m, &dims(&b), b.bert(), 7 + i as u64))
        .collect();
    // Row r of the mixed batch uses adapter r % n (and every 5th row none).
    let n = adapters.len();
    let mut items = Vec::new();
    let mut expect = Vec::new();
    for r in 0..24 {
        let t = texts[r % texts.len()];
        let a = (r % 5 != 4).then(|| &adapters[r % n]);
        let pool = a.map_or(b.pooling(), |a| a.pooling(b.pooling()));
        items.push(aside_backbone::Item {
            input: aside_backbone::Input::Single(t),
            hooks: a.map(|a| a as &dyn aside_backbone::Hooks),
            pooling: pool.pooling,
            normalize: pool.normalize,
        });
        expect.push(embed(&b, a, &[t]).remove(0));
    }
    let got = b
        .encode(
            &items,
            &aside_backbone::EncodeOptions {
                max_length: 64,
                batch_size: 24,
            },
        )
        .unwrap();
    for (r, (g, w)) in got.iter().zip(&expect).enumerate() {
        assert!(max_abs(g, w) < 1e-5, "row {r} differs by {}", max_abs(g, w));
    }
}

#[test]
fn lora_scale_follows_alpha_over_r_or_rslora() {
    let mut m = Meta::new(Kind::Lora, Task::Retrieval);
    m.r = Some(4);
    m.lora_alpha = Some(8.0);
    assert_eq!(m.lora_scale(), 2.0);
    m.lora_rslora = true;
    assert_eq!(m.lora_scale(), 4.0);
    m.lora_alpha = None;
    m.lora_rslora = false;
    assert_eq!(m.lora_scale(), 1.0, "alpha defaults to r");
}
