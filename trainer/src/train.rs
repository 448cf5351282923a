//! The training loop: a model (an adapter of any kind, or every backbone weight),
//! its loss on a batch, AdamW with warm-up and decay, clipping, dev evaluation,
//! checkpoints that `resume` continues from exactly.

use std::collections::{BTreeMap, HashMap};
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
use crate::eval::metrics::{ndcg_at, rank};
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
    /// Stop when the dev nDCG@10 has not improved for this many epochs (0: never).
    pub patience: usize,
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
    /// nDCG@10 of the dev queries over their candidate pools, when there is a dev split.
    pub dev_ndcg10: Option<f64>,
}

/// What the loop reports as it goes.
pub trait Progress {
    fn step(&mut self, log: &StepLog, total: usize);
    fn epoch(&mut self, log: &EpochLog);
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
    best_dev: Option<f64>,
    best_params: Option<Vec<Tensor>>,
    stale_epochs: usize,
    /// Seconds spent training before a resume.
    prior_seconds: f64,
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
        if config.batch_size == 0 || config.epochs == 0 {
            bail!("batch size and epochs must be at least 1");
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
            best_dev: None,
            best_params: None,
            stale_epochs: 0,
            prior_seconds: 0.0,
        })
    }

    /// Trainable parameters.
    pub fn param_count(&self) -> usize {
        self.opt.param_count()
    }

    /// Updates per epoch and in all.
    pub fn plan(&self) -> (usize, usize) {
        let per_epoch = self.data.examples.len().div_ceil(self.config.batch_size);
        let mut total = per_epoch * self.config.epochs;
        if self.config.max_steps > 0 {
            total = total.min(self.config.max_steps);
        }
        (per_epoch, total)
    }

    /// Trains until the plan is done, early stopping fires, or `progress` interrupts.
    pub fn run(&mut self, progress: &mut dyn Progress) -> anyhow::Result<Outcome> {
        let (per_epoch, total) = self.plan();
        let warmup = (self.config.warmup * total as f64).round() as usize;
        let t0 = Instant::now();
        let mut order: Option<(usize, Vec<usize>)> = None;
        while self.opt.step < total {
            if progress.interrupted() {
                return Ok(Outcome::Interrupted);
            }
            let step = self.opt.step;
            let epoch = step / per_epoch;
            if order.as_ref().is_none_or(|(e, _)| *e != epoch) {
                let mut o: Vec<usize> = (0..self.data.examples.len()).collect();
                shuffle(
                    &mut o,
                    &mut Rng::new(self.config.seed.wrapping_add(1 + epoch as u64)),
                );
                order = Some((epoch, o));
            }
            let o = &order.as_ref().expect("order").1;
            let pos = step % per_epoch;
            let batch: Vec<(usize, usize)> = o
                [pos * self.config.batch_size..((pos + 1) * self.config.batch_size).min(o.len())]
                .iter()
                .map(|&i| self.data.examples[i])
                .collect();
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
                let e = self.end_epoch(epoch + 1)?;
                progress.epoch(&e);
                self.epochs.push(e);
                if self.config.patience > 0 && self.stale_epochs >= self.config.patience {
                    self.restore_best()?;
                    return Ok(Outcome::EarlyStopped);
                }
            }
        }
        self.restore_best()?;
        Ok(Outcome::Finished)
    }

    fn end_epoch(&mut self, epoch: usize) -> anyhow::Result<EpochLog> {
        let losses: Vec<f64> = self
            .steps
            .iter()
            .filter(|s| s.epoch == epoch)
            .map(|s| s.loss)
            .collect();
        let mean_loss = losses.iter().sum::<f64>() / losses.len().max(1) as f64;
        let dev_ndcg10 = if self.data.dev.is_empty() {
            None
        } else {
            Some(self.dev_ndcg()?)
        };
        if let Some(d) = dev_ndcg10 {
            if self.best_dev.is_none_or(|b| d > b) {
                self.best_dev = Some(d);
                self.stale_epochs = 0;
                if self.config.patience > 0 {
                    self.best_params = Some(
                        self.opt
                            .slots
                            .iter()
                            .map(|s| s.var.as_tensor().copy())
                            .collect::<candle_core::Result<_>>()?,
                    );
                }
            } else {
                self.stale_epochs += 1;
            }
        }
        Ok(EpochLog {
            epoch,
            step: self.opt.step,
            mean_loss,
            dev_ndcg10,
        })
    }

    /// Early stopping keeps the parameters of the best dev epoch.
    fn restore_best(&mut self) -> anyhow::Result<()> {
        if let Some(best) = self.best_params.take() {
            for (s, t) in self.opt.slots.iter().zip(best) {
                s.var.set(&t)?;
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
        let mut draw = |q: usize, n: usize| -> Vec<usize> {
            let pool = &data.negatives[q];
            let depth = pool.len().min(self.config.negative_depth).max(1);
            let mut picked: Vec<usize> = Vec::with_capacity(n);
            let mut tries = 0;
            while picked.len() < n.min(pool.len()) && tries < 100 * n {
                let c = pool[(rng.next_u64() % depth as u64) as usize];
                if !picked.contains(&c) || depth <= n {
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
                        doc_rows.extend(draw(q, self.config.negatives));
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
                // relevant to it are masked out rather than treated as negatives.
                let mut targets = Vec::with_capacity(batch.len());
                let mut mask = vec![0f32; batch.len() * doc_rows.len()];
                for (i, &(q, _)) in batch.iter().enumerate() {
                    let at = starts[i];
                    targets.push(at as u32);
                    for (j, r) in doc_rows.iter().enumerate() {
                        if j != at && data.positives[q].contains(r) {
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
                    let negs = draw(q, self.config.negatives);
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
        let all = Tensor::cat(&parts, 0)?;
        let mut inverse = vec![0u32; enc.len()];
        for (pos, &i) in order.iter().enumerate() {
            inverse[i] = pos as u32;
        }
        let idx = Tensor::from_vec(inverse, enc.len(), all.device())?;
        Ok(all.index_select(&idx, 0)?)
    }

    /// nDCG@10 of the dev queries, each ranking its own pool (the base model's top
    /// documents plus its positives) with the current parameters.
    pub fn dev_ndcg(&self) -> anyhow::Result<f64> {
        let data = self.data;
        let full;
        let b: &Backbone = match &self.model {
            Model::Full { bert } => {
                full = self.backbone.with_bert(bert.frozen_copy()?, String::new());
                &full
            }
            Model::Adapter { .. } => self.backbone,
        };
        let pool_cfg = self.pooling();
        let opts = EncodeOptions {
            max_length: self.config.doc_max_length,
            batch_size: 32,
        };
        let mut total = 0.0;
        for &q in &data.dev {
            let mut pool: Vec<usize> = data.negatives[q]
                .iter()
                .take(self.config.negative_depth)
                .copied()
                .collect();
            pool.extend(&data.positives[q]);
            let qtext = data.queries[q].1.as_str();
            let scores: Vec<f32> = match self.task {
                Task::Retrieval => {
                    let mk = |t: &'a str, hooks| Item {
                        input: Input::Single(t),
                        hooks,
                        pooling: pool_cfg.pooling,
                        normalize: pool_cfg.normalize,
                    };
                    let mut items = vec![mk(qtext, self.hooks())];
                    items.extend(
                        pool.iter()
                            .map(|&r| mk(data.corpus[r].1.as_str(), self.hooks())),
                    );
                    let v = b.encode(&items, &opts)?;
                    v[1..]
                        .iter()
                        .map(|d| d.iter().zip(&v[0]).map(|(a, c)| a * c).sum())
                        .collect()
                }
                Task::Rerank => {
                    let Model::Adapter { adapter, .. } = &self.model else {
                        bail!("rerank needs an adapter");
                    };
                    let items: Vec<Item<'_>> = pool
                        .iter()
                        .map(|&r| Item {
                            input: Input::Pair(qtext, &data.corpus[r].1),
                            hooks: self.hooks(),
                            pooling: Pooling::Cls,
                            normalize: false,
                        })
                        .collect();
                    let v = b.encode(&items, &opts)?;
                    v.iter()
                        .map(|x| Ok(adapter.head_score(x)?.unwrap_or(0.0)))
                        .collect::<anyhow::Result<_>>()?
                }
            };
            let run = rank(
                pool.iter()
                    .zip(scores)
                    .map(|(&r, s)| (data.corpus[r].0.clone(), s))
                    .collect(),
            );
            let rels: HashMap<String, i32> = data.positives[q]
                .iter()
                .map(|&r| (data.corpus[r].0.clone(), 1))
                .collect();
            total += ndcg_at(&run, &rels, 10);
        }
        Ok(total / data.dev.len() as f64)
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
            best_dev: self.best_dev,
            stale_epochs: self.stale_epochs,
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
        self.opt.step = state.step;
        self.prior_seconds = state.steps.last().map_or(0.0, |s| s.seconds);
        self.steps = state.steps;
        self.epochs = state.epochs;
        self.best_dev = state.best_dev;
        self.stale_epochs = state.stale_epochs;
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
    best_dev: Option<f64>,
    stale_epochs: usize,
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
