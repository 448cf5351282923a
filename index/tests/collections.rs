//! Collections: recall against exact search, filters, tombstones, compaction,
//! persistence (snapshots, torn log tails, corrupt snapshots), bad input, and a
//! real SIGKILL in the middle of heavy writes.

use std::io::{BufRead, BufReader};
use std::sync::Arc;

use aside_index::{
    Collection, CollectionConfig, Doc, Engine, Filter, HnswParams, Index, IndexError, Metric,
    SearchRequest, Space,
};
use rand::{Rng, SeedableRng};
use serde_json::json;

/// Every scenario runs on both engines; hnsw_rs orders by cosine where ours is
/// asked for the dot product (the vectors here are unit vectors).
fn config(engine: Engine, name: &str, dim: usize, metric: Metric) -> CollectionConfig {
    let metric = match (engine, metric) {
        (Engine::HnswRs, Metric::Dot) => Metric::Cosine,
        (_, m) => m,
    };
    CollectionConfig {
        name: name.into(),
        dim,
        metric,
        hnsw: HnswParams::default(),
        space: Space::default(),
        engine,
        lexical: None,
    }
}

/// `#[test] fn NAME()` on our graph and `NAME_hnsw_rs()` on hnsw_rs.
macro_rules! both_engines {
    ($($name:ident => $hnsw_rs:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            scenarios::$name(Engine::Graph)
        }
        #[test]
        fn $hnsw_rs() {
            scenarios::$name(Engine::HnswRs)
        }
    )*};
}

fn unit(rng: &mut rand::rngs::StdRng, dim: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..dim).map(|_| rng.random::<f32>() - 0.5).collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    v
}

fn docs(rng: &mut rand::rngs::StdRng, n: usize, dim: usize, prefix: &str) -> Vec<Doc> {
    (0..n)
        .map(|i| Doc {
            id: format!("{prefix}{i}"),
            vector: unit(rng, dim),
            text: format!("text {i}"),
            metadata: json!({"group": i % 3, "lang": if i % 2 == 0 { "en" } else { "de" }}),
        })
        .collect()
}

fn search(
    c: &Collection,
    v: &[f32],
    k: usize,
    exact: bool,
    filter: Option<&Filter>,
) -> Vec<String> {
    c.search(&SearchRequest {
        vector: v,
        k,
        ef: Some(128),
        filter,
        threshold: None,
        exact,
    })
    .unwrap()
    .into_iter()
    .map(|h| h.id)
    .collect()
}

mod scenarios {
    use super::*;

    pub fn hnsw_recall_against_exact_search_within_budget(engine: Engine) {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        let c = index
            .create(config(engine, "r", 32, Metric::Cosine))
            .unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        for chunk in docs(&mut rng, 6000, 32, "d").chunks(1000) {
            c.upsert(chunk.to_vec()).unwrap();
        }
        // Measure the graph itself, not the exact scan of slots still waiting for it.
        c.wait_indexed();
        assert_eq!(c.stats().unindexed, 0);
        let (mut total, mut found, mut bad) = (0, 0, 0);
        for _ in 0..100 {
            let q = unit(&mut rng, 32);
            let exact = search(&c, &q, 10, true, None);
            let approx = search(&c, &q, 10, false, None);
            let hits = approx.iter().filter(|id| exact.contains(id)).count();
            total += 10;
            found += hits;
            if hits < 8 {
                bad += 1;
            }
        }
        let recall = found as f64 / total as f64;
        assert!(recall >= 0.95, "recall@10 {recall}");
        assert!(bad <= 5, "{bad} of 100 queries under 0.8 recall (budget 5)");
    }

