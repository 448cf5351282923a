//! `aside bench adapters`: the adapter figures of the README, measured in one run:
//! encoding with an IAA-L r=12 ar=12 adapter against the bare backbone, a batch
//! mixing 32 adapters against a batch on one, load + activate time, and the memory
//! of 1,000 resident IAA-L adapters.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use aside_adapters::testing::random_adapter;
use aside_adapters::{format, Adapter, Dims, Kind, Meta, Registry, RegistryOptions, Task};
use aside_backbone::{Backbone, EncodeOptions, Hooks, Item, LoadOptions};
use clap::Args;

#[derive(Debug, Args)]
pub struct BenchAdaptersArgs {
    #[command(flatten)]
    pub model: super::ModelArgs,
    /// BEIR folder with `corpus.jsonl`.
    #[arg(long)]
    pub data: PathBuf,
    /// Documents per throughput measurement.
    #[arg(long, default_value_t = 128)]
    pub docs: usize,
    #[arg(long, default_value_t = aside_backbone::DEFAULT_MAX_LENGTH)]
    pub max_length: usize,
    /// Rounds of the throughput comparison.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Resident adapters for the memory figure.
    #[arg(long, default_value_t = 1000)]
    pub resident: usize,
}

fn iaa_l(b: &Backbone, seed: u64) -> Adapter {
    let mut m = Meta::new(Kind::IaaL, Task::Retrieval);
    m.r = Some(12);
    m.ar = Some(12);
    m.backbone = Some(b.sha256().to_owned());
    random_adapter(&m, &Dims::of(b), b.bert(), seed)
        .for_backbone(b)
        .expect("placing an adapter for the backbone")
}

fn rss_bytes() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<usize>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn time_encode(b: &Backbone, items: &[Item<'_>], opts: &EncodeOptions) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    b.encode(items, opts)?;
    Ok(items.len() as f64 / t0.elapsed().as_secs_f64())
}

pub fn run(a: BenchAdaptersArgs) -> anyhow::Result<()> {
    let b = a.model.load(&LoadOptions::default())?;
    let docs = super::bench::read_corpus(&a.data.join("corpus.jsonl"), a.docs)?;
    let opts = EncodeOptions {
        max_length: a.max_length,
        batch_size: 32,
    };
    let one = iaa_l(&b, 1);
    let many: Vec<Adapter> = (0..32).map(|i| iaa_l(&b, 100 + i)).collect();
    let pool = one.pooling(b.pooling());
    let item = |t: &'static str, h: Option<&'static dyn Hooks>| Item {
        input: aside_backbone::Input::Single(t),
        hooks: h,
        pooling: pool.pooling,
        normalize: pool.normalize,
    };
    // The items borrow the texts and adapters for the whole run.
    let texts: &'static [(String, String)] = Box::leak(docs.into_boxed_slice());
    let one: &'static Adapter = Box::leak(Box::new(one));
    let many: &'static [Adapter] = Box::leak(many.into_boxed_slice());
    let bare: Vec<Item<'_>> = texts.iter().map(|(_, t)| item(t, None)).collect();
    let single: Vec<Item<'_>> = texts.iter().map(|(_, t)| item(t, Some(one))).collect();
    let mixed: Vec<Item<'_>> = texts
        .iter()
        .enumerate()
        .map(|(i, (_, t))| item(t, Some(&many[i % 32])))
        .collect();
    b.encode(&bare[..8.min(bare.len())], &opts)?;
    println!(
        "{} docs, max length {}, batch 32",
        texts.len(),
        a.max_length
    );
    // Rounds measure the three variants back to back, so drift on a shared machine
    // hits them alike; each ratio is taken within a round, and the median reported.
    let (mut r_bare, mut r_one, mut r_mixed) = (Vec::new(), Vec::new(), Vec::new());
    let (mut q_one, mut q_mixed) = (Vec::new(), Vec::new());
    for _ in 0..a.rounds.max(1) {
        let tb = time_encode(&b, &bare, &opts)?;
        let t1 = time_encode(&b, &single, &opts)?;
        let tm = time_encode(&b, &mixed, &opts)?;
        r_bare.push(tb);
        r_one.push(t1);
        r_mixed.push(tm);
        q_one.push(t1 / tb);
        q_mixed.push(tm / t1);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "{} rounds: medians of docs/s and of per-round ratios",
        a.rounds.max(1)
    );
    println!("bare backbone:           {:.2} docs/s", median(&mut r_bare));
    println!(
        "IAA-L r=12 ar=12:        {:.2} docs/s ({:.3}x bare)",
        median(&mut r_one),
        median(&mut q_one)
    );
    println!(
        "32 adapters in a batch:  {:.2} docs/s ({:.3}x one adapter)",
        median(&mut r_mixed),
        median(&mut q_mixed)
    );
    let bytes = format::write_adapter(one)?;
    let dims = Dims::of(&b);
    let n = 50;
    let t0 = Instant::now();
    for _ in 0..n {
        std::hint::black_box(format::read_adapter(&bytes, &dims, u64::MAX)?);
    }
    let parse_ms = t0.elapsed().as_secs_f64() * 1000.0 / n as f64;
    let store = tempfile::tempdir()?;
    let reg = Registry::open(store.path(), dims.clone(), RegistryOptions::default())?;
    let files: Vec<Vec<u8>> = (0..n)
        .map(|i| format::write_adapter(&iaa_l(&b, 1000 + i as u64)))
        .collect::<Result<_, _>>()?;
    let t0 = Instant::now();
    for f in &files {
        reg.put("swap", f)?;
        std::hint::black_box(reg.get("swap")?);
    }
    let put_ms = t0.elapsed().as_secs_f64() * 1000.0 / n as f64;
    println!(
        "IAA-L file {:.2} MB: parse + validate {parse_ms:.2} ms; store (fsync) + activate {put_ms:.2} ms",
        bytes.len() as f64 / 1e6
    );

    let before = rss_bytes();
    let resident: Vec<Arc<Adapter>> = (0..a.resident)
        .map(|i| {
            format::read_adapter(&bytes, &dims, u64::MAX)
                .map(Arc::new)
                .map_err(|e| anyhow::anyhow!("adapter {i}: {e}"))
        })
        .collect::<anyhow::Result<_>>()?;
    let after = rss_bytes();
    println!(
        "{} resident IAA-L adapters: {:.0} MB RSS ({:.0} MB of tensors)",
        resident.len(),
        (after.saturating_sub(before)) as f64 / 1e6,
        resident.iter().map(|a| a.size_bytes()).sum::<usize>() as f64 / 1e6
    );
    Ok(())
}
