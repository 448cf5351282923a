//! Why hnsw_rs searched 3.5–4× slower than hnswlib in our first trial: the same
//! vectors indexed with `DistCosine` and with `DistDot` (on unit vectors), with
//! parallel and sequential insertion, searched from one thread.
//!
//!     cargo run --release -p aside-index --example hnsw_rs_config -- BASE.f32 QUERIES.f32 [DIM]

use std::time::Instant;

use hnsw_rs::prelude::*;

fn read(path: &str, dim: usize) -> Vec<Vec<f32>> {
    let bytes = std::fs::read(path).expect("read vectors");
    bytes
        .chunks(4 * dim)
        .map(|row| {
            let mut v: Vec<f32> = row
                .chunks(4)
                .map(|x| f32::from_le_bytes(x.try_into().expect("4 bytes")))
                .collect();
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter_mut().for_each(|x| *x /= n);
            v
        })
        .collect()
}

fn run<D: Distance<f32> + Send + Sync>(
    name: &str,
    d: D,
    base: &[Vec<f32>],
    queries: &[Vec<f32>],
    parallel: bool,
) {
    let h = Hnsw::<f32, D>::new(16, base.len(), 16, 200, d);
    let t = Instant::now();
    if parallel {
        let data: Vec<(&Vec<f32>, usize)> = base.iter().enumerate().map(|(i, v)| (v, i)).collect();
        h.parallel_insert(&data);
    } else {
        for (i, v) in base.iter().enumerate() {
            h.insert((v, i));
        }
    }
    let build = t.elapsed().as_secs_f64();
    for ef in [16, 64] {
        let t = Instant::now();
        for q in queries {
            std::hint::black_box(h.search(q, 10, ef));
        }
        println!(
            "{{\"distance\": \"{name}\", \"parallel_insert\": {parallel}, \"build_s\": {build:.2}, \"ef\": {ef}, \"qps\": {:.0}}}",
            queries.len() as f64 / t.elapsed().as_secs_f64()
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dim = args.get(3).map_or(384, |d| d.parse().expect("dim"));
    let base = read(&args[1], dim);
    let queries = read(&args[2], dim);
    run("DistDot", DistDot, &base, &queries, true);
    run("DistCosine", DistCosine, &base, &queries, true);
    run("DistDot", DistDot, &base, &queries, false);
}