    pub fn filters_tombstones_and_compaction(engine: Engine) {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        let c = index.create(config(engine, "f", 16, Metric::Dot)).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        c.upsert(docs(&mut rng, 3000, 16, "d")).unwrap();
        let q = unit(&mut rng, 16);
        let f = Filter::parse(&json!({"lang": "en", "group": {"in": [0, 1]}})).unwrap();
        for exact in [true, false] {
            let hits = c
                .search(&SearchRequest {
                    vector: &q,
                    k: 10,
                    ef: None,
                    filter: Some(&f),
                    threshold: None,
                    exact,
                })
                .unwrap();
            assert_eq!(hits.len(), 10);
            assert!(hits
                .iter()
                .all(|h| h.metadata["lang"] == "en" && h.metadata["group"] != 2));
            assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
        }
        // Delete most of the collection: tombstones are skipped and k hits still come back.
        let gone: Vec<String> = (0..2500).map(|i| format!("d{i}")).collect();
        assert_eq!(c.delete(&gone).unwrap(), 2500);
        assert_eq!(
            c.delete(&gone).unwrap(),
            0,
            "deleting again removes nothing"
        );
        let hits = search(&c, &q, 10, false, None);
        assert_eq!(hits.len(), 10);
        assert!(hits
            .iter()
            .all(|id| id[1..].parse::<usize>().unwrap() >= 2500));
        // Replacing a document keeps one copy with the new contents.
        let mut d = c.get("d2600").unwrap();
        d.text = "replaced".into();
        c.upsert(vec![d]).unwrap();
        assert_eq!(c.get("d2600").unwrap().text, "replaced");
        assert_eq!(c.count(), 500);
        let before = search(&c, &q, 10, true, None);
        c.compact();
        assert_eq!(c.stats().tombstones, 0);
        assert_eq!(search(&c, &q, 10, true, None), before);
        assert_eq!(search(&c, &q, 10, false, None).len(), 10);
        // Threshold and paging.
        let top = c
            .search(&SearchRequest {
                vector: &q,
                k: 10,
                ef: None,
                filter: None,
                threshold: Some(10.0),
                exact: true,
            })
            .unwrap();
        assert!(top.is_empty());
        let page = c.list_ids(None, 3);
        assert_eq!(c.list_ids(Some(&page[2]), 2).len(), 2);
    }

    pub fn reopen_restores_everything_through_snapshots_and_log(engine: Engine) {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let all = docs(&mut rng, 300, 8, "p");
        {
            let index = Index::open(dir.path()).unwrap();
            let c = index.create(config(engine, "p", 8, Metric::L2)).unwrap();
            // An empty graph snapshots too (hnsw_rs cannot dump one: a marker).
            c.snapshot().unwrap();
            c.upsert(all[..100].to_vec()).unwrap();
            c.snapshot().unwrap();
            c.upsert(all[100..200].to_vec()).unwrap();
            c.snapshot().unwrap();
            c.upsert(all[200..].to_vec()).unwrap();
            c.delete(&["p5".to_string()]).unwrap();
        }
        let index = Index::open(dir.path()).unwrap();
        assert!(index.warnings().is_empty(), "{:?}", index.warnings());
        let c = index.get("p").unwrap();
        assert_eq!(c.count(), 299);
        assert!(c.get("p5").is_none());
        assert_eq!(c.get("p250").unwrap(), all[250]);

        // A torn tail (a record cut short) is dropped; what came before stays.
        let seg = std::fs::read_dir(dir.path().join("p"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .max()
            .unwrap();
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3]);
        std::fs::write(&seg, bytes).unwrap();
        drop(index);
        let index = Index::open(dir.path()).unwrap();
        assert!(
            index.warnings().iter().any(|w| w.contains("torn")),
            "{:?}",
            index.warnings()
        );
        assert_eq!(index.get("p").unwrap().count(), 299);

        // A corrupt newest snapshot: reported, and the previous one plus the log used.
        let snaps: Vec<_> = std::fs::read_dir(dir.path().join("p"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "bin"))
            .collect();
        let newest = snaps.iter().max().unwrap();
        let mut b = std::fs::read(newest).unwrap();
        let n = b.len();
        b[n / 2] ^= 0xff;
        std::fs::write(newest, b).unwrap();
        drop(index);
        let index = Index::open(dir.path()).unwrap();
        assert!(
            index.warnings().iter().any(|w| w.contains("checksum")),
            "{:?}",
            index.warnings()
        );
        let c = index.get("p").unwrap();
        assert_eq!(c.count(), 299);
        assert_eq!(c.get("p150").unwrap(), all[150]);
    }

