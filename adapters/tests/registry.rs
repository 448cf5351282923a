//! The registry: versions, atomic swap under concurrent use, the on-disk store across
//! restarts, deletion, and the LRU under a memory budget.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use aside_adapters::testing::random_adapter;
use aside_adapters::{
    format, AdapterError, Kind, Meta, PutOutcome, Registry, RegistryOptions, Task,
};
use common::*;

fn file(b: &aside_backbone::Backbone, seed: u64) -> Vec<u8> {
    let mut meta = Meta::new(Kind::IaaL, Task::Retrieval);
    meta.r = Some(4);
    meta.ar = Some(4);
    format::write_adapter(&random_adapter(&meta, &dims(b), b.bert(), seed)).unwrap()
}

fn open(dir: &std::path::Path, b: &aside_backbone::Backbone, budget: usize) -> Registry {
    Registry::open(
        dir,
        dims(b),
        RegistryOptions {
            memory_budget_bytes: budget,
            ..RegistryOptions::default()
        },
    )
    .unwrap()
}

#[test]
fn versions_swap_persist_and_delete() {
    let (_d, b) = tiny();
    let store = tempfile::tempdir().unwrap();
    let (v1, v2) = (file(&b, 1), file(&b, 2));
    {
        let reg = open(store.path(), &b, 1 << 30);
        let first = reg.put("scifact", &v1).unwrap();
        assert!(matches!(first, PutOutcome::Created(_)));
        assert_eq!(first.info().kind, "iaa-l");
        assert!(first.info().params_percent > 0.0);
        assert!(matches!(
            reg.put("scifact", &v1).unwrap(),
            PutOutcome::Unchanged(_)
        ));
        let second = reg.put("scifact", &v2).unwrap();
        assert!(matches!(second, PutOutcome::Created(_)));
        assert_ne!(first.info().version, second.info().version);
        assert_eq!(
            reg.current_info("scifact").unwrap().version,
            second.info().version
        );
        assert_eq!(reg.versions("scifact").unwrap().len(), 2);
        reg.put("other", &v1).unwrap();
        // A pinned old version stays reachable for collections not yet re-embedded.
        reg.get_version("scifact", &first.info().version).unwrap();
    }
    let reg = open(store.path(), &b, 1 << 30);
    assert!(reg.warnings().is_empty(), "{:?}", reg.warnings());
    let names: Vec<String> = reg.list().into_iter().map(|i| i.name).collect();
    assert_eq!(names, ["other", "scifact"]);
    let (info, a) = reg.get("scifact").unwrap();
    assert_eq!(info.version, aside_adapters::registry::sha256_hex(&v2));
    let from_file = format::read_adapter(&v2, &dims(&b), u64::MAX).unwrap();
    assert_eq!(
        embed(&b, Some(&a), &["hello"]),
        embed(&b, Some(&from_file), &["hello"])
    );
    reg.delete("scifact").unwrap();
    assert!(matches!(reg.get("scifact"), Err(AdapterError::NotFound(_))));
    drop(reg);
    let reg = open(store.path(), &b, 1 << 30);
    assert_eq!(reg.list().len(), 1);
}

#[test]
fn a_corrupt_version_on_disk_is_reported_and_skipped() {
    let (_d, b) = tiny();
    let store = tempfile::tempdir().unwrap();
    {
        let reg = open(store.path(), &b, 1 << 30);
        reg.put("good", &file(&b, 1)).unwrap();
        let info = reg.put("bad", &file(&b, 2)).unwrap().info().clone();
        let path = store
            .path()
            .join("bad")
            .join(format!("{}.safetensors", info.version));
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 1] ^= 0xff;
        std::fs::write(path, bytes).unwrap();
    }
    let reg = open(store.path(), &b, 1 << 30);
    assert_eq!(reg.list().len(), 1);
    assert!(
        reg.warnings()
            .iter()
            .any(|w| w.contains("does not match its sha256")),
        "{:?}",
        reg.warnings()
    );
}

#[test]
fn lru_evicts_under_the_budget_and_reloads_on_use() {
    let (_d, b) = tiny();
    let store = tempfile::tempdir().unwrap();
    let one = format::read_adapter(&file(&b, 1), &dims(&b), u64::MAX)
        .unwrap()
        .size_bytes();
    let reg = open(store.path(), &b, one * 2);
    for i in 0..4 {
        reg.put(&format!("t{i}"), &file(&b, i)).unwrap();
    }
    let s = reg.stats();
    assert_eq!(s.resident, 2);
    assert_eq!(s.evictions, 2);
    assert!(s.resident_bytes <= one * 2);
    reg.get("t3").unwrap();
    assert_eq!(reg.stats().hits, 1);
    reg.get("t0").unwrap();
    let s = reg.stats();
    assert_eq!(
        (s.misses, s.loads),
        (1, 1),
        "an evicted adapter is reloaded from disk"
    );
}

#[test]
fn a_swap_under_concurrent_use_loses_nothing_and_mixes_no_versions() {
    let (_d, b) = tiny();
    let b = Arc::new(b);
    let store = tempfile::tempdir().unwrap();
    let reg = Arc::new(open(store.path(), &b, 1 << 30));
    let files = [file(&b, 10), file(&b, 11)];
    let texts = ["the cell", "hello world", "gene cancer protein"];
    let expected: Vec<Vec<Vec<f32>>> = files
        .iter()
        .map(|f| {
            let a = format::read_adapter(f, &dims(&b), u64::MAX).unwrap();
            embed(&b, Some(&a), &texts)
        })
        .collect();
    reg.put("task", &files[0]).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let seen_any = Arc::new([AtomicBool::new(false), AtomicBool::new(false)]);
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let (b, reg, stop, served, expected, seen_any) = (
                b.clone(),
                reg.clone(),
                stop.clone(),
                served.clone(),
                expected.clone(),
                seen_any.clone(),
            );
            std::thread::spawn(move || {
                let mut seen = [false; 2];
                while !stop.load(Ordering::Relaxed) {
                    // One request: the adapter is pinned once and used for every row.
                    let (_, a) = reg.get("task").expect("never missing during a swap");
                    let out = embed(&b, Some(&a), &texts);
                    let which = expected.iter().position(|e| *e == out);
                    let which = which.expect("a request's rows all come from one version");
                    seen[which] = true;
                    seen_any[which].store(true, Ordering::Relaxed);
                    served.fetch_add(1, Ordering::Relaxed);
                }
                seen
            })
        })
        .collect();
    // At least 40 swaps, and on until a worker has been served each version (a
    // busy machine can starve the workers through a fixed number of swaps).
    let t0 = std::time::Instant::now();
    for i in 0.. {
        reg.put("task", &files[(i + 1) % 2]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let both = seen_any.iter().all(|s| s.load(Ordering::Relaxed));
        if (i >= 40 && both) || t0.elapsed() > std::time::Duration::from_secs(60) {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let seen: Vec<[bool; 2]> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    assert!(served.load(Ordering::Relaxed) > 0);
    assert!(
        seen.iter().any(|s| s[0]) && seen.iter().any(|s| s[1]),
        "both versions were served"
    );
}
