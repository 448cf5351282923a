//! The training loop: a model (an adapter of any kind, or every backbone weight),
//! its loss on a batch, AdamW with warm-up and decay, clipping, dev evaluation,
//! checkpoints that `resume` continues from exactly.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context};
use aside_adapters::{format, Adapter, Dims, Meta, Task};
use aside_backbone::testing::Rng;
use aside_backbone::{
    pooling, Backbone, Bert, EncodeOptions, Encoded, Group, Hooks, Input, Item, Mode, Pooling,
    PoolingConfig,
};
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::data::{shuffle, TrainSet};
use crate::eval::metrics::evaluate;
use crate::eval::{encode_texts, exact_top, rerank_then_rest};
use crate::optim::{clip_grad_norm, lr_at, AdamW, AdamWConfig};

/// What is trained.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// A fresh adapter described by this metadata (the backbone stays frozen).
    Adapter(Meta),
    /// Every backbone weight (retrieval only), saved as a model folder.
    Full,
}

/// Everything that decides a run. Saved in checkpoints; `resume` refuses a different one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub task: String,
    /// Passes over the training queries (0: only `max_steps` bounds the run).
    pub epochs: usize,
    /// Stop after this many updates (0: the epochs decide).
    pub max_steps: usize,
    /// Queries per step.
    pub batch_size: usize,
    /// Hard negatives per query (retrieval: beside the in-batch ones; rerank: the
    /// documents each positive competes with).
    pub negatives: usize,
    /// Negatives are drawn from the base model's top `negative_depth` (positives excluded).
    pub negative_depth: usize,
    pub lr: f64,
    /// Rerank: the head's peak learning rate (none: `lr`). A head starts from random
    /// weights while the adapter starts from the identity, so it may need more.
    #[serde(default)]
    pub head_lr: Option<f64>,
    pub weight_decay: f64,
    /// Fraction of the steps spent warming up.
    pub warmup: f64,
    /// Global gradient-norm clip (0: none).
    pub clip: f64,
    /// Retrieval: similarities are multiplied by this (1 / temperature).
    pub scale: f64,
    pub query_max_length: usize,
    /// Documents (retrieval) or query+document pairs (rerank).
    pub doc_max_length: usize,
    pub seed: u64,
    pub dev_queries: usize,
    /// Stop when the dev nDCG@10 has not improved for this many evaluations (0: never).
    pub patience: usize,
    /// Evaluate on the dev split every this many steps (and at the end).
    #[serde(default)]
    pub eval_every: usize,
    /// The dev pool: each dev query's base-model top `dev_depth` documents plus its
    /// judged ones; for rerank, the candidates re-ranked.
    #[serde(default = "default_dev_depth")]
    pub dev_depth: usize,
    /// An epoch visits each training query once with one of its positives
    /// (`queries`), or each judged (query, positive) pair once (`pairs`).
    #[serde(default = "default_sample")]
    pub sample: Sample,
    /// Negatives at least this like one of the query's positives (base-model cosine
    /// of the two documents), or with the same text, are not drawn (none: all are).
    #[serde(default)]
    pub near_duplicate: Option<f32>,
    /// Positive-aware margin: a negative the base model scores above `margin` times
    /// the positive's score is likely an unjudged relevant document and is not drawn.
    #[serde(default)]
    pub margin: Option<f32>,
    /// Retrieval: an in-batch document with the same text as one judged relevant to
    /// the query is masked out, not counted as a negative.
    #[serde(default)]
    pub mask_same_text: bool,
    /// The lowest grade that trains as a positive.
    #[serde(default = "default_min_relevance")]
    pub min_relevance: i32,
}

/// How an epoch walks the judgements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sample {
    Queries,
    Pairs,
}

impl std::str::FromStr for Sample {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "queries" => Ok(Sample::Queries),
            "pairs" => Ok(Sample::Pairs),
            _ => Err(format!("`{s}`: expected queries or pairs")),
        }
    }
}

fn default_dev_depth() -> usize {
    20
}
fn default_sample() -> Sample {
    Sample::Pairs
}
fn default_min_relevance() -> i32 {
    1
}

impl TrainConfig {
    pub fn task(&self) -> anyhow::Result<Task> {
        self.task.parse().map_err(|e| anyhow::anyhow!("{e}"))
    }
}

/// One step's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepLog {
    pub step: usize,
    pub epoch: usize,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub seconds: f64,
}

/// One epoch's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochLog {
    pub epoch: usize,
    pub step: usize,
    pub mean_loss: f64,
}

/// One dev evaluation: step 0 is the base model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DevLog {
    pub step: usize,
    pub ndcg10: f64,
    /// Seconds the evaluation took.
    pub seconds: f64,
    /// The best so far (this one included; the base model's at step 0).
    pub best: f64,
}

