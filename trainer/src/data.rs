//! Training data from a BEIR folder: (query, judged positive) examples, a dev split
//! carved from them when asked, and hard negatives mined with the base model (cached).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use aside_backbone::testing::Rng;
use aside_backbone::{Backbone, EncodeOptions};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::eval::{encode_with_progress, exact_top, Beir};

/// A training split, indexed.
pub struct TrainSet {
    /// (doc id, title + " " + text)
    pub corpus: Vec<(String, String)>,
    /// (query id, text) of the split, in qrels order.
    pub queries: Vec<(String, String)>,
    /// Per query, the corpus rows judged relevant (grade > 0).
    pub positives: Vec<Vec<usize>>,
    /// (query row, positive corpus row) pairs the loss trains on (dev queries left out).
    pub examples: Vec<(usize, usize)>,
    /// Query rows held out for early stopping.
    pub dev: Vec<usize>,
    /// Per query, the base model's top documents that are not judged positive, best first.
    pub negatives: Vec<Vec<usize>>,
}

impl TrainSet {
    /// Reads `split` of a BEIR folder; holds out `dev_queries` queries (seeded).
    pub fn load(dir: &Path, split: &str, dev_queries: usize, seed: u64) -> anyhow::Result<Self> {
        let beir = Beir::load(dir, split)?;
        let row = rows_by_id(&beir.corpus);
        let mut positives = Vec::with_capacity(beir.queries.len());
        for (qid, _) in &beir.queries {
            let mut p: Vec<usize> = Vec::new();
            let mut judged: Vec<(&String, &i32)> = beir.qrels[qid].iter().collect();
            judged.sort();
            for (d, &g) in judged {
                if g <= 0 {
                    continue;
                }
                let r = *row.get(d.as_str()).with_context(|| {
                    format!("document {d} judged for query {qid} is not in corpus.jsonl")
                })?;
                p.push(r);
            }
            positives.push(p);
        }
        let n = beir.queries.len();
        if dev_queries >= n {
            bail!("--dev-queries {dev_queries} leaves no training query (the split has {n})");
        }
        let mut order: Vec<usize> = (0..n).collect();
        shuffle(&mut order, &mut Rng::new(seed ^ 0xde5e_ed00));
        let mut dev: Vec<usize> = order[..dev_queries].to_vec();
        dev.sort_unstable();
        let held: HashSet<usize> = dev.iter().copied().collect();
        let examples: Vec<(usize, usize)> = (0..n)
            .filter(|q| !held.contains(q))
            .flat_map(|q| positives[q].iter().map(move |&d| (q, d)))
            .collect();
        if examples.is_empty() {
            bail!("split {split} has no positive judgement to train on");
        }
        Ok(TrainSet {
            corpus: beir.corpus,
            queries: beir.queries,
            positives,
            examples,
            dev,
            negatives: Vec::new(),
        })
    }

    /// Mines up to `depth` negatives per query with the bare backbone (exact search
    /// over the whole corpus, documents truncated at `max_length`), reading and
    /// writing a cache file under `cache_dir` keyed by everything that decides them.
    pub fn mine_negatives(
        &mut self,
        backbone: &Backbone,
        depth: usize,
        max_length: usize,
        cache_dir: &Path,
    ) -> anyhow::Result<PathBuf> {
        let mut h = Sha256::new();
        h.update(backbone.sha256().as_bytes());
        h.update(format!("|{depth}|{max_length}|{}|", self.corpus.len()));
        for (id, text) in &self.corpus {
            h.update(id.as_bytes());
            h.update([0]);
            h.update(text.len().to_le_bytes());
        }
        for (id, text) in &self.queries {
            h.update(id.as_bytes());
            h.update(text.as_bytes());
        }
        let key = hex::encode(&h.finalize()[..12]);
        let path = cache_dir.join(format!("negatives-{key}.json"));
        if let Ok(bytes) = std::fs::read(&path) {
            let cached: HashMap<String, Vec<String>> = serde_json::from_slice(&bytes)
                .with_context(|| format!("reading negatives cache {}", path.display()))?;
            self.negatives = self.rows_of(&cached)?;
            eprintln!("hard negatives: cached in {}", path.display());
            return Ok(path);
        }
        let opts = EncodeOptions {
            max_length,
            batch_size: aside_backbone::DEFAULT_BATCH_SIZE,
        };
        let docs: Vec<&str> = self.corpus.iter().map(|(_, t)| t.as_str()).collect();
        let ids: Vec<String> = self.corpus.iter().map(|(i, _)| i.clone()).collect();
        let dv = encode_with_progress(backbone, None, &docs, &opts, "mining negatives: corpus")?;
        let qs: Vec<&str> = self.queries.iter().map(|(_, t)| t.as_str()).collect();
        let qv = encode_with_progress(backbone, None, &qs, &opts, "mining negatives: queries")?;
        let pos: Vec<HashSet<&str>> = self
            .positives
            .iter()
            .map(|p| p.iter().map(|&r| self.corpus[r].0.as_str()).collect())
            .collect();
        let cached: HashMap<String, Vec<String>> = self
            .queries
            .par_iter()
            .zip(&qv)
            .enumerate()
            .map(|(qi, ((qid, _), q))| {
                let top = exact_top(&dv, &ids, q, depth + pos[qi].len());
                let neg: Vec<String> = top
                    .into_iter()
                    .map(|(d, _)| d)
                    .filter(|d| !pos[qi].contains(d.as_str()))
                    .take(depth)
                    .collect();
                (qid.clone(), neg)
            })
            .collect();
        std::fs::create_dir_all(cache_dir)
            .with_context(|| format!("creating {}", cache_dir.display()))?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(&cached)?)?;
        std::fs::rename(&tmp, &path)?;
        self.negatives = self.rows_of(&cached)?;
        Ok(path)
    }

    fn rows_of(&self, cached: &HashMap<String, Vec<String>>) -> anyhow::Result<Vec<Vec<usize>>> {
        let row = rows_by_id(&self.corpus);
        self.queries
            .iter()
            .map(|(qid, _)| {
                let list = cached
                    .get(qid)
                    .with_context(|| format!("negatives cache lacks query {qid}"))?;
                list.iter()
                    .map(|d| {
                        row.get(d.as_str())
                            .copied()
                            .with_context(|| format!("negatives cache names unknown document {d}"))
                    })
                    .collect()
            })
            .collect()
    }
}

/// Corpus row of each document id.
fn rows_by_id(corpus: &[(String, String)]) -> HashMap<&str, usize> {
    corpus
        .iter()
        .enumerate()
        .map(|(i, (id, _))| (id.as_str(), i))
        .collect()
}

/// Fisher–Yates with the seeded generator.
pub fn shuffle<T>(v: &mut [T], rng: &mut Rng) {
    for i in (1..v.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}
