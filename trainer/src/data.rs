//! Training data from a BEIR folder: the judged queries, a dev split carved from
//! them, hard negatives mined with the base model (cached, with the base model's
//! scores and each negative's likeness to the query's positives), and the dev
//! pool the dev evaluation ranks.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use aside_backbone::testing::Rng;
use aside_backbone::{Backbone, EncodeOptions};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::eval::{encode_with_progress, exact_top, Beir};

/// The default dev split: a tenth of the queries, at most this many.
pub const DEV_QUERIES_CAP: usize = 100;
/// Below this many judged queries there is no default dev split (too few to tell).
pub const DEV_MIN_QUERIES: usize = 20;

/// Queries the default dev split holds out of `n`: a tenth, at most
/// [`DEV_QUERIES_CAP`], none when there are fewer than [`DEV_MIN_QUERIES`].
pub fn default_dev_queries(n: usize) -> usize {
    if n < DEV_MIN_QUERIES {
        0
    } else {
        (n / 10).clamp(2, DEV_QUERIES_CAP)
    }
}

/// A mined negative: a document the base model ranks high that is not judged relevant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Negative {
    /// Corpus row.
    pub row: usize,
    /// The base model's similarity to the query.
    pub score: f32,
    /// The base model's highest similarity to one of the query's positives (document
    /// to document): near 1 for a copy of a positive under another id.
    pub likeness: f32,
    /// The same text (after normalising case and spacing) as one of the positives.
    pub same_text: bool,
}

/// A training split, indexed.
pub struct TrainSet {
    /// (doc id, title + " " + text)
    pub corpus: Vec<(String, String)>,
    /// (query id, text) of the split, in qrels order.
    pub queries: Vec<(String, String)>,
    /// Per query, every judged (corpus row, grade), in document-id order.
    pub grades: Vec<Vec<(usize, i32)>>,
    /// Per query, the rows the loss trains toward: judged at `min_relevance` or more.
    pub positives: Vec<Vec<usize>>,
    /// Per query, every row judged relevant at all (grade > 0): never a negative.
    pub relevant: Vec<HashSet<usize>>,
    /// Per corpus row, a number shared by the rows with the same normalised text.
    pub text_class: Vec<u32>,
    /// (query row, positive corpus row) pairs (dev queries left out).
    pub examples: Vec<(usize, usize)>,
    /// Query rows that train: not in the dev split, with at least one positive.
    pub train_queries: Vec<usize>,
    /// Query rows held out for the dev evaluation.
    pub dev: Vec<usize>,
    /// Per query, the base model's top documents that are not judged relevant, best first.
    pub negatives: Vec<Vec<Negative>>,
    /// Per query, the base model's similarity to each positive (row → score).
    pub positive_scores: Vec<HashMap<usize, f32>>,
}

/// How a split is read.
#[derive(Debug, Clone)]
pub struct SplitOptions {
    /// Queries held out (seeded); `None`: [`default_dev_queries`].
    pub dev_queries: Option<usize>,
    /// Judgements below this grade do not train (they still never count as negatives).
    pub min_relevance: i32,
    pub seed: u64,
}

