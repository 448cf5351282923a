//! `aside bench index`: build time, recall@10 against exact search, and
//! single-thread QPS at several `ef` on the same vectors `bench/hnsw_compare.py`
//! gives hnswlib; and durable upsert throughput with fsync batching.
//! Vectors are raw little-endian f32 files, `n × dim`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use aside_index::{CollectionConfig, Doc, Engine, HnswParams, Index, Metric, SearchRequest, Space};
use clap::Args;

#[derive(Debug, Args)]
pub struct BenchIndexArgs {
    /// Base vectors (raw f32, n × dim).
    #[arg(long)]
    pub vectors: PathBuf,
    /// Query vectors (raw f32, q × dim).
    #[arg(long)]
    pub queries: PathBuf,
    #[arg(long, default_value_t = 384)]
    pub dim: usize,
    #[arg(long, default_value_t = 16)]
    pub m: usize,
    #[arg(long, default_value_t = 200)]
    pub ef_construction: usize,
    /// Comma-separated search breadths.
    #[arg(long, default_value = "16,32,64,128,256")]
    pub ef: String,
    /// Documents for the durable-upsert measurement.
    #[arg(long, default_value_t = 20000)]
    pub upserts: usize,
    /// Graph engines to measure, comma-separated: graph (ours), hnsw_rs.
    #[arg(long, default_value = "graph")]
    pub engines: String,
    /// Also measure the Milvus store at this address (`http://host:19530`), on the
    /// same vectors and queries, recall against the same exact neighbours.
    #[arg(long)]
    pub milvus_url: Option<String>,
}

fn read_f32(path: &PathBuf, dim: usize) -> anyhow::Result<Vec<Vec<f32>>> {
    let b = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if b.len() % (4 * dim) != 0 {
        bail!(
            "{}: {} bytes is not a multiple of {dim} f32",
            path.display(),
            b.len()
        );
    }
    Ok(aside_trainer::eval::cache::f32_rows(&b, dim))
}

pub fn run(a: BenchIndexArgs) -> anyhow::Result<()> {
    let base = read_f32(&a.vectors, a.dim)?;
    let queries = read_f32(&a.queries, a.dim)?;
    let engines = a
        .engines
        .split(',')
        .map(|e| e.trim().parse::<Engine>().map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut exact = None;
    for (i, engine) in engines.iter().enumerate() {
        exact = Some(run_engine(
            &a,
            *engine,
            &base,
            &queries,
            exact,
            i + 1 == engines.len(),
        )?);
    }
    Ok(())
}

fn engine_name(e: Engine) -> &'static str {
    match e {
        Engine::Graph => "aside",
        Engine::HnswRs => "hnsw_rs",
    }
}

/// One engine's rows; returns the exact neighbours (computed once, by the first).
fn run_engine(
    a: &BenchIndexArgs,
    engine: Engine,
    base: &[Vec<f32>],
    queries: &[Vec<f32>],
    exact: Option<Vec<Vec<String>>>,
    last: bool,
) -> anyhow::Result<Vec<Vec<String>>> {
    let name = engine_name(engine);
    let dir = tempfile::tempdir()?;
    let index = Index::open(dir.path())?;
    let cfg = |name: &str| CollectionConfig {
        name: name.into(),
        dim: a.dim,
        metric: Metric::Cosine,
        hnsw: HnswParams {
            m: a.m,
            ef_construction: a.ef_construction,
            ef: 64,
        },
        space: Space::default(),
        engine,
        lexical: None,
    };
    let c = index.create(cfg("bench"))?;
    let docs: Vec<Doc> = base
        .iter()
        .enumerate()
        .map(|(i, v)| Doc {
            id: format!("{i:08}"),
            vector: v.clone(),
            text: String::new(),
            metadata: serde_json::json!({}),
        })
        .collect();
    let t0 = Instant::now();
    for chunk in docs.chunks(10_000) {
        c.upsert(chunk.to_vec())?;
    }
    // Built = every vector in the graph (the indexer runs behind the writes).
    c.wait_indexed();
    let build = t0.elapsed().as_secs_f64();
    println!(
        "{{\"engine\": \"{name}\", \"n\": {}, \"build_s\": {build:.2}}}",
        base.len()
    );
    // Exact neighbours once, then each ef single-threaded.
    let exact: Vec<Vec<String>> = match exact {
        Some(e) => e,
        None => queries
            .iter()
            .map(|q| {
                let r = SearchRequest {
                    vector: q,
                    k: 10,
                    ef: None,
                    filter: None,
                    threshold: None,
                    exact: true,
                };
                c.search(&r).map(|h| h.into_iter().map(|x| x.id).collect())
            })
            .collect::<Result<_, _>>()?,
    };
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    for ef in a.ef.split(',').map(|s| s.trim().parse::<usize>()) {
        let ef = ef.context("--ef takes numbers")?;
        let (secs, found) = pool.install(|| -> anyhow::Result<(f64, usize)> {
            let t0 = Instant::now();
            let mut found = 0;
            for (q, want) in queries.iter().zip(&exact) {
                let r = SearchRequest {
                    vector: q,
                    k: 10,
                    ef: Some(ef),
                    filter: None,
                    threshold: None,
                    exact: false,
                };
                let hits = c.search(&r)?;
                found += hits.iter().filter(|h| want.contains(&h.id)).count();
            }
            Ok((t0.elapsed().as_secs_f64(), found))
        })?;
        println!(
            "{{\"engine\": \"{name}\", \"ef\": {ef}, \"recall@10\": {:.4}, \"qps\": {:.0}}}",
            found as f64 / (10 * queries.len()) as f64,
            queries.len() as f64 / secs
        );
    }
    // Durable upserts: 4 concurrent writers, batches of 100, each acknowledged after
    // fsync; into an empty collection, then into the one holding every base vector.
    let n = a.upserts.min(base.len());
    let durable = |c: &Arc<aside_index::Collection>, prefix: &str| -> (f64, f64) {
        let docs: Vec<Doc> = docs[..n]
            .iter()
            .map(|d| Doc {
                id: format!("{prefix}{}", d.id),
                ..d.clone()
            })
            .collect();
        let t0 = Instant::now();
        std::thread::scope(|s| {
            for t in 0..4 {
                let docs = &docs;
                s.spawn(move || {
                    for chunk in docs.chunks(100).skip(t).step_by(4) {
                        c.upsert(chunk.to_vec()).expect("upsert");
                    }
                });
            }
        });
        let acked = t0.elapsed().as_secs_f64();
        c.wait_indexed();
        (n as f64 / acked, t0.elapsed().as_secs_f64())
    };
    let (empty, empty_indexed) = durable(&index.create(cfg("durable"))?, "");
    let (loaded, loaded_indexed) = durable(&c, "u");
    println!(
        "{{\"engine\": \"{name}\", \"durable_upserts_per_s\": {empty:.0}, \"indexed_s\": {empty_indexed:.2}, \
         \"durable_upserts_per_s_loaded\": {loaded:.0}, \"loaded_indexed_s\": {loaded_indexed:.2}, \
         \"n\": {n}, \"base\": {}}}",
        base.len()
    );
    if let Some(url) = a.milvus_url.as_ref().filter(|_| last) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let mut config = cfg("bench");
        config.engine = Engine::Graph;
        rt.block_on(milvus(a, url, config, &docs, queries, &exact, n))?;
    }
    Ok(exact)
}

