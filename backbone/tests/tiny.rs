//! The backbone on a tiny random BERT generated here: loading, tokenisation,
//! truncation, batching, the fused serving path against the differentiable one.

use aside_backbone::testing::TinyBert;
use aside_backbone::{Backbone, EncodeOptions, Group, Input, Item, LoadOptions, Mode, Pooling};

fn tiny(spec: TinyBert) -> (tempfile::TempDir, Backbone) {
    let dir = tempfile::tempdir().unwrap();
    spec.write(dir.path()).unwrap();
    let b = Backbone::load(dir.path(), &LoadOptions::default()).unwrap();
    (dir, b)
}

fn opts(max_length: usize, batch_size: usize) -> EncodeOptions {
    EncodeOptions {
        max_length,
        batch_size,
    }
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

const TEXTS: [&str; 6] = [
    "the cell is a protein",
    "hello world",
    "",
    "café naïve résumé 東京 ελληνικά",
    "a b c d e f g h i j k l m n o p q r s t u v w x y z and the of in to is gene cancer cells",
    "this example sentence is the example",
];

#[test]
fn bert_prefix_and_plain_names_load_the_same_model() {
    let (_a, plain) = tiny(TinyBert::default());
    let (_b, prefixed) = tiny(TinyBert {
        bert_prefix: true,
        ..TinyBert::default()
    });
    let o = opts(32, 4);
    let x = plain.embed(&TEXTS, &o).unwrap();
    let y = prefixed.embed(&TEXTS, &o).unwrap();
    assert_eq!(x, y);
    assert_eq!(plain.sha256().len(), 64);
    assert_ne!(
        plain.sha256(),
        prefixed.sha256(),
        "different files, different identity"
    );
}

#[test]
fn batched_results_equal_one_at_a_time() {
    let (_d, b) = tiny(TinyBert::default());
    let batched = b.embed(&TEXTS, &opts(32, 4)).unwrap();
    for (t, v) in TEXTS.iter().zip(&batched) {
        let single = b.embed(&[t], &opts(32, 1)).unwrap();
        assert!(
            max_abs(&single[0], v) < 1e-5,
            "{t:?} differs by {}",
            max_abs(&single[0], v)
        );
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!(
            (norm - 1.0).abs() < 1e-5,
            "normalised output, got norm {norm}"
        );
    }
}

#[test]
fn fused_serving_path_matches_differentiable_path() {
    let (_d, b) = tiny(TinyBert::default());
    let inputs: Vec<Input<'_>> = TEXTS.iter().map(|t| Input::Single(t)).collect();
    let enc = b.tokens().encode(&inputs, 32).unwrap();
    let refs: Vec<_> = enc.iter().collect();
    let batch = b.pad(&refs).unwrap();
    let groups = [Group {
        rows: 0..TEXTS.len(),
        hooks: None,
    }];
    let fast = b.bert().forward(&batch, &groups, Mode::Inference).unwrap();
    let slow = b.bert().forward(&batch, &groups, Mode::Train).unwrap();
    // Compare real tokens only: padded positions are never read.
    for (row, e) in enc.iter().enumerate() {
        let n = e.ids.len();
        let f = fast
            .get(row)
            .unwrap()
            .narrow(0, 0, n)
            .unwrap()
            .flatten_all()
            .unwrap();
        let s = slow
            .get(row)
            .unwrap()
            .narrow(0, 0, n)
            .unwrap()
            .flatten_all()
            .unwrap();
        let d = max_abs(&f.to_vec1().unwrap(), &s.to_vec1().unwrap());
        assert!(d < 1e-4, "row {row}: fused and generic differ by {d}");
    }
}

#[test]
fn truncation_keeps_cls_and_sep_at_exactly_max_length() {
    let (_d, b) = tiny(TinyBert::default());
    let long = "cell ".repeat(100);
    let exact = "a ".repeat(8); // 8 tokens + [CLS] + [SEP] = 10
    let enc = b
        .tokens()
        .encode(&[Input::Single(&long), Input::Single(&exact)], 10)
        .unwrap();
    assert_eq!(enc[0].ids.len(), 10);
    assert_eq!(enc[0].ids[0], 2, "[CLS] first");
    assert_eq!(enc[0].ids[9], 3, "[SEP] last");
    assert_eq!(
        enc[1].ids.len(),
        10,
        "an input of exactly max length is kept whole"
    );
    assert_eq!(enc[1].ids[9], 3);
    // Beyond max length the embedding equals that of the truncated text.
    let v = b.embed(&[&long, &"cell ".repeat(8)], &opts(10, 2)).unwrap();
    assert!(max_abs(&v[0], &v[1]) < 1e-6);
}

#[test]
fn empty_and_non_ascii_texts_embed() {
    let (_d, b) = tiny(TinyBert::default());
    let enc = b
        .tokens()
        .encode(&[Input::Single(""), Input::Single("café 東京")], 32)
        .unwrap();
    assert_eq!(enc[0].ids, vec![2, 3], "empty text is [CLS] [SEP]");
    assert!(enc[1].ids.len() > 3);
    let v = b.embed(&["", "café 東京"], &opts(32, 2)).unwrap();
    assert!(v.iter().flatten().all(|x| x.is_finite()));
    // Accents are stripped by the BERT normaliser, as for the real uncased model.
    let w = b.embed(&["cafe"], &opts(32, 1)).unwrap();
    let plain = b.embed(&["café"], &opts(32, 1)).unwrap();
    assert_eq!(w, plain);
}

#[test]
fn pairs_get_token_types_zero_then_one() {
    let (_d, b) = tiny(TinyBert::default());
    let enc = b
        .tokens()
        .encode(&[Input::Pair("hello", "world")], 32)
        .unwrap();
    assert_eq!(enc[0].type_ids, vec![0, 0, 0, 1, 1]);
    // Longest-first truncation trims the longer side of a pair.
    let long = "cell ".repeat(50);
    let enc = b
        .tokens()
        .encode(&[Input::Pair("hello", &long)], 12)
        .unwrap();
    assert_eq!(enc[0].ids.len(), 12);
    assert_eq!(
        enc[0].ids[1],
        b.tokens().encode(&[Input::Single("hello")], 8).unwrap()[0].ids[1]
    );
}

#[test]
fn cls_pooling_and_unnormalised_output() {
    let (_d, b) = tiny(TinyBert {
        pooling: Pooling::Cls,
        ..TinyBert::default()
    });
    assert_eq!(b.pooling().pooling, Pooling::Cls);
    let item = Item {
        input: Input::Single("hello world"),
        hooks: None,
        pooling: Pooling::Cls,
        normalize: false,
    };
    let v = b.encode(&[item], &opts(16, 1)).unwrap();
    let norm: f32 = v[0].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() > 1e-3, "unnormalised CLS vector");
}

#[test]
fn bad_options_and_missing_files_are_named() {
    let (d, b) = tiny(TinyBert::default());
    let err = b.embed(&["x"], &opts(65, 1)).unwrap_err().to_string();
    assert!(err.contains("max length 65 is out of range"), "{err}");
    let err = b.embed(&["x"], &opts(16, 0)).unwrap_err().to_string();
    assert!(err.contains("batch size"), "{err}");
    std::fs::remove_file(d.path().join("tokenizer.json")).unwrap();
    let err = Backbone::load(d.path(), &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("tokenizer.json"), "{err}");
}

#[test]
fn a_weight_of_the_wrong_shape_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    TinyBert::default().write(dir.path()).unwrap();
    // Declare a bigger hidden size than the weights have.
    let cfg_path = dir.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    cfg["intermediate_size"] = serde_json::json!(48);
    std::fs::write(&cfg_path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    let err = Backbone::load(dir.path(), &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("encoder.layer.0.intermediate.dense.weight"),
        "{err}"
    );
    assert!(err.contains("[48, 32]"), "{err}");
}
