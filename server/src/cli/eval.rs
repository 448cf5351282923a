//! `aside eval`: nDCG@10, MRR@10, Recall@100/1000 of a backbone (+ adapter), with
//! optional re-ranking, on a BEIR-format folder.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context};
use aside_adapters::Task;
use aside_backbone::{Backbone, EncodeOptions, LoadOptions};
use clap::Args;
use rayon::prelude::*;

use aside_trainer::eval::{encode_with_progress, evaluate, exact_top, rank, Beir};

#[derive(Debug, Args)]
pub struct EvalArgs {
    #[arg(long, env = "ASIDE_MODEL", default_value_os_t = super::default_model_dir())]
    pub model: PathBuf,
    /// Retrieval adapter (native file or PEFT folder).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// BEIR folder: corpus.jsonl, queries.jsonl, qrels/{split}.tsv.
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Rerank adapter applied to the top candidates.
    #[arg(long)]
    pub rerank: Option<PathBuf>,
    /// Candidates re-ranked per query.
    #[arg(long, default_value_t = 100)]
    pub candidates: usize,
    /// Re-rank by `head score + FUSE × retrieval score` instead of the head score
    /// alone (0). The retrieval score is the cosine; 20, the similarity scale the
    /// retriever was trained with, weighs both as the logits they were trained as.
    #[arg(long, default_value_t = 0.0)]
    pub fuse: f32,
    /// The corpus embeddings are cached here, keyed by everything that decides them
    /// (model, adapter file, max length, precision, corpus), so that evaluating
    /// several rerankers over one retriever encodes the corpus once. Re-ranking
    /// scores are appended here query by query as they are computed, so an
    /// interrupted re-ranking run picks up where it stopped.
    #[arg(long, default_value = ".aside-cache")]
    pub cache_dir: PathBuf,
    /// Neither read nor write the caches.
    #[arg(long)]
    pub no_cache: bool,
    /// Retrieve through the HNSW index instead of exact search.
    #[arg(long)]
    pub hnsw: bool,
    /// Write the ranking as a TREC run file.
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    #[arg(long, default_value_t = aside_backbone::DEFAULT_MAX_LENGTH)]
    pub max_length: usize,
    #[arg(long, default_value_t = aside_backbone::DEFAULT_BATCH_SIZE)]
    pub batch_size: usize,
    /// Arithmetic of the backbone's linears: f32; int8 (AVX-512 VNNI; faster,
    /// embeddings within 0.999 cosine of f32); or int8-fast (one int8 weight plane:
    /// faster again, within 0.995).
    #[arg(long, default_value = "f32")]
    pub precision: aside_backbone::Precision,
}