    pub fn writes_are_searchable_before_the_graph_holds_them_and_the_graph_is_snapshotted(
        engine: Engine,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let all = docs(&mut rng, 5000, 32, "g");
        let queries: Vec<Vec<f32>> = (0..50).map(|_| unit(&mut rng, 32)).collect();
        let (before, tombstones) = {
            let index = Index::open(dir.path()).unwrap();
            let c = index
                .create(config(engine, "g", 32, Metric::Cosine))
                .unwrap();
            c.upsert(all.clone()).unwrap();
            // Acknowledged = findable, whether the indexer has reached it or not.
            for d in all.iter().step_by(250) {
                assert_eq!(search(&c, &d.vector, 1, false, None), vec![d.id.clone()]);
            }
            c.wait_indexed();
            let gone: Vec<String> = (0..200).map(|i| format!("g{i}")).collect();
            c.delete(&gone).unwrap();
            c.snapshot().unwrap();
            let before: Vec<Vec<String>> = queries
                .iter()
                .map(|q| search(&c, q, 10, false, None))
                .collect();
            (before, c.stats().tombstones)
        };
        let index = Index::open(dir.path()).unwrap();
        assert!(index.warnings().is_empty(), "{:?}", index.warnings());
        let c = index.get("g").unwrap();
        // The graph came back with the snapshot: nothing to rebuild, same answers.
        let st = c.stats();
        assert_eq!(
            (st.count, st.unindexed, st.tombstones),
            (4800, 0, tombstones)
        );
        let after: Vec<Vec<String>> = queries
            .iter()
            .map(|q| search(&c, q, 10, false, None))
            .collect();
        assert_eq!(after, before);
        assert!(after
            .iter()
            .flatten()
            .all(|id| id[1..].parse::<usize>().unwrap() >= 200));
    }

    pub fn version_1_snapshots_without_a_graph_still_open(engine: Engine) {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        let all = docs(&mut rng, 2500, 8, "v");
        {
            let index = Index::open(dir.path()).unwrap();
            index.create(config(engine, "v", 8, Metric::Dot)).unwrap();
        }
        // The earlier format: live documents only, `ASIDESNP | 1 | body | crc32(body)`.
        let put_str = |b: &mut Vec<u8>, s: &str| {
            b.extend_from_slice(&(s.len() as u32).to_le_bytes());
            b.extend_from_slice(s.as_bytes());
        };
        let mut body = (all.len() as u32).to_le_bytes().to_vec();
        for d in &all {
            put_str(&mut body, &d.id);
            body.extend_from_slice(&8u32.to_le_bytes());
            d.vector
                .iter()
                .for_each(|x| body.extend_from_slice(&x.to_le_bytes()));
            put_str(&mut body, &d.text);
            put_str(&mut body, &d.metadata.to_string());
        }
        let mut file = b"ASIDESNP".to_vec();
        file.extend_from_slice(&1u32.to_le_bytes());
        file.extend_from_slice(&body);
        file.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        std::fs::write(dir.path().join("v/snap-0000000001.bin"), file).unwrap();
        let index = Index::open(dir.path()).unwrap();
        assert!(index.warnings().is_empty(), "{:?}", index.warnings());
        let c = index.get("v").unwrap();
        assert_eq!(c.count(), 2500);
        assert_eq!(c.get("v7").unwrap(), all[7]);
        c.wait_indexed();
        let q = unit(&mut rng, 8);
        let exact = search(&c, &q, 10, true, None);
        let approx = search(&c, &q, 10, false, None);
        let found = approx.iter().filter(|id| exact.contains(id)).count();
        assert!(found >= 8, "the rebuilt graph found {found} of 10");
    }

