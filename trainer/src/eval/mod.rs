//! Evaluation on BEIR-format data: reading corpus, queries and judgements,
//! encoding with progress, exact or HNSW retrieval, optional re-ranking.

pub mod cache;
pub mod metrics;

use std::collections::HashMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context};
use aside_adapters::Adapter;
use aside_backbone::{Backbone, EncodeOptions, Hooks, Input, Item, PoolingConfig};

pub use metrics::{evaluate, rank, Qrels, Summary};

/// A BEIR folder: `corpus.jsonl`, `queries.jsonl`, `qrels/{split}.tsv`.
pub struct Beir {
    /// (doc id, title + " " + text)
    pub corpus: Vec<(String, String)>,
    /// (query id, text), only the split's queries, in qrels order
    pub queries: Vec<(String, String)>,
    pub qrels: Qrels,
}

fn jsonl(path: &Path) -> anyhow::Result<Vec<serde_json::Value>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(&line)
                .with_context(|| format!("{} line {}", path.display(), i + 1))?,
        );
    }
    Ok(out)
}

fn field(v: &serde_json::Value, k: &str) -> String {
    match v.get(k) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

impl Beir {
    pub fn load(dir: &Path, split: &str) -> anyhow::Result<Self> {
        let qrels_path = dir.join("qrels").join(format!("{split}.tsv"));
        let text = std::fs::read_to_string(&qrels_path)
            .with_context(|| format!("reading {}", qrels_path.display()))?;
        let mut qrels = Qrels::new();
        let mut order = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let cols: Vec<&str> = line.split('\t').collect();
            if i == 0 && cols.first() == Some(&"query-id") {
                continue;
            }
            if line.trim().is_empty() {
                continue;
            }
            let [q, d, g] = cols[..] else {
                bail!(
                    "{} line {}: expected query-id, corpus-id, score",
                    qrels_path.display(),
                    i + 1
                );
            };
            let g: i32 = g
                .trim()
                .parse()
                .with_context(|| format!("{} line {}: score", qrels_path.display(), i + 1))?;
            if !qrels.contains_key(q) {
                order.push(q.to_owned());
            }
            qrels
                .entry(q.to_owned())
                .or_default()
                .insert(d.to_owned(), g);
        }
        let corpus = jsonl(&dir.join("corpus.jsonl"))?
            .iter()
            .map(|v| {
                let (title, text) = (field(v, "title"), field(v, "text"));
                let doc = if title.is_empty() {
                    text
                } else {
                    format!("{title} {text}")
                };
                (field(v, "_id"), doc)
            })
            .collect();
        let all: HashMap<String, String> = jsonl(&dir.join("queries.jsonl"))?
            .iter()
            .map(|v| (field(v, "_id"), field(v, "text")))
            .collect();
        let mut queries = Vec::new();
        for q in order {
            let t = all
                .get(&q)
                .with_context(|| format!("query {q} of the qrels is not in queries.jsonl"))?;
            queries.push((q, t.clone()));
        }
        Ok(Beir {
            corpus,
            queries,
            qrels,
        })
    }
}

/// Texts encoded in one call at a time.
const CHUNK: usize = 512;

/// Encodes texts (in chunks of 512) with these hooks and pooling, quietly.
pub fn encode_texts(
    b: &Backbone,
    hooks: Option<&dyn Hooks>,
    pool: PoolingConfig,
    texts: &[&str],
    opts: &EncodeOptions,
) -> anyhow::Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(CHUNK) {
        let items: Vec<Item<'_>> = chunk
            .iter()
            .map(|t| Item {
                input: Input::Single(t),
                hooks,
                pooling: pool.pooling,
                normalize: pool.normalize,
            })
            .collect();
        out.extend(b.encode(&items, opts)?);
    }
    Ok(out)
}

/// Encodes texts with an adapter (or none) in chunks, reporting progress on stderr.
pub fn encode_with_progress(
    b: &Backbone,
    adapter: Option<&Adapter>,
    texts: &[&str],
    opts: &EncodeOptions,
    label: &str,
) -> anyhow::Result<Vec<Vec<f32>>> {
    let pool = adapter.map_or(b.pooling(), |a| a.pooling(b.pooling()));
    let hooks = adapter.map(|a| a as &dyn Hooks);
    let tty = std::io::stderr().is_terminal();
    let t0 = Instant::now();
    let mut out = Vec::with_capacity(texts.len());
    // Chunks sorted by length inside `encode`; a chunk is large enough to batch well.
    for chunk in texts.chunks(CHUNK) {
        out.extend(encode_texts(b, hooks, pool, chunk, opts)?);
        let rate = out.len() as f64 / t0.elapsed().as_secs_f64();
        let msg = format!("{label}: {}/{} ({rate:.1}/s)", out.len(), texts.len());
        if tty {
            eprint!("\r{msg}");
        } else {
            eprintln!("{msg}");
        }
        std::io::stderr().flush().ok();
    }
    if tty {
        eprintln!();
    }
    Ok(out)
}

/// A re-ranked list: the candidates by their new scores, then the rest of the first
/// stage's order below them (how `aside eval` and the dev evaluation rank after a
/// re-ranker).
pub fn rerank_then_rest(
    candidates: Vec<(String, f32)>,
    rest: &[(String, f32)],
) -> Vec<(String, f32)> {
    let mut head = rank(candidates);
    let floor = head.iter().map(|x| x.1).fold(f32::INFINITY, f32::min);
    head.extend(
        rest.iter()
            .enumerate()
            .map(|(i, (d, _))| (d.clone(), floor - 1.0 - i as f32)),
    );
    head
}

/// Exact top-k by dot product (vectors as pooled; cosine when normalised).
pub fn exact_top(corpus: &[Vec<f32>], ids: &[String], q: &[f32], k: usize) -> Vec<(String, f32)> {
    let scored: Vec<(String, f32)> = corpus
        .iter()
        .zip(ids)
        .map(|(v, id)| (id.clone(), v.iter().zip(q).map(|(a, b)| a * b).sum()))
        .collect();
    let mut r = rank(scored);
    r.truncate(k);
    r
}