pub fn run(a: EvalArgs) -> anyhow::Result<()> {
    let b = Backbone::load(
        &a.model,
        &LoadOptions {
            precision: a.precision,
            ..Default::default()
        },
    )
    .with_context(|| format!("loading model from {}", a.model.display()))?;
    let adapter = a
        .adapter
        .as_ref()
        .map(|p| super::adapter::load_adapter(p, &b))
        .transpose()?;
    if adapter
        .as_ref()
        .is_some_and(|x| x.task() != Task::Retrieval)
    {
        bail!("--adapter must be a retrieval adapter");
    }
    let reranker = a
        .rerank
        .as_ref()
        .map(|p| super::adapter::load_adapter(p, &b))
        .transpose()?;
    if reranker.as_ref().is_some_and(|x| x.task() != Task::Rerank) {
        bail!("--rerank must be a rerank adapter");
    }
    if !a.fuse.is_finite() || a.fuse < 0.0 {
        bail!("--fuse must be a finite number ≥ 0, not {}", a.fuse);
    }
    if a.fuse != 0.0 && reranker.is_none() {
        bail!("--fuse weighs the retrieval score into re-ranking: it needs --rerank");
    }
    let data = Beir::load(&a.data, &a.split)?;
    let opts = EncodeOptions {
        max_length: a.max_length,
        batch_size: a.batch_size,
    };
    b.check_options(&opts)?;
    eprintln!(
        "{} documents, {} queries ({})",
        data.corpus.len(),
        data.queries.len(),
        a.split
    );
    let doc_texts: Vec<&str> = data.corpus.iter().map(|(_, t)| t.as_str()).collect();
    let doc_ids: Vec<String> = data.corpus.iter().map(|(i, _)| i.clone()).collect();
    let cache = (!a.no_cache)
        .then(|| corpus_cache_path(&a, &b, &data))
        .transpose()?;
    let docs = match cache.as_ref().and_then(|p| read_cache(p, doc_texts.len())) {
        Some(v) => {
            eprintln!(
                "corpus embeddings: cached in {}",
                cache.as_ref().expect("path").display()
            );
            v
        }
        None => {
            let v =
                encode_with_progress(&b, adapter.as_ref(), &doc_texts, &opts, "encoding corpus")?;
            if let Some(p) = &cache {
                write_cache(p, &v)?;
            }
            v
        }
    };
    let q_texts: Vec<&str> = data.queries.iter().map(|(_, t)| t.as_str()).collect();
    let queries = encode_with_progress(&b, adapter.as_ref(), &q_texts, &opts, "encoding queries")?;
    let k = 1000.min(docs.len());
    let mut runs: HashMap<String, Vec<(String, f32)>> = if a.hnsw {
        hnsw_runs(&data, &docs, &queries, k)?
    } else {
        data.queries
            .par_iter()
            .zip(&queries)
            .map(|((qid, _), q)| (qid.clone(), exact_top(&docs, &doc_ids, q, k)))
            .collect()
    };
    // With re-ranking, the figures of the first stage alone (and, when fusing, of the
    // head alone) are reported beside the final ones.
    let mut stages: Vec<(&str, aside_trainer::eval::Summary)> = Vec::new();
    if let Some(r) = &reranker {
        stages.push(("retrieval", evaluate(&runs, &data.qrels)));
        let texts: HashMap<&str, &str> = data
            .corpus
            .iter()
            .map(|(i, t)| (i.as_str(), t.as_str()))
            .collect();
        let total = data.queries.len();
        let mut scores = match a.no_cache {
            true => ScoreCache::default(),
            false => ScoreCache::open(rerank_cache_path(&a, &b)?)?,
        };
        if !scores.known.is_empty() {
            eprintln!(
                "re-ranking: {} pair scores cached in {}, only the others are computed",
                scores.known.len(),
                scores.path.as_ref().expect("path").display()
            );
        }
        let mut head_only = HashMap::new();
        for (n, (qid, qtext)) in data.queries.iter().enumerate() {
            let ranked = runs.get_mut(qid).expect("run");
            let c = a.candidates.min(ranked.len());
            let keys: Vec<String> = ranked[..c]
                .iter()
                .map(|(d, _)| pair_key(qtext, texts[d.as_str()]))
                .collect();
            let todo: Vec<usize> = (0..c)
                .filter(|&i| !scores.known.contains_key(&keys[i]))
                .collect();
            let pairs: Vec<aside_backbone::Item<'_>> = todo
                .iter()
                .map(|&i| aside_backbone::Item {
                    input: aside_backbone::Input::Pair(qtext, texts[ranked[i].0.as_str()]),
                    hooks: Some(r as &dyn aside_backbone::Hooks),
                    pooling: aside_backbone::Pooling::Cls,
                    normalize: false,
                })
                .collect();
            let pooled = b.encode(&pairs, &opts)?;
            let fresh: Vec<(String, f32)> = todo
                .iter()
                .zip(&pooled)
                .map(|(&i, v)| Ok((keys[i].clone(), r.head_score(v)?.expect("rerank head"))))
                .collect::<anyhow::Result<_>>()?;
            scores.add(&fresh)?;
            let heads: Vec<f32> = keys.iter().map(|k| scores.known[k]).collect();
            let rerank = |score: &dyn Fn(f32, f32) -> f32| {
                let mut head: Vec<(String, f32)> = rank(
                    ranked[..c]
                        .iter()
                        .zip(&heads)
                        .map(|((d, s), h)| (d.clone(), score(*s, *h)))
                        .collect(),
                );
                // Re-ranked candidates first, the rest of the retrieval order after them.
                let floor = head.iter().map(|x| x.1).fold(f32::INFINITY, f32::min);
                head.extend(
                    ranked[c..]
                        .iter()
                        .enumerate()
                        .map(|(i, (d, _))| (d.clone(), floor - 1.0 - i as f32)),
                );
                head
            };
            if a.fuse != 0.0 {
                head_only.insert(qid.clone(), rerank(&|_, h| h));
            }
            *ranked = rerank(&|s, h| h + a.fuse * s);
            if (n + 1) % 25 == 0 || n + 1 == total {
                eprintln!("re-ranking: {}/{total} queries", n + 1);
            }
        }
        if a.fuse != 0.0 {
            stages.push(("head_only", evaluate(&head_only, &data.qrels)));
        }
    }
    if let Some(path) = &a.run {
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        );
        for (qid, _) in &data.queries {
            for (i, (d, s)) in runs[qid].iter().enumerate() {
                writeln!(f, "{qid} Q0 {d} {} {s} aside", i + 1)?;
            }
        }
        f.flush()?;
    }
    let s = evaluate(&runs, &data.qrels);
    if a.json {
        let mut v = serde_json::to_value(s)?;
        for (name, st) in &stages {
            v[*name] = serde_json::to_value(st)?;
        }
        println!("{v}");
    } else {
        println!("queries      {}", s.queries);
        for (name, st) in stages.iter().chain([&("re-ranked", s)]) {
            if !stages.is_empty() {
                println!("[{name}]");
            }
            println!("nDCG@10      {:.4}", st.ndcg10);
            println!("MRR@10       {:.4}", st.mrr10);
            println!("Recall@100   {:.4}", st.recall100);
            println!("Recall@1000  {:.4}", st.recall1000);
        }
    }
    Ok(())
}