/// What the loop reports as it goes.
pub trait Progress {
    fn step(&mut self, log: &StepLog, total: usize);
    fn epoch(&mut self, log: &EpochLog);
    /// A dev evaluation (step 0: the base model, before the first step).
    fn dev(&mut self, _log: &DevLog) {}
    /// Polled between steps: true stops the run (a checkpoint is written first).
    fn interrupted(&self) -> bool {
        false
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Finished,
    EarlyStopped,
    Interrupted,
}

/// Base and best dev figures of a run with a dev split.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Verdict {
    /// nDCG@10 of the base model (rerank: of the base retriever's order).
    pub base: f64,
    /// The best checkpoint's nDCG@10.
    pub best: f64,
    /// Its step (0: no checkpoint beat the base model).
    pub best_step: usize,
}

impl Verdict {
    /// A checkpoint scored above the base model.
    pub fn improved(&self) -> bool {
        self.best_step > 0 && self.best > self.base
    }
}

enum Model {
    Adapter { meta: Meta, adapter: Box<Adapter> },
    Full { bert: Box<Bert> },
}

/// A run in progress.
pub struct Trainer<'a> {
    backbone: &'a Backbone,
    data: &'a TrainSet,
    pub config: TrainConfig,
    target: Target,
    task: Task,
    model: Model,
    opt: AdamW,
    pub steps: Vec<StepLog>,
    pub epochs: Vec<EpochLog>,
    /// Dev evaluations, the base model's first (step 0).
    pub evals: Vec<DevLog>,
    /// The parameters of the best dev evaluation after step 0.
    best_params: Option<Vec<Tensor>>,
    stale_evals: usize,
    /// Seconds spent training before a resume.
    prior_seconds: f64,
    /// Built at the first dev evaluation.
    dev: Option<DevPool>,
    /// Write a checkpoint into this folder every this many steps.
    pub checkpoint_every: Option<(usize, std::path::PathBuf)>,
}

/// What the dev evaluation ranks.
struct DevPool {
    /// Corpus rows of the pool, and their ids.
    rows: Vec<usize>,
    ids: Vec<String>,
    qrels: crate::eval::Qrels,
    /// Rerank: the base retriever's ranking of the pool per dev query.
    base_runs: Option<HashMap<String, Vec<(String, f32)>>>,
}

impl<'a> Trainer<'a> {
    /// A fresh run: adapter tensors initialised as method.md says (seeded).
    pub fn new(
        backbone: &'a Backbone,
        data: &'a TrainSet,
        target: Target,
        config: TrainConfig,
    ) -> anyhow::Result<Self> {
        let task = config.task()?;
        if config.batch_size == 0 {
            bail!("the batch size must be at least 1");
        }
        if config.epochs == 0 && config.max_steps == 0 {
            bail!("set a number of epochs or of steps");
        }
        for (name, v) in [
            ("near-duplicate", config.near_duplicate),
            ("margin", config.margin),
        ] {
            if v.is_some_and(|x| !(x > 0.0 && x.is_finite())) {
                bail!(
                    "--{name} must be a positive number, not {}",
                    v.unwrap_or_default()
                );
            }
        }
        if config.dev_queries > 0 && config.dev_depth == 0 {
            bail!("--dev-depth must be at least 1");
        }
        if data.negatives.is_empty() && (task == Task::Rerank || config.negatives > 0) {
            bail!("hard negatives have not been mined");
        }
        if task == Task::Rerank && config.negatives == 0 {
            bail!("rerank training needs at least one negative per positive");
        }
        for (what, n) in [
            ("query", config.query_max_length),
            ("document", config.doc_max_length),
        ] {
            backbone
                .check_options(&EncodeOptions {
                    max_length: n,
                    batch_size: 1,
                })
                .with_context(|| format!("{what} max length"))?;
        }
        let (model, vars) = match &target {
            Target::Full => {
                if task != Task::Retrieval {
                    bail!("full fine-tuning trains retrieval models only (a rerank model needs an adapter's head)");
                }
                let (bert, vars) = backbone.bert().trainable()?;
                (
                    Model::Full {
                        bert: Box::new(bert),
                    },
                    vars,
                )
            }
            Target::Adapter(meta) => {
                let mut meta = meta.clone();
                meta.task = task;
                meta.backbone = Some(backbone.sha256().to_owned());
                let dims = Dims::of(backbone);
                let init = Adapter::init_tensors(
                    &meta,
                    &dims,
                    backbone.bert(),
                    config.seed,
                    backbone.bert().device(),
                )?;
                let mut vars = Vec::new();
                let mut tensors = BTreeMap::new();
                for (name, t) in init {
                    let v = Var::from_tensor(&t)?;
                    tensors.insert(name.clone(), v.as_tensor().clone());
                    vars.push((name, v));
                }
                let adapter = Adapter::from_tensors(meta.clone(), tensors, &dims)?;
                (
                    Model::Adapter {
                        meta,
                        adapter: Box::new(adapter),
                    },
                    vars,
                )
            }
        };
        let mut opt = AdamW::new(
            vars,
            AdamWConfig {
                lr: config.lr,
                weight_decay: config.weight_decay,
                ..Default::default()
            },
        )?;
        if let Some(head_lr) = config.head_lr {
            if task != Task::Rerank {
                bail!("a head learning rate applies to rerank training only");
            }
            if !(head_lr > 0.0 && head_lr.is_finite()) {
                bail!("the head learning rate must be positive, got {head_lr}");
            }
            opt.scale_lr("head.", head_lr / config.lr);
        }
        Ok(Trainer {
            backbone,
            data,
            config,
            target,
            task,
            model,
            opt,
            steps: Vec::new(),
            epochs: Vec::new(),
            evals: Vec::new(),
            best_params: None,
            stale_evals: 0,
            prior_seconds: 0.0,
            dev: None,
            checkpoint_every: None,
        })
    }