    pub fn bad_input_is_refused_and_changes_nothing(engine: Engine) {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        let c = index
            .create(config(engine, "b", 4, Metric::Cosine))
            .unwrap();
        let ok = Doc {
            id: "a".into(),
            vector: vec![1.0, 0.0, 0.0, 0.0],
            text: "a".into(),
            metadata: json!({}),
        };
        c.upsert(vec![ok.clone()]).unwrap();
        let d = |id: &str, v: Vec<f32>| Doc {
            id: id.into(),
            vector: v,
            text: String::new(),
            metadata: json!({}),
        };
        let cases: Vec<(Vec<Doc>, &str)> = vec![
            (
                vec![d("x", vec![1.0, 2.0, 3.0, 4.0]), d("y", vec![1.0])],
                "document `y`: vector has dimension 1, the collection's is 4",
            ),
            (
                vec![d("x", vec![1.0, f32::NAN, 0.0, 0.0])],
                "document `x`: vector element 1 is not finite",
            ),
            (
                vec![d("x", vec![1.0; 4]), d("x", vec![2.0; 4])],
                "document id `x` appears more than once",
            ),
            (vec![d("z", vec![0.0; 4])], "zero vector"),
            (vec![d("", vec![1.0; 4])], "document ids must be"),
        ];
        for (batch, want) in cases {
            let err = c.upsert(batch).unwrap_err().to_string();
            assert!(err.contains(want), "`{err}` should contain `{want}`");
        }
        assert_eq!(c.count(), 1);
        assert_eq!(c.get("a").unwrap().vector, ok.vector);
        assert!(c.get("x").is_none());
        let q = [1.0, 0.0];
        let err = c
            .search(&SearchRequest {
                vector: &q,
                k: 1,
                ef: None,
                filter: None,
                threshold: None,
                exact: false,
            })
            .unwrap_err();
        assert!(matches!(
            err,
            IndexError::WrongQueryDimension {
                expected: 4,
                got: 2
            }
        ));
        assert!(matches!(
            index.get("nope"),
            Err(IndexError::UnknownCollection(_))
        ));
        assert!(matches!(
            index.create(config(engine, "b", 4, Metric::Cosine)),
            Err(IndexError::CollectionExists(_))
        ));
        assert!(matches!(
            index.create(config(engine, "../x", 4, Metric::Cosine)),
            Err(IndexError::BadName(_))
        ));
        let mut wide = config(engine, "w", 4, Metric::Cosine);
        wide.hnsw.m = 300;
        let err = index.create(wide).unwrap_err().to_string();
        assert!(err.contains("hnsw.m 300 is out of range 2..=256"), "{err}");
        index.delete("b").unwrap();
        assert!(index.get("b").is_err());
        assert!(Index::open(dir.path()).unwrap().list().is_empty());
    }

    pub fn concurrent_readers_during_writes(engine: Engine) {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        let c: Arc<Collection> = index
            .create(config(engine, "c", 16, Metric::Cosine))
            .unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let batches: Vec<Vec<Doc>> = (0..8)
            .map(|b| docs(&mut rng, 300, 16, &format!("b{b}-")))
            .collect();
        let q = unit(&mut rng, 16);
        let writers: Vec<_> = batches
            .into_iter()
            .map(|b| {
                let c = c.clone();
                std::thread::spawn(move || c.upsert(b).unwrap())
            })
            .collect();
        let mut searches = 0;
        while writers.iter().any(|w| !w.is_finished()) && searches < 10_000 {
            let hits = search(&c, &q, 5, false, None);
            assert!(hits.len() <= 5);
            searches += 1;
        }
        for w in writers {
            w.join().unwrap();
        }
        assert_eq!(c.count(), 2400);
    }

