//! `aside eval`: nDCG@10, MRR@10, Recall@100/1000 of a backbone (+ adapter), with
//! optional re-ranking, on a BEIR-format folder.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context};
use aside_adapters::Task;
use aside_backbone::{EncodeOptions, LoadOptions};
use clap::Args;
use rayon::prelude::*;

use aside_trainer::eval::cache::{
    corpus_cache_path, pair_key, read_embeddings, rerank_cache_path, write_embeddings, CacheKey,
    ScoreCache,
};
use aside_trainer::eval::{encode_with_progress, evaluate, exact_top, rank, Beir};

use crate::core::types::Mode;

#[derive(Debug, Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: super::ModelArgs,
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
    /// First stage: dense (the embeddings), lexical (BM25 over the corpus text, on
    /// the same analyzer and index as a collection's), or hybrid (both, fused).
    #[arg(long, default_value = "dense")]
    pub mode: crate::core::types::Mode,
    /// hybrid: rrf or weighted.
    #[arg(long, default_value = "rrf")]
    pub fusion: crate::core::types::FusionMethod,
    /// hybrid, rrf: the k of 1 / (k + rank).
    #[arg(long)]
    pub rrf_k: Option<f32>,
    /// hybrid, weighted: the dense list's weight.
    #[arg(long)]
    pub dense_weight: Option<f32>,
    /// hybrid: candidates taken from each side (as `candidates` in a search).
    #[arg(long, default_value_t = 100)]
    pub side_candidates: usize,
    /// lexical, hybrid: the analyzer's language.
    #[arg(long, default_value = "en")]
    pub language: String,
}