    /// Trainable parameters.
    pub fn param_count(&self) -> usize {
        self.opt.param_count()
    }

    /// Updates per epoch and in all.
    pub fn plan(&self) -> (usize, usize) {
        let units = match self.config.sample {
            Sample::Queries => self.data.train_queries.len(),
            Sample::Pairs => self.data.examples.len(),
        };
        let per_epoch = units.div_ceil(self.config.batch_size);
        let total = match (self.config.epochs, self.config.max_steps) {
            (0, m) => m,
            (e, 0) => per_epoch * e,
            (e, m) => (per_epoch * e).min(m),
        };
        (per_epoch, total)
    }

    /// Steps at which the dev split is evaluated (besides the base model before the first).
    pub fn eval_steps(&self) -> Vec<usize> {
        let (_, total) = self.plan();
        if self.data.dev.is_empty() {
            return Vec::new();
        }
        let every = if self.config.eval_every == 0 {
            total
        } else {
            self.config.eval_every
        };
        (1..=total)
            .filter(|s| s % every == 0 || *s == total)
            .collect()
    }

    /// The batch of (query, positive) rows at `step`: a seeded order per epoch.
    fn batch(&self, step: usize, per_epoch: usize, order: &[usize]) -> Vec<(usize, usize)> {
        let epoch = step / per_epoch;
        let pos = step % per_epoch;
        let slice = &order
            [pos * self.config.batch_size..((pos + 1) * self.config.batch_size).min(order.len())];
        match self.config.sample {
            Sample::Pairs => slice.iter().map(|&i| self.data.examples[i]).collect(),
            Sample::Queries => slice
                .iter()
                .map(|&q| {
                    let p = &self.data.positives[q];
                    let mut rng = Rng::new(
                        self.config.seed ^ ((epoch as u64) << 32 | q as u64).wrapping_mul(0x9E37),
                    );
                    (q, p[(rng.next_u64() % p.len() as u64) as usize])
                })
                .collect(),
        }
    }

    /// Trains until the plan is done, early stopping fires, or `progress` interrupts.
    /// With a dev split the base model is evaluated first, then every `eval_every`
    /// steps; the parameters of the best evaluation are the ones kept at the end.
    pub fn run(&mut self, progress: &mut dyn Progress) -> anyhow::Result<Outcome> {
        let (per_epoch, total) = self.plan();
        if per_epoch == 0 {
            bail!("no training query left");
        }
        let warmup = (self.config.warmup * total as f64).round() as usize;
        let evals_at: HashSet<usize> = self.eval_steps().into_iter().collect();
        if !self.data.dev.is_empty() && self.evals.is_empty() {
            let t = Instant::now();
            let base = self.base_ndcg()?;
            let log = DevLog {
                step: 0,
                ndcg10: base,
                seconds: t.elapsed().as_secs_f64(),
                best: base,
            };
            progress.dev(&log);
            self.evals.push(log);
        }
        let t0 = Instant::now();
        let mut order: Option<(usize, Vec<usize>)> = None;
        while self.opt.step < total {
            if progress.interrupted() {
                return Ok(Outcome::Interrupted);
            }
            let step = self.opt.step;
            let epoch = step / per_epoch;
            if order.as_ref().is_none_or(|(e, _)| *e != epoch) {
                let mut o: Vec<usize> = match self.config.sample {
                    Sample::Pairs => (0..self.data.examples.len()).collect(),
                    Sample::Queries => self.data.train_queries.clone(),
                };
                shuffle(
                    &mut o,
                    &mut Rng::new(self.config.seed.wrapping_add(1 + epoch as u64)),
                );
                order = Some((epoch, o));
            }
            let batch = self.batch(step, per_epoch, &order.as_ref().expect("order").1);
            let lr = lr_at(step, total, warmup, self.config.lr);
            let loss = self.loss(&batch, step)?;
            let loss_value = loss.to_scalar::<f32>()? as f64;
            if !loss_value.is_finite() {
                bail!("the loss became {loss_value} at step {step}: lower the learning rate");
            }
            let mut grads = loss.backward()?;
            let vars: Vec<&Var> = self.opt.slots.iter().map(|s| &s.var).collect();
            let grad_norm = clip_grad_norm(&mut grads, &vars, self.config.clip)?;
            self.opt.step(&grads, lr)?;
            let log = StepLog {
                step: step + 1,
                epoch: epoch + 1,
                loss: loss_value,
                lr,
                grad_norm,
                seconds: self.prior_seconds + t0.elapsed().as_secs_f64(),
            };
            progress.step(&log, total);
            self.steps.push(log);
            let done = self.opt.step;
            if done.is_multiple_of(per_epoch) || done == total {
                let e = self.end_epoch(epoch + 1);
                progress.epoch(&e);
                self.epochs.push(e);
            }
            if evals_at.contains(&done) {
                let e = self.evaluate_now(done)?;
                progress.dev(&e);
                self.evals.push(e);
                if self.config.patience > 0 && self.stale_evals >= self.config.patience {
                    self.restore_best()?;
                    return Ok(Outcome::EarlyStopped);
                }
            }
            if let Some((n, dir)) = &self.checkpoint_every {
                if done.is_multiple_of(*n) && done < total {
                    self.checkpoint(dir)?;
                }
            }
        }
        self.restore_best()?;
        Ok(Outcome::Finished)
    }