fn hnsw_runs(
    data: &Beir,
    docs: &[Vec<f32>],
    queries: &[Vec<f32>],
    k: usize,
) -> anyhow::Result<HashMap<String, Vec<(String, f32)>>> {
    use aside_index::{CollectionConfig, Doc, HnswParams, Index, Metric, SearchRequest, Space};
    let dir = tempfile::tempdir()?;
    let index = Index::open(dir.path())?;
    let c = index.create(CollectionConfig {
        name: "eval".into(),
        dim: docs[0].len(),
        metric: Metric::Dot,
        hnsw: HnswParams::default(),
        space: Space::default(),
    })?;
    let batch: Vec<Doc> = data
        .corpus
        .iter()
        .zip(docs)
        .map(|((id, _), v)| Doc {
            id: id.clone(),
            vector: v.clone(),
            text: String::new(),
            metadata: serde_json::json!({}),
        })
        .collect();
    c.upsert(batch)?;
    let mut runs = HashMap::new();
    for ((qid, _), q) in data.queries.iter().zip(queries) {
        let hits = c.search(&SearchRequest {
            vector: q,
            k,
            ef: Some(k.max(64)),
            filter: None,
            threshold: None,
            exact: false,
        })?;
        runs.insert(
            qid.clone(),
            rank(hits.into_iter().map(|h| (h.id, h.score)).collect()),
        );
    }
    Ok(runs)
}

const CACHE_MAGIC: &[u8; 8] = b"ASIDEEM1";

/// `DIR/corpus-KEY.f32`, KEY a digest of the model's weights, the adapter file's
/// bytes, the encoding options and every document.
fn corpus_cache_path(a: &EvalArgs, b: &Backbone, data: &Beir) -> anyhow::Result<PathBuf> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b.sha256().as_bytes());
    hash_adapter(&mut h, a.adapter.as_deref())?;
    h.update(format!(
        "|{}|{}|{}|",
        a.max_length,
        a.precision,
        data.corpus.len()
    ));
    for (id, text) in &data.corpus {
        h.update(id.as_bytes());
        h.update([0]);
        h.update(text.as_bytes());
        h.update([0]);
    }
    let key = hex::encode(&h.finalize()[..12]);
    Ok(a.cache_dir.join(format!("corpus-{key}.f32")))
}

/// Feeds an adapter's bytes (a file, or every file of a PEFT folder) to `h`.
fn hash_adapter(h: &mut sha2::Sha256, adapter: Option<&std::path::Path>) -> anyhow::Result<()> {
    use sha2::Digest;
    match adapter {
        Some(p) if p.is_dir() => {
            let mut names: Vec<_> = std::fs::read_dir(p)?
                .map(|e| e.map(|e| e.path()))
                .collect::<Result<_, _>>()?;
            names.sort();
            for f in names.iter().filter(|f| f.is_file()) {
                h.update(f.file_name().unwrap_or_default().as_encoded_bytes());
                h.update(aside_backbone::sha256_file(f)?);
            }
        }
        Some(p) => h.update(aside_backbone::sha256_file(p)?),
        None => h.update(b"no adapter"),
    }
    Ok(())
}

