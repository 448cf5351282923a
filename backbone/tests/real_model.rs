//! The real default model (all-MiniLM-L6-v2) against an independent NumPy
//! implementation (`tools/reference.py`, outputs committed as fixtures).
//! Skips with a printed reason when the model is absent; CI fetches it.

use aside_backbone::pooling::cosine as cos;
use aside_backbone::testing::real_model;
use aside_backbone::{Backbone, EncodeOptions, LoadOptions};

fn load() -> Option<Backbone> {
    let dir = real_model(env!("CARGO_MANIFEST_DIR"))?;
    Some(Backbone::load(&dir, &LoadOptions::default()).expect("real model loads"))
}

fn read_jsonl(path: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The committed reference fixtures: each input's id and text, and the NumPy
/// reference embedding of it.
fn reference() -> Vec<(String, String, Vec<f32>)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let inputs = read_jsonl(&format!("{dir}/minilm_inputs.jsonl"));
    let want = read_jsonl(&format!("{dir}/minilm_reference.jsonl"));
    assert_eq!(inputs.len(), want.len());
    inputs
        .iter()
        .zip(&want)
        .map(|(i, w)| {
            let v = w["embedding"].as_array().unwrap();
            (
                i["id"].to_string(),
                i["text"].as_str().unwrap().to_owned(),
                v.iter().map(|x| x.as_f64().unwrap() as f32).collect(),
            )
        })
        .collect()
}

/// Embeds the reference inputs with `b`: (id, embedding, reference embedding).
fn embed_reference(b: &Backbone) -> Vec<(String, Vec<f32>, Vec<f32>)> {
    let cases = reference();
    let texts: Vec<&str> = cases.iter().map(|(_, t, _)| t.as_str()).collect();
    let got = b.embed(&texts, &EncodeOptions::default()).unwrap();
    assert_eq!(got.len(), cases.len());
    cases
        .into_iter()
        .zip(got)
        .map(|((id, _, w), g)| (id, g, w))
        .collect()
}

/// Asserts the cosine of each `(i, j)` pair of `texts`' embeddings to 1e-4.
fn assert_cosines(b: &Backbone, texts: &[&str], pairs: &[(usize, usize, f64)]) {
    let v = b.embed(texts, &EncodeOptions::default()).unwrap();
    for &(i, j, want) in pairs {
        let c = cos(&v[i], &v[j]);
        assert!(
            (c - want).abs() < 1e-4,
            "cos({i},{j}) = {c:.4}, expected {want}"
        );
    }
}

#[test]
fn matches_the_independent_reference_for_every_vector() {
    let Some(b) = load() else { return };
    for (id, g, w) in embed_reference(&b) {
        assert_eq!(g.len(), 384);
        let c = cos(&g, &w);
        let d = g
            .iter()
            .zip(&w)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(c >= 0.9999, "{id}: cosine {c}");
        assert!(d <= 1e-4, "{id}: max abs diff {d}");
    }
}

/// The published sentence-transformers check: its quick-start's similarity matrix
/// for all-MiniLM-L6-v2 (mean pooling + L2 norm) is 0.6660, 0.1046 and 0.1411 for
/// these three sentences. (The project brief pairs those figures with the model
/// card's "This is an example sentence" / "Each sentence is converted" / "Hello
/// world", whose cosines are 0.4046, 0.2040 and 0.1296 — checked too.)
#[test]
fn sentence_transformers_example_sentences() {
    let Some(b) = load() else { return };
    assert_cosines(
        &b,
        &[
            "The weather is lovely today.",
            "It's so sunny outside!",
            "He drove to the stadium.",
        ],
        &[(0, 1, 0.6660), (0, 2, 0.1046), (1, 2, 0.1411)],
    );
    assert_cosines(
        &b,
        &[
            "This is an example sentence",
            "Each sentence is converted",
            "Hello world",
        ],
        &[(0, 1, 0.4046), (0, 2, 0.2040), (1, 2, 0.1296)],
    );
}

#[test]
fn truncation_at_256_tokens_equals_truncating_the_text() {
    let Some(b) = load() else { return };
    let long = "protein ".repeat(400);
    let short = "protein ".repeat(254); // 254 word tokens + [CLS] + [SEP] = 256
    let v = b
        .embed(&[&long, &short], &EncodeOptions::default())
        .unwrap();
    let d = v[0]
        .iter()
        .zip(&v[1])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(
        d < 1e-6,
        "truncated long text differs from its first 256 tokens by {d}"
    );
}

/// The int8 paths (AVX-512 VNNI) against the f32 reference vectors: short queries,
/// 256-token SciFact documents, non-ASCII and empty text all within 0.999 cosine
/// (two weight planes) or 0.995 (`int8-fast`, one plane).
#[test]
fn int8_stays_within_0999_cosine_of_the_reference() {
    use aside_backbone::Precision;
    let Some(dir) = real_model(env!("CARGO_MANIFEST_DIR")) else {
        return;
    };
    if !Precision::Int8.supported() {
        eprintln!("SKIPPED: this CPU has no AVX-512 VNNI");
        let err = Backbone::load(
            &dir,
            &LoadOptions {
                precision: Precision::Int8,
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("VNNI"), "{err}");
        return;
    }
    for (precision, bound) in [(Precision::Int8, 0.999), (Precision::Int8Fast, 0.995)] {
        let b = Backbone::load(
            &dir,
            &LoadOptions {
                precision,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(b.bert().precision(), precision);
        let mut worst = 1.0f64;
        for (id, g, w) in embed_reference(&b) {
            let c = cos(&g, &w);
            worst = worst.min(c);
            assert!(c >= bound, "{id}: {precision} cosine {c}");
        }
        eprintln!("{precision}: worst cosine to f32 {worst:.5}");
        // Not the same numbers as f32: the int8 path really ran.
        assert!(
            worst < 0.99999,
            "{precision} equals f32 to {worst}: was it used?"
        );
    }
}
