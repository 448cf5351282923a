//! Hugging Face PEFT LoRA folders, made by the real `peft` library on the tiny BERT
//! (`tools/make_peft_fixtures.py`), load and match the embeddings PEFT computed.

mod common;

use aside_adapters::{format, peft, AdapterError};
use common::*;

const FX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

#[test]
fn peft_folders_match_peft_embeddings() {
    let (_d, b) = tiny();
    let inputs = read_jsonl(&format!("{FX}/tiny_inputs.jsonl"));
    let texts: Vec<&str> = inputs.iter().map(|v| v["text"].as_str().unwrap()).collect();
    for case in [
        "query-value",
        "all-linear-rslora-layer1",
        "rank-alpha-patterns",
    ] {
        let dir = format!("{FX}/peft/{case}");
        let a = peft::convert_dir(std::path::Path::new(&dir), &dims(&b))
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        // The native form it converts to computes the same.
        let native =
            format::read_adapter(&format::write_adapter(&a).unwrap(), &dims(&b), u64::MAX).unwrap();
        let want = read_jsonl(&format!("{dir}/embeddings.jsonl"));
        for adapter in [&a, &native] {
            let got = embed(&b, Some(adapter), &texts);
            for (g, w) in got.iter().zip(&want) {
                let w: Vec<f32> = w["embedding"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect();
                assert!(cos(g, &w) >= 0.9999, "{case}: cosine {}", cos(g, &w));
                assert!(
                    max_abs(g, &w) <= 1e-4,
                    "{case}: max abs diff {}",
                    max_abs(g, &w)
                );
            }
        }
    }
}

#[test]
fn peft_rank_pattern_is_padded_to_one_rank() {
    let (_d, b) = tiny();
    let a = peft::convert_dir(
        std::path::Path::new(&format!("{FX}/peft/rank-alpha-patterns")),
        &dims(&b),
    )
    .unwrap();
    assert_eq!(a.meta().r, Some(6), "largest rank of the pattern");
    let a = peft::convert_dir(
        std::path::Path::new(&format!("{FX}/peft/all-linear-rslora-layer1")),
        &dims(&b),
    )
    .unwrap();
    assert_eq!(a.meta().lora_layers, Some(vec![1]));
    assert!(a.meta().lora_rslora);
    assert_eq!(
        a.meta().lora_targets.len(),
        6,
        "`dense` reaches attn_out, inter and out"
    );
}

fn config_with(edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut cfg: serde_json::Value = serde_json::from_slice(
        &std::fs::read(format!("{FX}/peft/query-value/adapter_config.json")).unwrap(),
    )
    .unwrap();
    edit(&mut cfg);
    serde_json::to_vec(&cfg).unwrap()
}

#[test]
fn unsupported_peft_settings_are_refused_by_name() {
    let (_d, b) = tiny();
    let weights =
        std::fs::read(format!("{FX}/peft/query-value/adapter_model.safetensors")).unwrap();
    type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;
    let cases: Vec<(Edit, &str)> = vec![
        (Box::new(|c| c["bias"] = "all".into()), "bias `all`"),
        (Box::new(|c| c["use_dora"] = true.into()), "use_dora"),
        (
            Box::new(|c| c["peft_type"] = "IA3".into()),
            "peft_type `IA3`",
        ),
        (
            Box::new(|c| c["target_modules"] = serde_json::json!(["key"])),
            "target_modules does not name it",
        ),
        (Box::new(|c| c["r"] = 8.into()), "expected [8, 32]"),
    ];
    for (edit, want) in cases {
        let err = peft::convert(&config_with(edit), &weights, &dims(&b)).unwrap_err();
        assert!(matches!(err, AdapterError::Peft(_)), "{err}");
        assert!(
            err.to_string().contains(want),
            "`{err}` should mention {want}"
        );
    }
}

#[test]
fn a_conversion_larger_than_the_limit_is_refused_before_it_is_built() {
    let (_d, b) = tiny();
    let dir = format!("{FX}/peft/rank-alpha-patterns");
    let cfg = std::fs::read(format!("{dir}/adapter_config.json")).unwrap();
    let weights = std::fs::read(format!("{dir}/adapter_model.safetensors")).unwrap();
    // Every module padded to the largest rank outgrows the upload itself.
    let limit = weights.len() as u64;
    match peft::convert_bounded(&cfg, &weights, &dims(&b), limit) {
        Err(AdapterError::Oversized { size, limit: l }) => {
            assert_eq!(l, limit);
            assert!(size > limit, "{size}");
        }
        other => panic!("expected Oversized, got {:?}", other.map(|_| ())),
    }
    peft::convert_bounded(&cfg, &weights, &dims(&b), 64 << 20).unwrap();
}