/// The same measurements through the Milvus store: build (acknowledged upserts of
/// every base vector, 1,000 a request), recall and QPS at each ef from one client,
/// and durable upserts (4 concurrent writers, batches of 100).
async fn milvus(
    a: &BenchIndexArgs,
    url: &str,
    mut config: CollectionConfig,
    docs: &[Doc],
    queries: &[Vec<f32>],
    exact: &[Vec<String>],
    n: usize,
) -> anyhow::Result<()> {
    use aside_index::milvus::{MilvusOptions, MilvusStore};
    use aside_index::{Query, Store};
    let store = Arc::new(MilvusStore::new(MilvusOptions {
        url: url.to_owned(),
        token: None,
        database: None,
    }));
    let tag = std::process::id();
    config.name = format!("bench-{tag}");
    let c = store.create(config.clone()).await?;
    let t0 = Instant::now();
    for chunk in docs.chunks(1000) {
        c.upsert(chunk.to_vec()).await?;
    }
    let acked = t0.elapsed().as_secs_f64();
    // A cluster seals and indexes segments by itself as they fill; milvus-lite only
    // on a flush (before it, a search scans the unsealed rows).
    store.flush(&config.name).await?;
    let build = t0.elapsed().as_secs_f64();
    println!(
        "{{\"engine\": \"milvus\", \"n\": {}, \"acked_s\": {acked:.2}, \"build_s\": {build:.2}, \"upserts_per_s\": {:.0}}}",
        docs.len(),
        docs.len() as f64 / acked
    );
    for ef in a.ef.split(',').map(|s| s.trim().parse::<usize>()) {
        let ef = ef.context("--ef takes numbers")?;
        let t0 = Instant::now();
        let mut found = 0;
        for (q, want) in queries.iter().zip(exact) {
            let hits = c
                .search(Query {
                    vector: q.clone(),
                    k: 10,
                    ef: Some(ef),
                    filter: None,
                    threshold: None,
                    exact: false,
                })
                .await?;
            found += hits.iter().filter(|h| want.contains(&h.id)).count();
        }
        let secs = t0.elapsed().as_secs_f64();
        println!(
            "{{\"engine\": \"milvus\", \"ef\": {ef}, \"recall@10\": {:.4}, \"qps\": {:.0}}}",
            found as f64 / (10 * queries.len()) as f64,
            queries.len() as f64 / secs
        );
    }
    let mut dconfig = config.clone();
    dconfig.name = format!("bench-durable-{tag}");
    let d: Arc<dyn aside_index::StoredCollection> = store.create(dconfig.clone()).await?;
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..4 {
        let d = d.clone();
        let mine: Vec<Vec<Doc>> = docs[..n]
            .chunks(100)
            .skip(t)
            .step_by(4)
            .map(|c| c.to_vec())
            .collect();
        tasks.push(tokio::spawn(async move {
            for chunk in mine {
                d.upsert(chunk).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    println!("{{\"engine\": \"milvus\", \"durable_upserts_per_s\": {rate:.0}, \"n\": {n}}}");
    store.remove(&config.name).await?;
    store.remove(&dconfig.name).await?;
    Ok(())
}
