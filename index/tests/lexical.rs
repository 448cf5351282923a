//! The lexical (BM25) index of a local collection: the analyzer, scores against
//! hand-computed BM25, the uncommitted tail scored like committed documents,
//! replacements, deletes, filters, reopen, rebuild of a damaged index, compaction
//! and the carry-over through a re-embedding.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aside_index::{
    Collection, CollectionConfig, Doc, Filter, HnswParams, Index, LexicalRequest, LexicalSettings,
    Metric, Space,
};
use serde_json::json;

fn config(name: &str) -> CollectionConfig {
    CollectionConfig {
        name: name.into(),
        dim: 2,
        metric: Metric::Dot,
        hnsw: HnswParams::default(),
        space: Space::default(),
        engine: Default::default(),
        lexical: Some(LexicalSettings {
            language: "en".into(),
        }),
    }
}

fn doc(id: &str, text: &str, meta: serde_json::Value) -> Doc {
    Doc {
        id: id.into(),
        vector: vec![1.0, 0.5],
        text: text.into(),
        metadata: meta,
    }
}

fn ids(hits: Vec<(String, f32)>) -> Vec<String> {
    hits.into_iter().map(|h| h.0).collect()
}

fn search(c: &Collection, q: &str, k: usize, filter: Option<&Filter>) -> Vec<(String, f32)> {
    c.search_lexical(&LexicalRequest {
        text: q,
        k,
        filter,
        threshold: None,
    })
    .unwrap()
    .into_iter()
    .map(|h| (h.id, h.score))
    .collect()
}