impl TrainSet {
    /// Reads `split` of a BEIR folder and holds out the dev queries (seeded).
    pub fn load(dir: &Path, split: &str, opts: &SplitOptions) -> anyhow::Result<Self> {
        if opts.min_relevance < 1 {
            bail!(
                "--min-relevance must be at least 1 (grade 0 means judged not relevant), not {}",
                opts.min_relevance
            );
        }
        let beir = Beir::load(dir, split)?;
        let row = rows_by_id(&beir.corpus);
        let n = beir.queries.len();
        let mut grades = Vec::with_capacity(n);
        for (qid, _) in &beir.queries {
            let mut judged: Vec<(&String, &i32)> = beir.qrels[qid].iter().collect();
            judged.sort();
            let mut g = Vec::with_capacity(judged.len());
            for (d, &grade) in judged {
                match row.get(d.as_str()) {
                    Some(&r) => g.push((r, grade)),
                    None if grade > 0 => {
                        bail!("document {d} judged for query {qid} is not in corpus.jsonl")
                    }
                    None => {}
                }
            }
            grades.push(g);
        }
        let positives: Vec<Vec<usize>> = grades
            .iter()
            .map(|g| {
                g.iter()
                    .filter(|(_, x)| *x >= opts.min_relevance)
                    .map(|(r, _)| *r)
                    .collect()
            })
            .collect();
        let relevant: Vec<HashSet<usize>> = grades
            .iter()
            .map(|g| g.iter().filter(|(_, x)| *x > 0).map(|(r, _)| *r).collect())
            .collect();
        let with_positive = positives.iter().filter(|p| !p.is_empty()).count();
        let dev_queries = opts
            .dev_queries
            .unwrap_or_else(|| default_dev_queries(with_positive));
        if dev_queries >= with_positive && dev_queries > 0 {
            bail!(
                "--dev-queries {dev_queries} leaves no training query (the split has {with_positive} with a positive judgement)"
            );
        }
        // The dev split is drawn from queries that have a positive (others score 0
        // whatever the model does).
        let mut order: Vec<usize> = (0..n).filter(|&q| !positives[q].is_empty()).collect();
        shuffle(&mut order, &mut Rng::new(opts.seed ^ 0xde5e_ed00));
        let mut dev: Vec<usize> = order[..dev_queries].to_vec();
        dev.sort_unstable();
        let held: HashSet<usize> = dev.iter().copied().collect();
        let train_queries: Vec<usize> = (0..n)
            .filter(|q| !held.contains(q) && !positives[*q].is_empty())
            .collect();
        let examples: Vec<(usize, usize)> = train_queries
            .iter()
            .flat_map(|&q| positives[q].iter().map(move |&d| (q, d)))
            .collect();
        if examples.is_empty() {
            bail!(
                "split {split} has no judgement of grade {} or more to train on",
                opts.min_relevance
            );
        }
        let mut classes: HashMap<String, u32> = HashMap::new();
        let text_class = beir
            .corpus
            .iter()
            .map(|(_, t)| {
                let next = classes.len() as u32;
                *classes.entry(normalise(t)).or_insert(next)
            })
            .collect();
        Ok(TrainSet {
            corpus: beir.corpus,
            queries: beir.queries,
            grades,
            positives,
            relevant,
            text_class,
            examples,
            train_queries,
            dev,
            negatives: Vec::new(),
            positive_scores: Vec::new(),
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
        h.update(b"negatives v2|");
        h.update(backbone.sha256().as_bytes());
        h.update(format!("|{depth}|{max_length}|{}|", self.corpus.len()));
        for (id, text) in &self.corpus {
            h.update(id.as_bytes());
            h.update([0]);
            h.update(text.len().to_le_bytes());
        }
        for ((id, text), judged) in self.queries.iter().zip(&self.relevant) {
            h.update(id.as_bytes());
            h.update(text.as_bytes());
            let mut rows: Vec<&usize> = judged.iter().collect();
            rows.sort();
            for r in rows {
                h.update(r.to_le_bytes());
            }
        }
        let key = hex::encode(&h.finalize()[..12]);
        let path = cache_dir.join(format!("negatives-{key}.json"));
        if let Ok(bytes) = std::fs::read(&path) {
            let cached: HashMap<String, Mined> = serde_json::from_slice(&bytes)
                .with_context(|| format!("reading negatives cache {}", path.display()))?;
            self.take_mined(&cached)?;
            eprintln!("hard negatives: cached in {}", path.display());
            return Ok(path);
        }
        let opts = EncodeOptions {
            max_length,
            batch_size: aside_backbone::DEFAULT_BATCH_SIZE,
        };
        let docs: Vec<&str> = self.corpus.iter().map(|(_, t)| t.as_str()).collect();
        let ids: Vec<String> = self.corpus.iter().map(|(i, _)| i.clone()).collect();
        let row = rows_by_id(&self.corpus);
        let dv = encode_with_progress(backbone, None, &docs, &opts, "mining negatives: corpus")?;
        let qs: Vec<&str> = self.queries.iter().map(|(_, t)| t.as_str()).collect();
        let qv = encode_with_progress(backbone, None, &qs, &opts, "mining negatives: queries")?;
        let dot = |a: &[f32], b: &[f32]| -> f32 { a.iter().zip(b).map(|(x, y)| x * y).sum() };
        let cached: HashMap<String, Mined> = self
            .queries
            .par_iter()
            .zip(&qv)
            .enumerate()
            .map(|(qi, ((qid, _), q))| {
                let judged = &self.relevant[qi];
                let top = exact_top(&dv, &ids, q, depth + judged.len());
                let pos_classes: HashSet<u32> =
                    judged.iter().map(|&r| self.text_class[r]).collect();
                let neg = top
                    .into_iter()
                    .filter(|(d, _)| !judged.contains(&row[d.as_str()]))
                    .take(depth)
                    .map(|(d, score)| {
                        let r = row[d.as_str()];
                        let likeness = judged
                            .iter()
                            .map(|&p| dot(&dv[r], &dv[p]))
                            .fold(f32::NEG_INFINITY, f32::max);
                        (
                            d,
                            score,
                            if likeness.is_finite() { likeness } else { 0.0 },
                            pos_classes.contains(&self.text_class[r]),
                        )
                    })
                    .collect();
                let pos = judged
                    .iter()
                    .map(|&p| (self.corpus[p].0.clone(), dot(q, &dv[p])))
                    .collect();
                (qid.clone(), Mined { neg, pos })
            })
            .collect();
        std::fs::create_dir_all(cache_dir)
            .with_context(|| format!("creating {}", cache_dir.display()))?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(&cached)?)?;
        std::fs::rename(&tmp, &path)?;
        self.take_mined(&cached)?;
        Ok(path)
    }

    fn take_mined(&mut self, cached: &HashMap<String, Mined>) -> anyhow::Result<()> {
        let row = rows_by_id(&self.corpus);
        let find = |d: &str| -> anyhow::Result<usize> {
            row.get(d)
                .copied()
                .with_context(|| format!("negatives cache names unknown document {d}"))
        };
        let mut negatives = Vec::with_capacity(self.queries.len());
        let mut positive_scores = Vec::with_capacity(self.queries.len());
        for (qid, _) in &self.queries {
            let m = cached
                .get(qid)
                .with_context(|| format!("negatives cache lacks query {qid}"))?;
            negatives.push(
                m.neg
                    .iter()
                    .map(|(d, score, likeness, same_text)| {
                        Ok(Negative {
                            row: find(d)?,
                            score: *score,
                            likeness: *likeness,
                            same_text: *same_text,
                        })
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?,
            );
            positive_scores.push(
                m.pos
                    .iter()
                    .map(|(d, s)| Ok((find(d)?, *s)))
                    .collect::<anyhow::Result<HashMap<_, _>>>()?,
            );
        }
        self.negatives = negatives;
        self.positive_scores = positive_scores;
        Ok(())
    }

    /// The documents the dev evaluation ranks: each dev query's base-model top
    /// `depth` documents plus every document judged relevant to it (rows, sorted).
    /// For `depth` up to the mining depth, a query's top `depth` over this pool is its
    /// top `depth` over the whole corpus.
    pub fn dev_pool(&self, depth: usize) -> Vec<usize> {
        let mut pool: HashSet<usize> = HashSet::new();
        for &q in &self.dev {
            pool.extend(self.negatives[q].iter().take(depth).map(|n| n.row));
            pool.extend(&self.relevant[q]);
        }
        let mut pool: Vec<usize> = pool.into_iter().collect();
        pool.sort_unstable();
        pool
    }

    /// Writes the dev split as a BEIR folder (`corpus.jsonl` = the dev pool,
    /// `queries.jsonl`, `qrels/dev.tsv`): `aside eval --data DIR --split dev` on it
    /// computes what the dev evaluation computes.
    pub fn write_dev_beir(&self, dir: &Path, depth: usize) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir.join("qrels"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let mut corpus = String::new();
        for r in self.dev_pool(depth) {
            let (id, text) = &self.corpus[r];
            corpus.push_str(&serde_json::json!({"_id": id, "title": "", "text": text}).to_string());
            corpus.push('\n');
        }
        let mut queries = String::new();
        let mut qrels = String::from("query-id\tcorpus-id\tscore\n");
        for &q in &self.dev {
            let (id, text) = &self.queries[q];
            queries.push_str(&serde_json::json!({"_id": id, "text": text}).to_string());
            queries.push('\n');
            for &(r, g) in &self.grades[q] {
                if g > 0 {
                    qrels.push_str(&format!("{id}\t{}\t{g}\n", self.corpus[r].0));
                }
            }
        }
        std::fs::write(dir.join("corpus.jsonl"), corpus)?;
        std::fs::write(dir.join("queries.jsonl"), queries)?;
        std::fs::write(dir.join("qrels/dev.tsv"), qrels)?;
        Ok(())
    }

    /// The judgements of the dev queries (grade > 0), by ids, as `evaluate` takes them.
    pub fn dev_qrels(&self) -> crate::eval::Qrels {
        self.dev
            .iter()
            .map(|&q| {
                (
                    self.queries[q].0.clone(),
                    self.grades[q]
                        .iter()
                        .filter(|(_, g)| *g > 0)
                        .map(|&(r, g)| (self.corpus[r].0.clone(), g))
                        .collect(),
                )
            })
            .collect()
    }
}

/// One query's mined lists as cached: negatives (id, score, likeness, same text) and
/// the positives' scores (id, score).
#[derive(Serialize, Deserialize)]
struct Mined {
    neg: Vec<(String, f32, f32, bool)>,
    pos: Vec<(String, f32)>,
}

/// Lower case, letters and digits only, single spaces: two texts that differ only in
/// case, punctuation or spacing are the same document.
pub fn normalise(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut space = false;
    for c in text.chars() {
        if c.is_alphanumeric() {
            if space && !out.is_empty() {
                out.push(' ');
            }
            space = false;
            out.extend(c.to_lowercase());
        } else {
            space = true;
        }
    }
    out
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