    fn end_epoch(&self, epoch: usize) -> EpochLog {
        let losses: Vec<f64> = self
            .steps
            .iter()
            .filter(|s| s.epoch == epoch)
            .map(|s| s.loss)
            .collect();
        EpochLog {
            epoch,
            step: self.opt.step,
            mean_loss: losses.iter().sum::<f64>() / losses.len().max(1) as f64,
        }
    }

    /// A dev evaluation of the current parameters; the best so far is kept.
    fn evaluate_now(&mut self, step: usize) -> anyhow::Result<DevLog> {
        let t = Instant::now();
        let d = self.dev_ndcg()?;
        let prev = self
            .evals
            .iter()
            .map(|e| e.ndcg10)
            .fold(f64::NEG_INFINITY, f64::max);
        let best_trained = self.best_trained().map_or(f64::NEG_INFINITY, |e| e.ndcg10);
        if d > best_trained {
            self.best_params = Some(
                self.opt
                    .slots
                    .iter()
                    .map(|s| s.var.as_tensor().copy())
                    .collect::<candle_core::Result<_>>()?,
            );
        }
        if d > prev {
            self.stale_evals = 0;
        } else {
            self.stale_evals += 1;
        }
        Ok(DevLog {
            step,
            ndcg10: d,
            seconds: t.elapsed().as_secs_f64(),
            best: d.max(prev),
        })
    }

    /// The base and best dev figures (none without a dev split or before the base
    /// evaluation).
    pub fn verdict(&self) -> Option<Verdict> {
        let base = self.evals.iter().find(|e| e.step == 0)?.ndcg10;
        let best = self.best_trained();
        Some(Verdict {
            base,
            best: best.map_or(f64::NEG_INFINITY, |e| e.ndcg10),
            best_step: best.filter(|e| e.ndcg10 > base).map_or(0, |e| e.step),
        })
    }

    /// The best dev evaluation after step 0 (the earliest of equals).
    fn best_trained(&self) -> Option<&DevLog> {
        self.evals
            .iter()
            .filter(|e| e.step > 0)
            .fold(None::<&DevLog>, |b, e| match b {
                Some(b) if b.ndcg10 >= e.ndcg10 => Some(b),
                _ => Some(e),
            })
    }

    /// The step whose parameters are kept: the best dev evaluation's (the last step
    /// without a dev split).
    pub fn kept_step(&self) -> usize {
        self.best_trained().map_or(self.opt.step, |e| e.step)
    }

    /// Puts back the parameters of the best dev evaluation.
    fn restore_best(&mut self) -> anyhow::Result<()> {
        if let Some(best) = &self.best_params {
            for (s, t) in self.opt.slots.iter().zip(best) {
                s.var.set(t)?;
            }
        }
        Ok(())
    }

    fn hooks(&self) -> Option<&dyn Hooks> {
        match &self.model {
            Model::Adapter { adapter, .. } => Some(adapter.as_ref() as &dyn Hooks),
            Model::Full { .. } => None,
        }
    }

    fn bert(&self) -> &Bert {
        match &self.model {
            Model::Adapter { .. } => self.backbone.bert(),
            Model::Full { bert } => bert,
        }
    }

    fn pooling(&self) -> PoolingConfig {
        match &self.model {
            Model::Adapter { adapter, .. } => adapter.pooling(self.backbone.pooling()),
            Model::Full { .. } => self.backbone.pooling(),
        }
    }