    pub fn sigkill_during_heavy_writes_keeps_every_acknowledged_write(engine: Engine) {
        for round in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_crash_writer"))
                .arg(dir.path())
                .arg(if engine == Engine::HnswRs {
                    "hnsw_rs"
                } else {
                    "graph"
                })
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
            let mut acked: Option<u64> = None;
            // Kill after a varying number of acknowledgements.
            let stop_after = 30 + 25 * round;
            while let Some(Ok(l)) = lines.next() {
                acked = Some(l.strip_prefix("ack ").unwrap().parse().unwrap());
                if acked.unwrap() >= stop_after {
                    break;
                }
            }
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            // The writer runs ahead of this reader by whatever the pipe buffers: the
            // acknowledgements it printed before the kill are still in the pipe, and
            // the bound below must use the last of them.
            for l in lines.map_while(Result::ok) {
                if let Some(n) = l.strip_prefix("ack ").and_then(|n| n.parse().ok()) {
                    acked = Some(n);
                }
            }
            let acked = acked.expect("the writer acknowledged something");
            let index = Index::open(dir.path()).unwrap();
            let c = index.get("crash").unwrap();
            for b in 0..=acked {
                for i in 0..20u64 {
                    let d = c
                        .get(&format!("b{b}-{i}"))
                        .unwrap_or_else(|| panic!("acknowledged b{b}-{i} lost"));
                    assert_eq!(d.vector[0], (b * 100 + i * 8) as f32);
                    // Found lexically too: the lexical index caught up from the log.
                    let hits = c
                        .search_lexical(&aside_index::LexicalRequest {
                            text: &format!("tok{b}x{i}"),
                            k: 1,
                            filter: None,
                            threshold: None,
                        })
                        .unwrap();
                    assert_eq!(hits[0].id, format!("b{b}-{i}"), "lexical search lost it");
                }
            }
            // Nothing else: only whole batches, at most the one in flight beyond the last ack.
            let n = c.count() as u64;
            assert!(
                n.is_multiple_of(20),
                "a batch was applied partially ({n} docs)"
            );
            assert!(
                n / 20 <= acked + 2,
                "{n} docs but only {} batches acknowledged",
                acked + 1
            );
        }
    }
}

both_engines! {
    hnsw_recall_against_exact_search_within_budget => hnsw_recall_against_exact_search_within_budget_hnsw_rs,
    filters_tombstones_and_compaction => filters_tombstones_and_compaction_hnsw_rs,
    reopen_restores_everything_through_snapshots_and_log => reopen_restores_everything_through_snapshots_and_log_hnsw_rs,
    writes_are_searchable_before_the_graph_holds_them_and_the_graph_is_snapshotted => writes_are_searchable_before_the_graph_holds_them_and_the_graph_is_snapshotted_hnsw_rs,
    version_1_snapshots_without_a_graph_still_open => version_1_snapshots_without_a_graph_still_open_hnsw_rs,
    bad_input_is_refused_and_changes_nothing => bad_input_is_refused_and_changes_nothing_hnsw_rs,
    concurrent_readers_during_writes => concurrent_readers_during_writes_hnsw_rs,
    sigkill_during_heavy_writes_keeps_every_acknowledged_write => sigkill_during_heavy_writes_keeps_every_acknowledged_write_hnsw_rs,
}

#[test]
fn a_collection_written_by_one_process_is_not_opened_by_another() {
    // A second server on the same data directory: opening the collection would
    // replay the log being written (and cut the torn tail of a write in flight),
    // and clear away the staging copy being filled as a leftover. It gets neither.
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_crash_writer"))
        .args([dir.path().to_str().unwrap(), "graph", "staging"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    while let Some(Ok(l)) = lines.next() {
        if l == "ack 5" {
            break;
        }
    }
    let second = Index::open(dir.path()).unwrap();
    let why = second
        .failed()
        .get("crash")
        .expect("opened while another process writes it");
    assert!(why.contains("another process"), "{why}");
    assert!(second.get("crash").is_err());
    assert!(
        second
            .warnings()
            .iter()
            .any(|w| w.contains(".staging-crash")),
        "{:?}",
        second.warnings()
    );
    assert!(dir.path().join(".staging-crash/manifest.json").is_file());
    child.kill().unwrap(); // SIGKILL: the kernel lets go of the lock
    child.wait().unwrap();
    let mut acked = 5;
    for l in lines.map_while(Result::ok) {
        if let Some(n) = l.strip_prefix("ack ").and_then(|n| n.parse().ok()) {
            acked = n;
        }
    }
    drop(second);
    // The writer gone, everything it acknowledged is there, and its staging copy
    // is cleared away as the leftover it now is.
    let third = Index::open(dir.path()).unwrap();
    let c = third.get("crash").unwrap();
    assert!(
        c.count() >= (acked + 1) * 20,
        "{} < {}",
        c.count(),
        (acked + 1) * 20
    );
    assert!(!dir.path().join(".staging-crash").exists());
}