pub fn run(a: EvalArgs) -> anyhow::Result<()> {
    let b = a.model.load(&LoadOptions {
        precision: a.precision,
        ..Default::default()
    })?;
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
    let fusion = crate::core::types::FusionSpec {
        method: a.fusion,
        k: a.rrf_k,
        dense_weight: a.dense_weight,
    }
    .fusion()
    .map_err(|(f, m)| anyhow::anyhow!("--{}: {m}", f.replace("fusion.", "").replace('_', "-")))?;
    if a.mode != Mode::Hybrid && (a.rrf_k.is_some() || a.dense_weight.is_some()) {
        bail!("--rrf-k and --dense-weight set the fusion of --mode hybrid");
    }
    if a.mode != Mode::Dense && (a.hnsw || adapter.is_some() && a.mode == Mode::Lexical) {
        bail!("--hnsw and --adapter apply to the dense side (--mode dense or hybrid)");
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
    let key = CacheKey {
        dir: &a.cache_dir,
        model_sha: b.sha256(),
        max_length: a.max_length,
        precision: a.precision,
    };
    let lexical = match a.mode {
        Mode::Dense => None,
        _ => Some(lexical_collection(&data, &a.language)?),
    };
    let lexical_top = |q: &str, k: usize| -> anyhow::Result<Vec<aside_index::Hit>> {
        let (_, c) = lexical.as_ref().expect("lexical collection");
        Ok(c.search_lexical(&aside_index::LexicalRequest {
            text: q,
            k,
            filter: None,
            threshold: None,
        })?)
    };
    let k = 1000.min(doc_ids.len());
    let mut runs: HashMap<String, Vec<(String, f32)>> = if a.mode == Mode::Lexical {
        let mut runs = HashMap::new();
        for (qid, q) in &data.queries {
            let hits = lexical_top(q, k)?;
            runs.insert(
                qid.clone(),
                hits.into_iter().map(|h| (h.id, h.score)).collect(),
            );
        }
        runs
    } else {
        let runs = dense_runs(
            &a,
            &b,
            adapter.as_ref(),
            &data,
            &key,
            &opts,
            (&doc_texts, &doc_ids),
            k,
        )?;
        if a.mode == Mode::Hybrid {
            let side = a.side_candidates;
            let as_hits = |xs: &[(String, f32)]| -> Vec<aside_index::Hit> {
                xs.iter()
                    .take(side)
                    .map(|(id, s)| aside_index::Hit {
                        id: id.clone(),
                        score: *s,
                        text: String::new(),
                        metadata: serde_json::Value::Null,
                    })
                    .collect()
            };
            let mut fused = HashMap::new();
            for (qid, q) in &data.queries {
                let f = aside_index::fuse(as_hits(&runs[qid]), lexical_top(q, side)?, fusion);
                fused.insert(
                    qid.clone(),
                    f.into_iter().map(|f| (f.hit.id, f.hit.score)).collect(),
                );
            }
            fused
        } else {
            runs
        }
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
            false => ScoreCache::open(rerank_cache_path(&key, a.rerank.as_deref())?)?,
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
                // Re-ranked candidates first, the rest of the retrieval order after them.
                aside_trainer::eval::rerank_then_rest(
                    ranked[..c]
                        .iter()
                        .zip(&heads)
                        .map(|((d, s), h)| (d.clone(), score(*s, *h)))
                        .collect(),
                    &ranked[c..],
                )
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

/// The dense first stage: the corpus embeddings (cached), the queries', exact (or
/// HNSW) top-k.
#[allow(clippy::too_many_arguments)]
fn dense_runs(
    a: &EvalArgs,
    b: &aside_backbone::Backbone,
    adapter: Option<&aside_adapters::Adapter>,
    data: &Beir,
    key: &CacheKey<'_>,
    opts: &EncodeOptions,
    (doc_texts, doc_ids): (&[&str], &[String]),
    k: usize,
) -> anyhow::Result<HashMap<String, Vec<(String, f32)>>> {
    let cache = (!a.no_cache)
        .then(|| corpus_cache_path(key, a.adapter.as_deref(), data))
        .transpose()?;
    let docs = match cache
        .as_ref()
        .and_then(|p| read_embeddings(p, doc_texts.len()))
    {
        Some(v) => {
            eprintln!(
                "corpus embeddings: cached in {}",
                cache.as_ref().expect("path").display()
            );
            v
        }
        None => {
            let v = encode_with_progress(b, adapter, doc_texts, opts, "encoding corpus")?;
            if let Some(p) = &cache {
                write_embeddings(p, &v)?;
            }
            v
        }
    };
    let q_texts: Vec<&str> = data.queries.iter().map(|(_, t)| t.as_str()).collect();
    let queries = encode_with_progress(b, adapter, &q_texts, opts, "encoding queries")?;
    Ok(if a.hnsw {
        hnsw_runs(data, &docs, &queries, k)?
    } else {
        data.queries
            .par_iter()
            .zip(&queries)
            .map(|((qid, _), q)| (qid.clone(), exact_top(&docs, doc_ids, q, k)))
            .collect()
    })
}

/// A temporary collection holding the corpus for BM25 (one-dimensional vectors: its
/// dense side is not used).
/// An empty collection (dot product, default HNSW) in a temporary directory, which
/// lives as long as the returned guard.
fn temp_collection(
    dim: usize,
    lexical: Option<aside_index::LexicalSettings>,
) -> anyhow::Result<(tempfile::TempDir, std::sync::Arc<aside_index::Collection>)> {
    use aside_index::{CollectionConfig, HnswParams, Index, Metric, Space};
    let dir = tempfile::tempdir()?;
    let c = Index::open(dir.path())?.create(CollectionConfig {
        name: "eval".into(),
        dim,
        metric: Metric::Dot,
        hnsw: HnswParams::default(),
        space: Space::default(),
        engine: Default::default(),
        lexical,
    })?;
    Ok((dir, c))
}

fn lexical_collection(
    data: &Beir,
    language: &str,
) -> anyhow::Result<(tempfile::TempDir, std::sync::Arc<aside_index::Collection>)> {
    use aside_index::{Doc, LexicalSettings};
    let (dir, c) = temp_collection(
        1,
        Some(LexicalSettings {
            language: language.into(),
        }),
    )?;
    for chunk in data.corpus.chunks(4096) {
        c.upsert(
            chunk
                .iter()
                .map(|(id, text)| Doc {
                    id: id.clone(),
                    vector: vec![1.0],
                    text: text.clone(),
                    metadata: serde_json::json!({}),
                })
                .collect(),
        )?;
    }
    c.commit_lexical()?;
    eprintln!("lexical index: {} documents ({language})", c.count());
    Ok((dir, c))
}

fn hnsw_runs(
    data: &Beir,
    docs: &[Vec<f32>],
    queries: &[Vec<f32>],
    k: usize,
) -> anyhow::Result<HashMap<String, Vec<(String, f32)>>> {
    use aside_index::{Doc, SearchRequest};
    let (_dir, c) = temp_collection(docs[0].len(), None)?;
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