/// Waits until the lexical index has committed everything written.
fn committed(c: &Arc<Collection>) {
    let t = Instant::now();
    while c.lexical_tail() > 0 {
        assert!(t.elapsed() < Duration::from_secs(30), "no lexical commit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// BM25 as tantivy (and Lucene) computes it: k1 = 1.2, b = 0.75,
/// idf = ln(1 + (N − n + 0.5) / (n + 0.5)).
fn bm25(tf: f32, dl: f32, avgdl: f32, n: f32, df: f32) -> f32 {
    let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
    idf * tf * 2.2 / (tf + 1.2 * (1.0 - 0.75 + 0.75 * dl / avgdl))
}

#[test]
fn the_analyzer_lowercases_drops_stop_words_and_stems() {
    let a = settings("en").analyzer().unwrap();
    assert_eq!(
        aside_index::terms(&a, "The Running DOGS, and the cats' studies!"),
        vec!["run", "dog", "cat", "studi"]
    );
    let a = settings("de").analyzer().unwrap();
    assert_eq!(
        aside_index::terms(&a, "Die Häuser und die Bäume"),
        vec!["haus", "baum"]
    );
}

fn settings(code: &str) -> LexicalSettings {
    LexicalSettings {
        language: code.into(),
    }
}

#[test]
fn bm25_scores_equal_hand_computed_values_in_the_tail_and_committed() {
    let dir = tempfile::tempdir().unwrap();
    let ix = Index::open(dir.path()).unwrap();
    let c = ix.create(config("tiny")).unwrap();
    // Lengths after the analyzer: 2, 3, 4 ("the" is a stop word).
    c.upsert(vec![
        doc("d1", "apple banana", json!({})),
        doc("d2", "apple apples cherry", json!({})),
        doc("d3", "the banana cherry date fig", json!({})),
    ])
    .unwrap();
    let avgdl = 3.0;
    let want = [
        ("d2", bm25(2.0, 3.0, avgdl, 3.0, 2.0)),
        ("d1", bm25(1.0, 2.0, avgdl, 3.0, 2.0)),
    ];
    let check = |got: Vec<(String, f32)>| {
        assert_eq!(got.len(), 2, "{got:?}");
        for ((id, s), (wid, ws)) in got.iter().zip(want) {
            assert_eq!(id, wid);
            assert!((s - ws).abs() < 1e-5, "{id}: {s} vs {ws}");
        }
    };
    // Just written: the documents are still in the tail.
    assert_eq!(c.lexical_tail(), 3);
    check(search(&c, "apple", 10, None));
    committed(&c);
    check(search(&c, "Apples", 10, None));
    // Two terms: the sum of both terms' scores.
    let got = search(&c, "banana cherry", 10, None);
    let d3 = bm25(1.0, 4.0, avgdl, 3.0, 2.0) * 2.0;
    assert_eq!(got[0].0, "d3");
    assert!((got[0].1 - d3).abs() < 1e-5);
    // Stop words alone match nothing.
    assert!(search(&c, "the and of", 10, None).is_empty());
}

#[test]
fn replacements_deletes_and_filters_apply() {
    let dir = tempfile::tempdir().unwrap();
    let ix = Index::open(dir.path()).unwrap();
    let c = ix.create(config("edit")).unwrap();
    let docs: Vec<Doc> = (0..50)
        .map(|i| {
            doc(
                &format!("d{i}"),
                &format!("common word{i} {}", if i % 2 == 0 { "even" } else { "odd" }),
                json!({"parity": if i % 2 == 0 { "even" } else { "odd" }, "i": i}),
            )
        })
        .collect();
    c.upsert(docs).unwrap();
    for round in 0..2 {
        // Round 0 in the tail, round 1 committed.
        assert_eq!(search(&c, "word7", 5, None)[0].0, "d7");
        let f = Filter::parse(&json!({"parity": "even"})).unwrap();
        let got = search(&c, "common", 100, Some(&f));
        assert_eq!(got.len(), 25, "round {round}");
        assert!(got
            .iter()
            .all(|(id, _)| id[1..].parse::<u32>().unwrap() % 2 == 0));
        let f = Filter::parse(&json!({"i": {"in": [3, 4]}})).unwrap();
        let got: Vec<String> = search(&c, "common", 100, Some(&f))
            .into_iter()
            .map(|x| x.0)
            .collect();
        assert_eq!(got.len(), 2);
        committed(&c);
    }
    // A replacement: the old text is gone, the new one found, once.
    c.upsert(vec![doc("d7", "replaced zebra", json!({}))])
        .unwrap();
    assert!(search(&c, "word7", 5, None).is_empty());
    assert_eq!(search(&c, "zebra", 5, None), search(&c, "zebra", 5, None));
    assert_eq!(search(&c, "zebra", 5, None).len(), 1);
    // The same text again keeps one indexed version.
    c.upsert(vec![doc("d7", "replaced zebra", json!({"x": 1}))])
        .unwrap();
    let f = Filter::parse(&json!({"x": 1})).unwrap();
    assert_eq!(search(&c, "zebra", 5, Some(&f)).len(), 1);
    c.delete(&["d8".into()]).unwrap();
    assert!(search(&c, "word8", 5, None).is_empty());
    committed(&c);
    assert!(search(&c, "word7", 5, None).is_empty());
    assert!(search(&c, "word8", 5, None).is_empty());
    assert_eq!(search(&c, "zebra", 5, None).len(), 1);
    assert_eq!(search(&c, "common", 100, None).len(), 48);
}

#[test]
fn deleted_versions_still_in_the_searcher_never_crowd_out_live_documents() {
    // 40 documents that BM25 ranks first, committed, then deleted: until the next
    // commit tantivy's searcher still holds them, ahead of every live document.
    // An unfiltered search widens past them and still answers k live documents.
    let dir = tempfile::tempdir().unwrap();
    let ix = Index::open(dir.path()).unwrap();
    let c = ix.create(config("stale")).unwrap();
    let mut docs: Vec<Doc> = (0..40)
        .map(|i| doc(&format!("hot{i}"), "zeta zeta zeta", json!({})))
        .collect();
    docs.extend((0..20).map(|i| {
        doc(
            &format!("live{i}"),
            &format!("zeta filler{i} words here"),
            json!({}),
        )
    }));
    c.upsert(docs).unwrap();
    committed(&c);
    assert!(search(&c, "zeta", 5, None)
        .iter()
        .all(|(id, _)| id.starts_with("hot")));
    let hot: Vec<String> = (0..40).map(|i| format!("hot{i}")).collect();
    c.delete(&hot).unwrap();
    for k in [1, 5, 20] {
        let got = search(&c, "zeta", k, None);
        assert_eq!(got.len(), k, "k {k}: {got:?}");
        assert!(got.iter().all(|(id, _)| id.starts_with("live")), "{got:?}");
    }
    committed(&c);
    assert_eq!(search(&c, "zeta", 100, None).len(), 20);
}

#[test]
fn reopen_rebuilds_a_damaged_or_missing_index_and_catches_up_after_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let before;
    {
        let ix = Index::open(dir.path()).unwrap();
        let c = ix.create(config("re")).unwrap();
        let docs: Vec<Doc> = (0..300)
            .map(|i| {
                doc(
                    &format!("d{i}"),
                    &format!("alpha beta{} gamma{i}", i % 7),
                    json!({}),
                )
            })
            .collect();
        c.upsert(docs).unwrap();
        // Many replacements, then a compaction that renumbers every slot.
        for i in 0..200 {
            c.upsert(vec![doc(
                &format!("d{i}"),
                &format!("delta beta{} gamma{i}", i % 5),
                json!({}),
            )])
            .unwrap();
        }
        c.compact();
        c.snapshot().unwrap();
        // Scores move (replaced versions count in the statistics until merged away),
        // the order does not.
        before = ids(search(&c, "beta3 delta", 50, None));
        assert_eq!(search(&c, "gamma250", 1, None)[0].0, "d250");
        // Dropped before its tail is committed: reopening catches up from the log.
        assert!(c.lexical_tail() > 0);
    }
    let ix = Index::open(dir.path()).unwrap();
    let c = ix.get("re").unwrap();
    assert!(
        c.warnings().iter().any(|w| w.contains("lexical index")),
        "{:?}",
        c.warnings()
    );
    let scored = search(&c, "beta3 delta", 50, None);
    assert_eq!(ids(scored.clone()), before);
    assert_eq!(c.lexical_tail(), 0);
    drop((c, ix));
    // Opened again with nothing missing: nothing to do.
    let ix = Index::open(dir.path()).unwrap();
    let c = ix.get("re").unwrap();
    assert!(
        c.warnings().iter().all(|w| !w.contains("lexical")),
        "{:?}",
        c.warnings()
    );
    drop((c, ix));
    // A damaged index (meta.json overwritten) is rebuilt from the documents.
    std::fs::write(dir.path().join("re/lexical/meta.json"), b"{ not json").unwrap();
    let ix = Index::open(dir.path()).unwrap();
    let c = ix.get("re").unwrap();
    assert!(
        c.warnings().iter().any(|w| w.contains("unreadable")),
        "{:?}",
        c.warnings()
    );
    assert_eq!(ids(search(&c, "beta3 delta", 50, None)), before);
    drop((c, ix));
    // A deleted one too.
    std::fs::remove_dir_all(dir.path().join("re/lexical")).unwrap();
    let ix = Index::open(dir.path()).unwrap();
    let c = ix.get("re").unwrap();
    assert_eq!(ids(search(&c, "beta3 delta", 50, None)), before);
}

#[test]
fn a_promoted_staging_copy_keeps_the_lexical_index() {
    let dir = tempfile::tempdir().unwrap();
    let ix = Index::open(dir.path()).unwrap();
    let c = ix.create(config("swap")).unwrap();
    let docs: Vec<Doc> = (0..100)
        .map(|i| doc(&format!("d{i}"), &format!("text{i} shared"), json!({})))
        .collect();
    c.upsert(docs.clone()).unwrap();
    committed(&c);
    let before = search(&c, "shared text42", 10, None);
    // Re-embedding: the same documents, new vectors, into a staging copy.
    let staging = ix.create_staging(config("swap")).unwrap();
    assert!(!staging.has_lexical());
    staging
        .upsert(
            docs.into_iter()
                .map(|mut d| {
                    d.vector = vec![0.5, 1.0];
                    d
                })
                .collect(),
        )
        .unwrap();
    let staging = ix.staging_of("swap").unwrap();
    let c2 = ix.promote("swap", staging).unwrap();
    assert!(c2.has_lexical());
    // Nothing had to be added or removed: the index was carried over.
    assert!(
        c2.warnings().iter().all(|w| !w.contains("lexical")),
        "{:?}",
        c2.warnings()
    );
    assert_eq!(search(&c2, "shared text42", 10, None), before);
    assert_eq!(c2.get("d1").unwrap().vector, vec![0.5, 1.0]);
}