/// `DIR/rerank-KEY.tsv`, KEY a digest of the model's weights, the rerank adapter's
/// bytes, the max length and the precision: what decides a pair's score besides
/// the two texts, which each line's own key covers.
fn rerank_cache_path(a: &EvalArgs, b: &Backbone) -> anyhow::Result<PathBuf> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b.sha256().as_bytes());
    hash_adapter(&mut h, a.rerank.as_deref())?;
    h.update(format!("|{}|{}|", a.max_length, a.precision));
    let key = hex::encode(&h.finalize()[..12]);
    Ok(a.cache_dir.join(format!("rerank-{key}.tsv")))
}

/// Bytes of the digest a pair key keeps (hex: twice as many characters).
const PAIR_KEY_BYTES: usize = 12;

/// A (query, document) pair's line key: a digest of both texts.
fn pair_key(query: &str, doc: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(query.as_bytes());
    h.update([0]);
    h.update(doc.as_bytes());
    hex::encode(&h.finalize()[..PAIR_KEY_BYTES])
}

/// Re-ranking scores by pair key, appended to a file (`KEY<TAB>f32 bits in hex`, one
/// line a pair) one query at a time, so a killed run keeps what it computed. Lines
/// that do not parse (a write cut short) are ignored. No file: in memory only.
#[derive(Default)]
struct ScoreCache {
    path: Option<PathBuf>,
    file: Option<std::fs::File>,
    known: HashMap<String, f32>,
}

impl ScoreCache {
    fn open(path: PathBuf) -> anyhow::Result<Self> {
        let known: HashMap<String, f32> = match std::fs::read_to_string(&path) {
            Ok(text) => text
                .lines()
                .filter_map(|l| {
                    let (k, v) = l.split_once('\t')?;
                    let v = f32::from_bits(u32::from_str_radix(v, 16).ok()?);
                    (k.len() == 2 * PAIR_KEY_BYTES && v.is_finite()).then(|| (k.to_owned(), v))
                })
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let dir = path.parent().expect("a file in the cache folder");
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        // A line cut short by an earlier kill must not swallow the first new one.
        file.write_all(b"\n")
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(Self {
            path: Some(path),
            file: Some(file),
            known,
        })
    }

    fn add(&mut self, fresh: &[(String, f32)]) -> anyhow::Result<()> {
        if let (Some(f), Some(path)) = (&mut self.file, &self.path) {
            let lines: String = fresh
                .iter()
                .map(|(k, v)| format!("{k}\t{:08x}\n", v.to_bits()))
                .collect();
            f.write_all(lines.as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
        }
        self.known.extend(fresh.iter().cloned());
        Ok(())
    }
}

/// The cached embeddings, or `None` when the file is missing or not what it should be.
fn read_cache(path: &std::path::Path, n: usize) -> Option<Vec<Vec<f32>>> {
    let bytes = std::fs::read(path).ok()?;
    let (head, body) = bytes.split_at_checked(16)?;
    if &head[..8] != CACHE_MAGIC || u32::from_le_bytes(head[8..12].try_into().ok()?) as usize != n {
        return None;
    }
    let d = u32::from_le_bytes(head[12..16].try_into().ok()?) as usize;
    if d == 0 || body.len() != n * d * 4 {
        return None;
    }
    let rows = super::f32_rows(body, d);
    rows.iter().flatten().all(|v| v.is_finite()).then_some(rows)
}

fn write_cache(path: &std::path::Path, docs: &[Vec<f32>]) -> anyhow::Result<()> {
    let d = docs.first().map_or(0, Vec::len);
    let mut bytes = Vec::with_capacity(16 + docs.len() * d * 4);
    bytes.extend_from_slice(CACHE_MAGIC);
    bytes.extend_from_slice(&(docs.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&(d as u32).to_le_bytes());
    for v in docs {
        v.iter()
            .for_each(|x| bytes.extend_from_slice(&x.to_le_bytes()));
    }
    let dir = path.parent().expect("a file in the cache folder");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = path.with_extension("f32.tmp");
    std::fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
