//! Query-encoding rate as the server's search route sees it: batches of short queries
//! through the backbone with one adapter (e.g. `aside adapter init`'s),
//! timed for a number of seconds.
//!
//!   cargo run --release -p aside-adapters --example query_forward -- \
//!       MODEL_DIR QUERIES_JSONL ADAPTER_FILE [PRECISION] [BATCH] [SECONDS]
//!
//! Prints queries/s and ms per batch; run it under `perf stat` for cycles per query,
//! which a busy VM host changes far less than the wall time.

use std::time::Instant;

use aside_adapters::{format, Dims};
use aside_backbone::{Backbone, Hooks, Input, Item, LoadOptions, Pooling, Precision};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let model = std::path::PathBuf::from(&args[1]);
    let queries = std::fs::read_to_string(&args[2])?;
    // `none`: the bare backbone.
    let adapter_file = match args[3].as_str() {
        "none" => None,
        path => Some(std::fs::read(path)?),
    };
    let precision: Precision = args
        .get(4)
        .map_or("int8-fast", |s| s)
        .parse()
        .map_err(anyhow::Error::msg)?;
    let batch: usize = args.get(5).map_or(Ok(22), |s| s.parse())?;
    // SECONDS, or `Nb`: N batches (a fixed amount of work, for comparing CPU time).
    let (seconds, max_batches): (f64, usize) = match args.get(6) {
        Some(s) if s.ends_with('b') => (f64::INFINITY, s.trim_end_matches('b').parse()?),
        Some(s) => (s.parse()?, usize::MAX),
        None => (10.0, usize::MAX),
    };
    let b = Backbone::load(
        &model,
        &LoadOptions {
            precision,
            ..Default::default()
        },
    )?;
    let texts: Vec<String> = queries
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .map(|v| v["text"].as_str().unwrap_or("").to_owned())
        })
        .collect::<Result<_, _>>()?;
    let dims = Dims::of(&b);
    let adapter = adapter_file
        .map(|bytes| format::read_adapter(&bytes, &dims, format::DEFAULT_MAX_FILE_BYTES))
        .transpose()?;
    let hooks = adapter.as_ref().map(|a| a as &dyn Hooks);
    let inputs: Vec<Input<'_>> = texts.iter().map(|t| Input::Single(t)).collect();
    let encoded = b.tokens().encode(&inputs, 256)?;
    let items: Vec<Item<'_>> = inputs
        .iter()
        .map(|&input| Item {
            input,
            hooks,
            pooling: Pooling::Mean,
            normalize: true,
        })
        .collect();
    let tokens: usize = encoded.iter().map(|e| e.ids.len()).sum();
    println!(
        "{} queries, {:.1} tokens each, batch {batch}, {precision}",
        texts.len(),
        tokens as f64 / texts.len() as f64
    );
    // WORKERS threads run forwards at once (the server's --inference-workers).
    let workers: usize = std::env::var("WORKERS").map_or(Ok(1), |v| v.parse())?;
    // OWN_POOL=1: each worker runs its forwards on a one-thread pool of its own.
    let own_pool = std::env::var("OWN_POOL").is_ok_and(|v| v == "1");
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let per = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let (b, items, encoded) = (&b, &items, &encoded);
                sc.spawn(move || -> anyhow::Result<(usize, usize)> {
                    let pool = own_pool
                        .then(|| rayon::ThreadPoolBuilder::new().num_threads(1).build())
                        .transpose()?;
                    let encode = |items: &[Item<'_>], enc: &[aside_backbone::Encoded]| match &pool {
                        Some(p) => p.install(|| b.encode_tokens(items, enc, 32)),
                        None => b.encode_tokens(items, enc, 32),
                    };
                    let (mut done, mut batches) = (0usize, 0usize);
                    let mut at = (w * items.len() / workers) / batch * batch;
                    while t0.elapsed().as_secs_f64() < seconds && batches < max_batches / workers {
                        let end = (at + batch).min(items.len());
                        encode(&items[at..end], &encoded[at..end])?;
                        done += end - at;
                        batches += 1;
                        at = if end == items.len() { 0 } else { end };
                    }
                    Ok((done, batches))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker"))
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    let (done, batches) = per.iter().fold((0, 0), |a, p| (a.0 + p.0, a.1 + p.1));
    let s = t0.elapsed().as_secs_f64();
    println!(
        "{done} queries in {s:.2} s: {:.1} queries/s, {:.2} ms per batch; CPU {:.2} ms per query",
        done as f64 / s,
        1000.0 * s * workers as f64 / batches as f64,
        1000.0 * (cpu_seconds() - cpu0) / done as f64
    );
    Ok(())
}

/// This process's user + system CPU time so far, from `/proc/self/stat` (Linux).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime and stime are the
    // 12th and 13th, in clock ticks (100 per second).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}