    /// The loss of one batch of (query, positive) examples.
    pub fn loss(&self, batch: &[(usize, usize)], step: usize) -> anyhow::Result<Tensor> {
        let mut rng =
            Rng::new(self.config.seed ^ (step as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
        let data = self.data;
        // Up to `n` distinct negatives for the example (q, positive d), uniformly from
        // the drawable ones (repeats only when there are fewer than `n`).
        let mut draw = |q: usize, d: usize, n: usize, fallback: bool| -> Vec<usize> {
            let mut pool = self.drawable(q, d);
            if pool.is_empty() && fallback {
                // Rerank needs a group of the same size for every positive: the
                // lowest-scored of the base model's top documents stand in.
                let top =
                    &data.negatives[q][..data.negatives[q].len().min(self.config.negative_depth)];
                pool = top.iter().rev().take(n).map(|x| x.row).collect();
            }
            let mut picked: Vec<usize> = Vec::with_capacity(n);
            let mut tries = 0;
            while picked.len() < n.min(pool.len()) && tries < 100 * n {
                let c = pool[(rng.next_u64() % pool.len() as u64) as usize];
                if !picked.contains(&c) {
                    picked.push(c);
                }
                tries += 1;
            }
            picked
        };
        let tok = self.backbone.tokens();
        match self.task {
            Task::Retrieval => {
                let queries: Vec<Input<'_>> = batch
                    .iter()
                    .map(|&(q, _)| Input::Single(&data.queries[q].1))
                    .collect();
                let mut doc_rows = Vec::new();
                let mut starts = Vec::with_capacity(batch.len());
                for &(q, d) in batch {
                    starts.push(doc_rows.len());
                    doc_rows.push(d);
                    if self.config.negatives > 0 {
                        doc_rows.extend(draw(q, d, self.config.negatives, false));
                    }
                }
                let docs: Vec<Input<'_>> = doc_rows
                    .iter()
                    .map(|&r| Input::Single(&data.corpus[r].1))
                    .collect();
                let qe = tok.encode(&queries, self.config.query_max_length)?;
                let de = tok.encode(&docs, self.config.doc_max_length)?;
                let qv = self.embed(&qe)?;
                let dv = self.embed(&de)?;
                let scores = (qv.matmul(&dv.t()?)? * self.config.scale)?;
                // Each query's own positive is the target; other documents judged
                // relevant to it (or, with `mask_same_text`, with the same text as
                // one) are masked out rather than treated as negatives.
                let mut targets = Vec::with_capacity(batch.len());
                let mut mask = vec![0f32; batch.len() * doc_rows.len()];
                for (i, &(q, _)) in batch.iter().enumerate() {
                    let at = starts[i];
                    targets.push(at as u32);
                    let classes: HashSet<u32> = if self.config.mask_same_text {
                        data.relevant[q]
                            .iter()
                            .map(|&r| data.text_class[r])
                            .collect()
                    } else {
                        HashSet::new()
                    };
                    for (j, &r) in doc_rows.iter().enumerate() {
                        if j != at
                            && (data.relevant[q].contains(&r)
                                || classes.contains(&data.text_class[r]))
                        {
                            mask[i * doc_rows.len() + j] = -1e4;
                        }
                    }
                }
                let dev = scores.device().clone();
                let mask = Tensor::from_vec(mask, scores.dims(), &dev)?;
                let targets = Tensor::from_vec(targets, batch.len(), &dev)?;
                Ok(candle_nn::loss::cross_entropy(
                    &scores.add(&mask)?,
                    &targets,
                )?)
            }
            Task::Rerank => {
                let mut pairs = Vec::new();
                let mut group = 0;
                for &(q, d) in batch {
                    let negs = draw(q, d, self.config.negatives, true);
                    if negs.is_empty() {
                        bail!(
                            "query {} has no mined negative to re-rank against",
                            data.queries[q].0
                        );
                    }
                    let negs: Vec<usize> = (0..self.config.negatives)
                        .map(|i| negs[i % negs.len()])
                        .collect();
                    group = 1 + negs.len();
                    pairs.push(Input::Pair(&data.queries[q].1, &data.corpus[d].1));
                    for r in negs {
                        pairs.push(Input::Pair(&data.queries[q].1, &data.corpus[r].1));
                    }
                }
                let enc = tok.encode(&pairs, self.config.doc_max_length)?;
                let Model::Adapter { adapter, .. } = &self.model else {
                    bail!("rerank needs an adapter");
                };
                let pooled = self.forward_pooled(&enc, Pooling::Cls, false)?;
                let scores = adapter
                    .head_scores(&pooled)?
                    .context("rerank adapter without head")?
                    .reshape((batch.len(), group))?;
                let targets = Tensor::zeros(batch.len(), DType::U32, scores.device())?;
                Ok(candle_nn::loss::cross_entropy(&scores, &targets)?)
            }
        }
    }

    /// Pooled (and, as configured, normalised) vectors of tokenised inputs, differentiable.
    fn embed(&self, enc: &[Encoded]) -> anyhow::Result<Tensor> {
        let p = self.pooling();
        self.forward_pooled(enc, p.pooling, p.normalize)
    }

    fn forward_pooled(
        &self,
        enc: &[Encoded],
        pool: Pooling,
        normalize: bool,
    ) -> anyhow::Result<Tensor> {
        // Length-sorted chunks pad little; the rows are put back in input order.
        let mut order: Vec<usize> = (0..enc.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(enc[i].ids.len()));
        let mut parts = Vec::new();
        for chunk in order.chunks(16) {
            let refs: Vec<&Encoded> = chunk.iter().map(|&i| &enc[i]).collect();
            let inputs = self.backbone.pad(&refs)?;
            let groups = [Group {
                rows: 0..refs.len(),
                hooks: self.hooks(),
            }];
            let h = self.bert().forward(&inputs, &groups, Mode::Train)?;
            let mut v = pooling::pool(&h, &inputs.attention_mask, pool)?;
            if normalize {
                v = pooling::l2_normalize(&v)?;
            }
            parts.push(v);
        }
        // One chunk is returned as it is: CLS pooling leaves a strided view, which
        // index_select refuses.
        let all = Tensor::cat(&parts, 0)?.contiguous()?;
        let mut inverse = vec![0u32; enc.len()];
        for (pos, &i) in order.iter().enumerate() {
            inverse[i] = pos as u32;
        }
        let idx = Tensor::from_vec(inverse, enc.len(), all.device())?;
        Ok(all.index_select(&idx, 0)?)
    }

    /// The negatives drawable for the example (query `q`, positive `d`): the base
    /// model's top `negative_depth`, less near-duplicates of a positive and those
    /// above the positive-aware margin.
    pub fn drawable(&self, q: usize, d: usize) -> Vec<usize> {
        let data = self.data;
        let c = &self.config;
        let top = &data.negatives[q][..data.negatives[q].len().min(c.negative_depth)];
        let pos = data.positive_scores.get(q).and_then(|m| m.get(&d)).copied();
        top.iter()
            .filter(|n| {
                c.near_duplicate
                    .is_none_or(|t| !n.same_text && n.likeness < t)
            })
            .filter(|n| match (c.margin, pos) {
                (Some(m), Some(p)) => n.score < m * p,
                _ => true,
            })
            .map(|n| n.row)
            .collect()
    }

    fn dev_pool(&mut self) -> anyhow::Result<&DevPool> {
        if self.dev.is_none() {
            let rows = self.data.dev_pool(self.config.dev_depth);
            let ids = rows
                .iter()
                .map(|&r| self.data.corpus[r].0.clone())
                .collect();
            let mut pool = DevPool {
                rows,
                ids,
                qrels: self.data.dev_qrels(),
                base_runs: None,
            };
            if self.task == Task::Rerank {
                pool.base_runs = Some(self.retrieval_runs(&pool, self.backbone, None)?);
            }
            self.dev = Some(pool);
        }
        Ok(self.dev.as_ref().expect("dev pool"))
    }

    fn dev_opts(&self) -> EncodeOptions {
        EncodeOptions {
            max_length: self.config.doc_max_length,
            batch_size: aside_backbone::DEFAULT_BATCH_SIZE,
        }
    }

    /// Each dev query's ranking of the pool by a retriever (`aside eval`'s exact search:
    /// queries and documents cut at the document length).
    fn retrieval_runs(
        &self,
        pool: &DevPool,
        b: &Backbone,
        hooks: Option<&dyn Hooks>,
    ) -> anyhow::Result<HashMap<String, Vec<(String, f32)>>> {
        let data = self.data;
        let cfg = match hooks {
            Some(_) => self.pooling(),
            None => b.pooling(),
        };
        let opts = self.dev_opts();
        let encode = |texts: Vec<&str>| encode_texts(b, hooks, cfg, &texts, &opts);
        let docs = encode(
            pool.rows
                .iter()
                .map(|&r| data.corpus[r].1.as_str())
                .collect(),
        )?;
        let queries = encode(
            data.dev
                .iter()
                .map(|&q| data.queries[q].1.as_str())
                .collect(),
        )?;
        let k = 1000.min(docs.len());
        Ok(data
            .dev
            .iter()
            .zip(&queries)
            .map(|(&q, v)| (data.queries[q].0.clone(), exact_top(&docs, &pool.ids, v, k)))
            .collect())
    }

    /// nDCG@10 of the base model on the dev split: the bare backbone's retrieval
    /// (rerank: the base retriever's order, which re-ranking has to beat).
    pub fn base_ndcg(&mut self) -> anyhow::Result<f64> {
        self.dev_pool()?;
        let pool = self.dev.as_ref().expect("dev pool");
        let runs = match &pool.base_runs {
            Some(r) => r.clone(),
            None => self.retrieval_runs(pool, self.backbone, None)?,
        };
        Ok(evaluate(&runs, &pool.qrels).ndcg10)
    }

    /// nDCG@10 of the dev queries over the dev pool with the current parameters: what
    /// `aside eval --data DEV --split dev --max-length DOC_MAX_LENGTH` (rerank: with
    /// `--rerank ADAPTER --candidates DEV_DEPTH`) reports on the folder
    /// [`TrainSet::write_dev_beir`] writes.
    pub fn dev_ndcg(&mut self) -> anyhow::Result<f64> {
        self.dev_pool()?;
        let pool = self.dev.as_ref().expect("dev pool");
        let data = self.data;
        let full;
        let b: &Backbone = match &self.model {
            Model::Full { bert } => {
                full = self.backbone.with_bert(bert.frozen_copy()?, String::new());
                &full
            }
            Model::Adapter { .. } => self.backbone,
        };
        let runs = match (&self.task, &pool.base_runs) {
            (Task::Rerank, Some(base)) => {
                let Model::Adapter { adapter, .. } = &self.model else {
                    bail!("rerank needs an adapter");
                };
                let texts: HashMap<&str, &str> = pool
                    .rows
                    .iter()
                    .map(|&r| (data.corpus[r].0.as_str(), data.corpus[r].1.as_str()))
                    .collect();
                let opts = self.dev_opts();
                let mut runs = HashMap::new();
                for &q in &data.dev {
                    let (qid, qtext) = &data.queries[q];
                    let ranked = &base[qid];
                    let c = self.config.dev_depth.min(ranked.len());
                    let items: Vec<Item<'_>> = ranked[..c]
                        .iter()
                        .map(|(d, _)| Item {
                            input: Input::Pair(qtext, texts[d.as_str()]),
                            hooks: self.hooks(),
                            pooling: Pooling::Cls,
                            normalize: false,
                        })
                        .collect();
                    let pooled = b.encode(&items, &opts)?;
                    let mut head = Vec::with_capacity(ranked.len());
                    for ((d, _), v) in ranked[..c].iter().zip(&pooled) {
                        head.push((d.clone(), adapter.head_score(v)?.context("rerank head")?));
                    }
                    // Re-ranked candidates first, the rest in retrieval order (as `aside eval`).
                    let head = rerank_then_rest(head, &ranked[c..]);
                    runs.insert(qid.clone(), head);
                }
                runs
            }
            _ => self.retrieval_runs(pool, b, self.hooks())?,
        };
        Ok(evaluate(&runs, &pool.qrels).ndcg10)
    }

    /// Writes the result: a native adapter file, or (full) a model folder.
    pub fn save(&self, out: &Path) -> anyhow::Result<()> {
        match &self.model {
            Model::Adapter { meta, .. } => {
                let a = self.adapter_snapshot(meta)?;
                let bytes = format::write_adapter(&a)?;
                write_atomic(out, &bytes)
            }
            Model::Full { bert } => save_model_folder(self.backbone, bert, out),
        }
    }

    /// A plain (non-variable) copy of the adapter as it stands.
    pub fn adapter_snapshot(&self, meta: &Meta) -> anyhow::Result<Adapter> {
        let tensors: BTreeMap<String, Tensor> = self
            .opt
            .slots
            .iter()
            .map(|s| Ok((s.name.clone(), s.var.as_tensor().detach().copy()?)))
            .collect::<anyhow::Result<_>>()?;
        Ok(Adapter::from_tensors(
            meta.clone(),
            tensors,
            &Dims::of(self.backbone),
        )?)
    }

    /// The trained adapter, when training one.
    pub fn adapter(&self) -> Option<&Adapter> {
        match &self.model {
            Model::Adapter { adapter, .. } => Some(adapter),
            Model::Full { .. } => None,
        }
    }

    /// The variables by name (e.g. for gradient checks).
    pub fn vars(&self) -> Vec<(&str, &Var)> {
        self.opt
            .slots
            .iter()
            .map(|s| (s.name.as_str(), &s.var))
            .collect()
    }

    /// Writes a checkpoint folder: parameters and AdamW moments, the config, the logs.
    pub fn checkpoint(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut tensors = BTreeMap::new();
        for s in &self.opt.slots {
            tensors.insert(format!("param/{}", s.name), s.var.as_tensor().detach());
            tensors.insert(format!("m/{}", s.name), s.m.clone());
            tensors.insert(format!("v/{}", s.name), s.v.clone());
        }
        if let Some(best) = &self.best_params {
            for (s, t) in self.opt.slots.iter().zip(best) {
                tensors.insert(format!("best/{}", s.name), t.clone());
            }
        }
        let bytes = format::write_tensors(&BTreeMap::new(), &tensors)?;
        write_atomic(&dir.join("state.safetensors"), &bytes)?;
        let state = CheckpointState {
            config: self.config.clone(),
            target: match &self.target {
                Target::Full => "full".into(),
                Target::Adapter(m) => m.kind.name().into(),
            },
            meta: match &self.target {
                Target::Full => BTreeMap::new(),
                Target::Adapter(m) => m.to_map(),
            },
            backbone: self.backbone.sha256().to_owned(),
            step: self.opt.step,
            steps: self.steps.clone(),
            epochs: self.epochs.clone(),
            evals: self.evals.clone(),
            stale_evals: self.stale_evals,
        };
        write_atomic(&dir.join("state.json"), &serde_json::to_vec_pretty(&state)?)
    }

    /// Continues from a checkpoint written by a run with the same target and config.
    pub fn resume(&mut self, dir: &Path) -> anyhow::Result<()> {
        let state: CheckpointState = serde_json::from_slice(
            &std::fs::read(dir.join("state.json"))
                .with_context(|| format!("reading {}", dir.join("state.json").display()))?,
        )
        .context("checkpoint state.json")?;
        if state.backbone != self.backbone.sha256() {
            bail!(
                "the checkpoint was made on another backbone ({})",
                state.backbone
            );
        }
        let target = match &self.target {
            Target::Full => "full".to_owned(),
            Target::Adapter(m) => m.kind.name().to_owned(),
        };
        if state.target != target {
            bail!("the checkpoint trains {}, this run {target}", state.target);
        }
        if state.config != self.config {
            bail!(
                "the checkpoint's settings differ from this run's: {}",
                serde_json::to_string(&state.config)?
            );
        }
        let bytes = std::fs::read(dir.join("state.safetensors"))
            .with_context(|| format!("reading {}", dir.join("state.safetensors").display()))?;
        let (_, tensors) = format::read_tensors(&bytes, u64::MAX)?;
        for s in &mut self.opt.slots {
            let get = |k: &str| -> anyhow::Result<Tensor> {
                let t = tensors
                    .get(&format!("{k}/{}", s.name))
                    .with_context(|| format!("checkpoint lacks {k}/{}", s.name))?;
                if t.dims() != s.var.dims() {
                    bail!("checkpoint tensor {k}/{} has shape {:?}", s.name, t.dims());
                }
                Ok(t.clone())
            };
            s.var.set(&get("param")?)?;
            s.m = get("m")?;
            s.v = get("v")?;
        }
        self.best_params = if state.evals.iter().any(|e| e.step > 0) {
            Some(
                self.opt
                    .slots
                    .iter()
                    .map(|s| {
                        tensors
                            .get(&format!("best/{}", s.name))
                            .cloned()
                            .with_context(|| format!("checkpoint lacks best/{}", s.name))
                    })
                    .collect::<anyhow::Result<_>>()?,
            )
        } else {
            None
        };
        self.opt.step = state.step;
        self.prior_seconds = state.steps.last().map_or(0.0, |s| s.seconds);
        self.steps = state.steps;
        self.epochs = state.epochs;
        self.evals = state.evals;
        self.stale_evals = state.stale_evals;
        Ok(())
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct CheckpointState {
    config: TrainConfig,
    target: String,
    meta: BTreeMap<String, String>,
    backbone: String,
    step: usize,
    steps: Vec<StepLog>,
    epochs: Vec<EpochLog>,
    #[serde(default)]
    evals: Vec<DevLog>,
    #[serde(default)]
    stale_evals: usize,
}

/// Writes through the registry's atomic write (temp file, fsync, rename, directory
/// fsync), creating the folder first; a bare file name lands in the working directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path.file_name().context("output path has no file name")?;
    aside_adapters::registry::write_atomic(&dir.join(name), bytes)
        .with_context(|| format!("writing {}", path.display()))
}

/// A model folder with the fine-tuned weights and the backbone's other files.
fn save_model_folder(backbone: &Backbone, bert: &Bert, out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let src = &backbone.files().dir;
    for f in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "vocab.txt",
        "modules.json",
        "sentence_bert_config.json",
        "1_Pooling/config.json",
    ] {
        let from = src.join(f);
        if from.is_file() {
            let to = out.join(f);
            if let Some(p) = to.parent() {
                std::fs::create_dir_all(p)?;
            }
            std::fs::copy(&from, &to).with_context(|| format!("copying {}", from.display()))?;
        }
    }
    let tensors: BTreeMap<String, Tensor> = bert
        .named_tensors()?
        .into_iter()
        .map(|(n, t)| (n, t.detach()))
        .collect();
    let mut meta = BTreeMap::new();
    meta.insert("format".to_owned(), "pt".to_owned());
    meta.insert("fine_tuned_from".to_owned(), backbone.sha256().to_owned());
    let bytes = format::write_tensors(&meta, &tensors)?;
    write_atomic(&out.join("model.safetensors"), &bytes)
}
