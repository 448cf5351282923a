//! `aside-fuzz`: mutation fuzzing on stable Rust of the three parsers that read
//! bytes from outside — the native adapter file (header and tensor data), the PEFT
//! folder (adapter_config.json + adapter_model.safetensors), and collection replay
//! (log segments, snapshots, the manifest).
//!
//!   cargo run --release -p aside-fuzz -- [--seconds N] [--seed S] [adapter|peft|replay|all]
//!
//! Each target starts from valid inputs and mutates them (bit flips, boundary
//! values written over length and offset fields, bytes cut, duplicated or
//! inserted, truncation, splicing two inputs). Any panic, any input taking longer
//! than 10 s, or any single allocation over 1 GiB fails the run (exit 1) and names
//! the target, seed and iteration, which reproduce the input exactly
//! (`--seed S --replay N`). Prints, per target, inputs run and how many were
//! accepted / refused (refusals must be errors, never crashes).

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The largest single allocation an input may cause.
const ALLOC_LIMIT: usize = 1 << 30;

struct Bounded;

static ITERATION: AtomicU64 = AtomicU64::new(0);
static TARGET: AtomicUsize = AtomicUsize::new(0);
const TARGETS: [&str; 3] = ["adapter", "peft", "replay"];

unsafe impl GlobalAlloc for Bounded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOC_LIMIT {
            report_over(layout.size());
            return std::ptr::null_mut();
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        if new > ALLOC_LIMIT {
            report_over(new);
            return std::ptr::null_mut();
        }
        unsafe { System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static ALLOC: Bounded = Bounded;

/// Names the input that asked for too much memory, without allocating.
fn report_over(size: usize) {
    use std::io::Write;
    let mut buf = [0u8; 160];
    let mut cur = std::io::Cursor::new(&mut buf[..]);
    let _ = writeln!(
        cur,
        "FAIL: target {} iteration {} asked for {size} bytes in one allocation",
        TARGETS[TARGET.load(Ordering::Relaxed)],
        ITERATION.load(Ordering::Relaxed)
    );
    let n = cur.position() as usize;
    let _ = std::io::stderr().write_all(&buf[..n]);
}

/// One mutation of `seed` (another seed may be spliced in).
fn mutate(rng: &mut StdRng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    let rounds = 1 + rng.random_range(0..4);
    for _ in 0..rounds {
        if b.is_empty() {
            b.push(rng.random());
            continue;
        }
        let i = rng.random_range(0..b.len());
        match rng.random_range(0..9) {
            0 => b[i] ^= 1 << rng.random_range(0..8),
            1 => b[i] = rng.random(),
            2 => {
                // A boundary value over what may be a length or offset field.
                let v: u64 = [0, 1, 7, 8, 255, 0x7fff_ffff, 0xffff_ffff, u64::MAX, 1 << 40]
                    [rng.random_range(0..9)];
                let w = [2, 4, 8][rng.random_range(0..3)];
                for (k, byte) in v.to_le_bytes()[..w].iter().enumerate() {
                    if let Some(x) = b.get_mut(i + k) {
                        *x = *byte;
                    }
                }
            }
            3 => b.truncate(i),
            4 => {
                let j = (i + rng.random_range(1..64)).min(b.len());
                b.drain(i..j);
            }
            5 => {
                let j = (i + rng.random_range(1..64)).min(b.len());
                let chunk = b[i..j].to_vec();
                let at = rng.random_range(0..=b.len());
                b.splice(at..at, chunk);
            }
            6 => {
                let n = rng.random_range(1..16);
                let at = rng.random_range(0..=b.len());
                let junk: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                b.splice(at..at, junk);
            }
            7 if !other.is_empty() => {
                let j = rng.random_range(0..other.len());
                b.truncate(i);
                b.extend_from_slice(&other[j..]);
            }
            _ => {
                // A JSON-ish token swapped in (headers and configs are JSON).
                let tokens: [&[u8]; 8] = [
                    b"\"",
                    b"{",
                    b"}",
                    b"null",
                    b"-1",
                    b"1e308",
                    b"\"F64\"",
                    b"[0,99999999999]",
                ];
                let t = tokens[rng.random_range(0..tokens.len())];
                let j = (i + t.len()).min(b.len());
                b.splice(i..j, t.iter().copied());
            }
        }
    }
    b
}

struct Tally {
    runs: u64,
    accepted: u64,
    refused: BTreeMap<String, u64>,
}

/// The first few words of an error: kinds of refusal, for the report.
fn kind_of(e: &str) -> String {
    // A path in front (an I/O or parse error names its file) is not the kind.
    let e = match e.strip_prefix('/') {
        Some(rest) => rest.split_once(": ").map_or(rest, |(_, m)| m),
        None => e,
    };
    e.split(|c: char| c == ':' || c == '`' || c.is_ascii_digit())
        .next()
        .unwrap_or("")
        .trim()
        .chars()
        .take(48)
        .collect()
}

fn run_target(
    name: &str,
    seconds: u64,
    seed: u64,
    replay: Option<u64>,
    mut one: impl FnMut(&mut StdRng) -> Result<(), String>,
) -> Result<Tally, String> {
    TARGET.store(
        TARGETS.iter().position(|t| *t == name).expect("target"),
        Ordering::Relaxed,
    );
    let mut tally = Tally {
        runs: 0,
        accepted: 0,
        refused: BTreeMap::new(),
    };
    let t0 = Instant::now();
    let mut it = 0u64;
    loop {
        if let Some(n) = replay {
            if it > n {
                break;
            }
        } else if t0.elapsed() >= Duration::from_secs(seconds) {
            break;
        }
        ITERATION.store(it, Ordering::Relaxed);
        // Each input derives from (seed, iteration) alone, so any one is replayable.
        let mut rng = StdRng::seed_from_u64(seed ^ it.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| one(&mut rng)));
        if started.elapsed() > Duration::from_secs(10) {
            return Err(format!(
                "target {name} iteration {it} took {:?} (seed {seed})",
                started.elapsed()
            ));
        }
        match outcome {
            Ok(Ok(())) => tally.accepted += 1,
            Ok(Err(e)) => *tally.refused.entry(kind_of(&e)).or_default() += 1,
            Err(_) => {
                return Err(format!(
                    "target {name} iteration {it} panicked (seed {seed}; reproduce with --seed {seed} --replay {it} {name})"
                ))
            }
        }
        tally.runs += 1;
        it += 1;
    }
    Ok(tally)
}

/// Valid adapter files of every kind for the tiny backbone.
fn adapter_seeds(b: &aside_backbone::Backbone) -> Vec<Vec<u8>> {
    use aside_adapters::testing::{random_adapter, test_metas};
    use aside_adapters::{format, Dims};
    test_metas(b.sha256())
        .into_iter()
        .enumerate()
        .map(|(i, (_, m))| {
            format::write_adapter(&random_adapter(&m, &Dims::of(b), b.bert(), i as u64)).unwrap()
        })
        .collect()
}

fn peft_seeds(fixtures: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(fixtures).unwrap() {
        let d = e.unwrap().path();
        let cfg = std::fs::read(d.join("adapter_config.json"));
        let w = std::fs::read(d.join("adapter_model.safetensors"));
        if let (Ok(c), Ok(w)) = (cfg, w) {
            out.push((c, w));
        }
    }
    assert!(
        !out.is_empty(),
        "no PEFT fixtures under {}",
        fixtures.display()
    );
    out
}

/// A collection with two snapshots, log segments after them, and deletes.
fn replay_seed(root: &Path) -> BTreeMap<String, Vec<u8>> {
    use aside_index::{CollectionConfig, Doc, HnswParams, Index, Metric, Space};
    let index = Index::open(root).unwrap();
    let c = index
        .create(CollectionConfig {
            name: "c".into(),
            dim: 4,
            metric: Metric::Cosine,
            hnsw: HnswParams::default(),
            space: Space::default(),
            engine: Default::default(),
            lexical: None,
        })
        .unwrap();
    let doc = |i: usize| Doc {
        id: format!("d{i}"),
        vector: vec![1.0 + i as f32, 0.5, -(i as f32), 0.25],
        text: format!("text {i}"),
        metadata: serde_json::json!({"i": i, "tag": if i.is_multiple_of(2) {"even"} else {"odd"}}),
    };
    c.upsert((0..8).map(doc).collect()).unwrap();
    c.snapshot().unwrap();
    c.upsert((8..14).map(doc).collect()).unwrap();
    c.delete(&["d3".to_string()]).unwrap();
    c.snapshot().unwrap();
    c.upsert((14..20).map(doc).collect()).unwrap();
    c.delete(&["d15".to_string()]).unwrap();
    drop(c);
    drop(index);
    std::fs::read_dir(root.join("c"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

fn scratch() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    }
}

fn main() {
    let mut seconds = 60u64;
    let mut seed = 1u64;
    let mut replay = None;
    let mut which = "all".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seconds" => {
                seconds = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--seconds N")
            }
            "--seed" => seed = args.next().and_then(|v| v.parse().ok()).expect("--seed S"),
            "--replay" => {
                replay = Some(
                    args.next()
                        .and_then(|v| v.parse().ok())
                        .expect("--replay N"),
                )
            }
            t if TARGETS.contains(&t) || t == "all" => which = t.to_owned(),
            other => {
                eprintln!("unknown argument `{other}` (see the module docs)");
                std::process::exit(2);
            }
        }
    }
    // A watchdog: an input that never returns fails the run too.
    std::thread::spawn(|| {
        let mut last = (u64::MAX, Instant::now());
        loop {
            std::thread::sleep(Duration::from_secs(1));
            let it = ITERATION.load(Ordering::Relaxed);
            if it != last.0 {
                last = (it, Instant::now());
            } else if last.1.elapsed() > Duration::from_secs(30) {
                eprintln!(
                    "FAIL: target {} iteration {it} hangs (over 30 s)",
                    TARGETS[TARGET.load(Ordering::Relaxed)]
                );
                std::process::exit(1);
            }
        }
    });
    // Refusals are expected; panics are reported by run_target, not printed here.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("panic: {info}");
    }));

    let dir = tempfile::tempdir_in(scratch()).unwrap();
    aside_backbone::testing::TinyBert::default()
        .write(&dir.path().join("model"))
        .unwrap();
    let b = aside_backbone::Backbone::load(&dir.path().join("model"), &Default::default()).unwrap();
    let dims = aside_adapters::Dims::of(&b);
    let fixtures = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../adapters/tests/fixtures/peft"
    ))
    .to_owned();
    let mut failed = false;
    let mut report = |name: &str, r: Result<Tally, String>| match r {
        Ok(t) => {
            println!(
                "{name}: {} inputs in {seconds} s, {} accepted, {} refused",
                t.runs,
                t.accepted,
                t.refused.values().sum::<u64>()
            );
            let mut kinds: Vec<_> = t.refused.into_iter().collect();
            kinds.sort_by_key(|k| std::cmp::Reverse(k.1));
            for (k, n) in kinds.into_iter().take(8) {
                println!("  {n:>8}  {k}");
            }
        }
        Err(e) => {
            println!("FAIL: {e}");
            failed = true;
        }
    };
    let want = |t: &str| which == "all" || which == t;

    if want("adapter") {
        let seeds = adapter_seeds(&b);
        let r = run_target("adapter", seconds, seed, replay, |rng| {
            let s = &seeds[rng.random_range(0..seeds.len())];
            let o = &seeds[rng.random_range(0..seeds.len())];
            let input = mutate(rng, s, o);
            aside_adapters::format::read_adapter(&input, &dims, 64 << 20)
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        report("adapter", r);
    }
    if want("peft") {
        let seeds = peft_seeds(&fixtures);
        let r = run_target("peft", seconds, seed, replay, |rng| {
            let (c, w) = &seeds[rng.random_range(0..seeds.len())];
            let (oc, ow) = &seeds[rng.random_range(0..seeds.len())];
            let (cfg, weights) = match rng.random_range(0..3) {
                0 => (mutate(rng, c, oc), w.clone()),
                1 => (c.clone(), mutate(rng, w, ow)),
                _ => (mutate(rng, c, oc), mutate(rng, w, ow)),
            };
            aside_adapters::peft::convert_bounded(&cfg, &weights, &dims, 64 << 20)
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        report("peft", r);
    }
    if want("replay") {
        let base = tempfile::tempdir_in(scratch()).unwrap();
        let files = replay_seed(base.path());
        let names: Vec<&String> = files.keys().collect();
        let work = tempfile::tempdir_in(scratch()).unwrap();
        let r = run_target("replay", seconds, seed, replay, |rng| {
            let root = work.path().join("root");
            let _ = std::fs::remove_dir_all(&root);
            let cdir = root.join("c");
            std::fs::create_dir_all(&cdir).unwrap();
            let victim = names[rng.random_range(0..names.len())];
            let other = &files[names[rng.random_range(0..names.len())]];
            for (n, bytes) in &files {
                let out = if n == victim {
                    mutate(rng, bytes, other)
                } else {
                    bytes.clone()
                };
                std::fs::write(cdir.join(n), out).unwrap();
            }
            let index = aside_index::Index::open(&root).map_err(|e| e.to_string())?;
            if let Some(why) = index.failed().get("c") {
                return Err(why.clone());
            }
            let c = index.get("c").map_err(|e| e.to_string())?;
            // Whatever opened must answer reads.
            let _ = c.count();
            let _ = c.get("d1");
            let _ = c.list_ids(None, 100);
            let _ = c.search(&aside_index::SearchRequest {
                vector: &[1.0, 0.0, 0.0, 0.0],
                k: 5,
                ef: None,
                filter: None,
                threshold: None,
                exact: false,
            });
            Ok(())
        });
        report("replay", r);
    }
    if failed {
        std::process::exit(1);
    }
}
