//! `aside train`: an adapter of any kind (or the whole backbone) from a BEIR folder's
//! judgements, with progress, logs, a loss plot, Ctrl-C checkpoints and `--resume`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use aside_adapters::{Kind, Task};
use aside_backbone::LoadOptions;
use aside_trainer::{
    DevLog, EpochLog, Outcome, Progress, StepLog, Target, TrainConfig, TrainSet, Trainer,
};
use clap::Args;

use super::adapter::{meta_from, ShapeArgs};

#[derive(Debug, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub model: super::ModelArgs,
    /// iaa-s, iaa-l, iaa-m, houlsby, lora, bitfit, or full (every backbone weight;
    /// the output is then a model folder).
    #[arg(long)]
    pub kind: String,
    /// retrieval (bi-encoder, contrastive) or rerank (cross-encoder with a head).
    #[arg(long, default_value = "retrieval")]
    pub task: Task,
    #[command(flatten)]
    pub shape: ShapeArgs,
    /// BEIR folder: corpus.jsonl, queries.jsonl, qrels/{split}.tsv.
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, default_value = "train")]
    pub split: String,
    /// Output: the adapter file (or, for `full`, the model folder).
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    /// Passes over the training queries (default: as many as --max-steps allows).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Stop after this many updates (default: 150 when --epochs is not given; with
    /// --epochs, the epochs decide).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Queries per step.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Hard negatives per query (retrieval: besides the in-batch ones; rerank: per positive).
    #[arg(long)]
    pub negatives: Option<usize>,
    /// Negatives are drawn from the base model's top N (judged positives excluded).
    #[arg(long, default_value_t = 30)]
    pub negative_depth: usize,
    /// Peak learning rate (default: 2e-5 for full, 1e-3 for adapters), or `auto`:
    /// short runs at three rates (adapters 1e-3, 3e-3, 1e-2; full 1e-5, 2e-5, 5e-5),
    /// each scored on the dev split, and the best one trains.
    #[arg(long, value_parser = parse_lr)]
    pub lr: Option<Lr>,
    /// Rerank: peak learning rate of the head (default: the same as --lr).
    #[arg(long)]
    pub head_lr: Option<f64>,
    #[arg(long, default_value_t = 0.01)]
    pub weight_decay: f64,
    /// Fraction of the steps spent warming up (then linear decay to 0).
    #[arg(long, default_value_t = 0.1)]
    pub warmup: f64,
    /// Clip the global gradient norm to this (0: off).
    #[arg(long, default_value_t = 1.0)]
    pub clip: f64,
    /// Retrieval: similarity scale, 1/temperature.
    #[arg(long, default_value_t = 20.0)]
    pub scale: f64,
    #[arg(long, default_value_t = 64)]
    pub query_max_length: usize,
    /// Documents (retrieval) or query+document pairs (rerank), in tokens.
    #[arg(long, default_value_t = 128)]
    pub doc_max_length: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Training queries held out as the dev split (seeded; default: a tenth, at most
    /// 100, none below 20 queries; 0: no dev split, nothing checks the result).
    #[arg(long)]
    pub dev_queries: Option<usize>,
    /// Evaluate on the dev split every N steps (default: five times in the run).
    #[arg(long)]
    pub eval_every: Option<usize>,
    /// The dev pool: each dev query's base-model top N plus its judged documents
    /// (rerank: the base retriever's top N are re-ranked).
    #[arg(long, default_value_t = 20)]
    pub dev_depth: usize,
    /// Write the adapter even when no checkpoint beat the base model on the dev split.
    #[arg(long)]
    pub keep_worse: bool,
    /// Stop after this many dev evaluations without a better nDCG@10, keeping the best.
    #[arg(long, default_value_t = 0)]
    pub patience: usize,
    /// An epoch visits each training query once with one of its positives (queries),
    /// or every judged pair once (pairs: queries with many positives dominate).
    #[arg(long, default_value = "queries")]
    pub sample: aside_trainer::Sample,
    /// Mined negatives this like a positive (base-model cosine of the documents), or
    /// with its text, are not drawn: likely copies of it (`off` to keep them).
    #[arg(long, default_value = "0.95", value_parser = off_or_positive)]
    pub near_duplicate: OffOr,
    /// Positive-aware margin: negatives the base model scores above this times the
    /// positive's score are not drawn, as likely unjudged relevant ones (default
    /// off: on SciFact 0.95 took every hard negative from 18% of the pairs and
    /// lowered test nDCG@10).
    #[arg(long, default_value = "off", value_parser = off_or_positive)]
    pub margin: OffOr,
    /// In-batch documents with the text of one judged relevant to the query are
    /// masked out, not counted as its negatives.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub mask_same_text: bool,
    /// The lowest judgement grade that trains as a positive (lower grades are
    /// still never drawn as negatives).
    #[arg(long, default_value_t = 1)]
    pub min_relevance: i32,
    /// Documents are cut at this many tokens (at most the model's positions) when
    /// the base model mines negatives (the cache is shared by runs that agree on it).
    #[arg(long, default_value_t = 128)]
    pub mine_max_length: usize,
    /// Where mined negatives are cached.
    #[arg(long, default_value = ".aside-cache")]
    pub cache_dir: PathBuf,
    /// Logs (loss.csv, epochs.csv, loss.png, summary.json) and checkpoints
    /// (default: the output path with `.train` appended).
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
    /// Also write a checkpoint every N steps (0: only on Ctrl-C).
    #[arg(long, default_value_t = 0)]
    pub checkpoint_every: usize,
    /// Continue from the checkpoint in the log folder (same settings required).
    #[arg(long)]
    pub resume: bool,
    /// Report the first step whose 10-step mean loss is at or below this.
    #[arg(long)]
    pub target_loss: Option<f64>,
    /// Plot title (default: the kind and learning rate).
    #[arg(long)]
    pub title: Option<String>,
}

/// The default step budget: minutes, not hours, on a small machine.
pub const DEFAULT_MAX_STEPS: usize = 150;

/// `--lr`: a number or `auto`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Lr {
    Auto,
    Value(f64),
}

fn parse_lr(s: &str) -> Result<Lr, String> {
    if s == "auto" {
        return Ok(Lr::Auto);
    }
    match s.parse::<f64>() {
        Ok(x) if x > 0.0 && x.is_finite() => Ok(Lr::Value(x)),
        _ => Err(format!("`{s}`: expected a positive number or `auto`")),
    }
}

/// The rates `--lr auto` tries: adapters, then full fine-tuning.
pub const LR_CANDIDATES: [[f64; 3]; 2] = [[1e-3, 3e-3, 1e-2], [1e-5, 2e-5, 5e-5]];

/// A probe's progress: nothing per step, Ctrl-C still honoured.
struct Probe(Arc<AtomicBool>);

impl Progress for Probe {
    fn step(&mut self, _log: &StepLog, _total: usize) {}
    fn epoch(&mut self, _log: &EpochLog) {}
    fn interrupted(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// A threshold that can be turned off.
#[derive(Debug, Clone, Copy)]
pub struct OffOr(pub Option<f32>);

/// `off`, or a positive number.
fn off_or_positive(s: &str) -> Result<OffOr, String> {
    if s == "off" {
        return Ok(OffOr(None));
    }
    match s.parse::<f32>() {
        Ok(x) if x > 0.0 && x.is_finite() => Ok(OffOr(Some(x))),
        _ => Err(format!("`{s}`: expected a positive number or `off`")),
    }
}

struct Bar {
    tty: bool,
    t0: Instant,
    first: Option<usize>,
    stop: Arc<AtomicBool>,
    /// Dev evaluations still to come after the base model's, and the base's seconds.
    evals_left: usize,
    eval_seconds: f64,
    /// Seconds the steps before a resume took.
    prior_seconds: f64,
}

impl Progress for Bar {
    fn step(&mut self, log: &StepLog, total: usize) {
        let first = *self.first.get_or_insert_with(|| {
            // The loop's clock, less what earlier runs (before a resume) spent.
            let spent = (log.seconds - self.prior_seconds).max(0.0);
            self.t0 = Instant::now() - std::time::Duration::from_secs_f64(spent);
            log.step - 1
        });
        let done = log.step - first;
        let rate = done as f64 / self.t0.elapsed().as_secs_f64().max(1e-9);
        let eta =
            (total - log.step) as f64 / rate.max(1e-9) + self.evals_left as f64 * self.eval_seconds;
        if done == 1 {
            // The first step measured: the plan's time, before the run goes on.
            let step_s = self.t0.elapsed().as_secs_f64();
            let dev = if self.evals_left > 0 {
                format!(
                    " + {} dev evaluations × {:.0} s",
                    self.evals_left, self.eval_seconds
                )
            } else {
                String::new()
            };
            if self.tty {
                eprintln!();
            }
            eprintln!(
                "plan: {} more steps × {step_s:.1} s (the first step){dev} ≈ {} in all",
                total - log.step,
                clock(eta)
            );
        }
        let msg = format!(
            "step {}/{total}  epoch {}  loss {:.4}  lr {:.2e}  |g| {:.3}  {rate:.2} steps/s  eta {}",
            log.step,
            log.epoch,
            log.loss,
            log.lr,
            log.grad_norm,
            clock(eta)
        );
        if self.tty {
            eprint!("\r{msg}\x1b[K");
            std::io::stderr().flush().ok();
        } else if log.step.is_multiple_of(10) || log.step == total || log.step == 1 {
            eprintln!("{msg}");
        }
    }

    fn epoch(&mut self, log: &EpochLog) {
        if self.tty {
            eprintln!();
        }
        eprintln!("epoch {} done: mean loss {:.4}", log.epoch, log.mean_loss);
    }

    fn dev(&mut self, log: &DevLog) {
        if self.tty {
            eprintln!();
        }
        if log.step == 0 {
            self.eval_seconds = log.seconds;
            eprintln!(
                "dev nDCG@10 of the base model: {:.4} ({:.0} s)",
                log.ndcg10, log.seconds
            );
        } else {
            self.evals_left = self.evals_left.saturating_sub(1);
            eprintln!(
                "step {}: dev nDCG@10 {:.4} (best {:.4}{})",
                log.step,
                log.ndcg10,
                log.best,
                if log.ndcg10 >= log.best { ", kept" } else { "" }
            );
        }
    }

    fn interrupted(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

fn clock(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    format!("{}:{:02}", s / 60, s % 60)
}

pub fn run(a: TrainArgs) -> anyhow::Result<()> {
    if a.model.device != "cpu" {
        anyhow::bail!(
            "--device {}: training runs on the CPU (serve the trained adapter on the GPU)",
            a.model.device
        );
    }
    let backbone = a.model.load(&LoadOptions::default())?;
    let target = if a.kind == "full" {
        Target::Full
    } else {
        let kind: Kind = a
            .kind
            .parse()
            .map_err(|e| anyhow::anyhow!("--kind: {e} (or `full`)"))?;
        Target::Adapter(meta_from(kind, a.task, &a.shape, &backbone)?)
    };
    let negatives = a
        .negatives
        .unwrap_or(if a.task == Task::Rerank { 7 } else { 1 });
    let (epochs, max_steps) = match (a.epochs, a.max_steps) {
        (None, None) => (0, DEFAULT_MAX_STEPS),
        (e, m) => (e.unwrap_or(0), m.unwrap_or(0)),
    };
    if epochs == 0 && max_steps == 0 {
        bail!("--epochs 0 needs --max-steps (or give a number of epochs)");
    }
    if a.dev_depth == 0 {
        bail!("--dev-depth must be at least 1");
    }
    if a.eval_every == Some(0) {
        bail!("--eval-every must be at least 1");
    }
    let log_dir = a.log_dir.clone().unwrap_or_else(|| {
        let mut p = a.output.clone().into_os_string();
        p.push(".train");
        PathBuf::from(p)
    });
    let ckpt = log_dir.join("checkpoint");
    if !a.resume && ckpt.join("state.json").is_file() {
        bail!(
            "{} holds a checkpoint of an unfinished run: pass --resume to continue it, or remove it",
            ckpt.display()
        );
    }
    let mut data = TrainSet::load(
        &a.data,
        &a.split,
        &aside_trainer::data::SplitOptions {
            dev_queries: a.dev_queries,
            min_relevance: a.min_relevance,
            seed: a.seed,
        },
    )?;
    if a.patience > 0 && data.dev.is_empty() {
        bail!("--patience needs a dev split: set --dev-queries");
    }
    let mine_len = a
        .mine_max_length
        .min(backbone.config().max_position_embeddings);
    data.mine_negatives(
        &backbone,
        a.negative_depth.max(a.dev_depth),
        mine_len,
        &a.cache_dir,
    )?;
    let mut config = TrainConfig {
        task: a.task.name().into(),
        epochs,
        max_steps,
        batch_size: a.batch_size,
        negatives,
        negative_depth: a.negative_depth,
        lr: match a.lr {
            Some(Lr::Value(x)) => x,
            _ if target == Target::Full => 2e-5,
            _ => 1e-3,
        },
        head_lr: a.head_lr,
        weight_decay: a.weight_decay,
        warmup: a.warmup,
        clip: a.clip,
        scale: a.scale,
        query_max_length: a.query_max_length,
        doc_max_length: a.doc_max_length,
        seed: a.seed,
        dev_queries: data.dev.len(),
        patience: a.patience,
        eval_every: 0,
        dev_depth: a.dev_depth,
        sample: a.sample,
        near_duplicate: a.near_duplicate.0,
        margin: a.margin.0,
        mask_same_text: a.mask_same_text,
        min_relevance: a.min_relevance,
    };
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        // A first Ctrl-C finishes the step and writes a checkpoint; a second quits.
        ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!(
                "\ninterrupt: writing a checkpoint after this step (Ctrl-C again to quit now)"
            );
        })
        .context("installing the Ctrl-C handler")?;
    }
    let mut lr_search: Vec<(f64, f64)> = Vec::new();
    let mut base_eval: Option<DevLog> = None;
    if a.lr == Some(Lr::Auto) {
        if data.dev.is_empty() {
            bail!("--lr auto scores each rate on the dev split: it needs one (--dev-queries)");
        }
        let saved = ckpt.join("state.json");
        if a.resume && saved.is_file() {
            // The rate was chosen before the interruption: the checkpoint knows it.
            let state: serde_json::Value = serde_json::from_slice(&std::fs::read(&saved)?)?;
            config.lr = state["config"]["lr"]
                .as_f64()
                .context("the checkpoint has no learning rate")?;
        } else {
            let probe_total = Trainer::new(&backbone, &data, target.clone(), config.clone())?
                .plan()
                .1;
            let probe = (probe_total / 5).clamp(10, 40);
            let rates = LR_CANDIDATES[usize::from(target == Target::Full)];
            eprintln!(
                "--lr auto: {probe} steps at each of {} on the dev split",
                rates.map(|r| format!("{r:.0e}")).join(", ")
            );
            for lr in rates {
                let mut cfg = config.clone();
                cfg.lr = lr;
                cfg.epochs = 0;
                cfg.max_steps = probe;
                cfg.eval_every = probe;
                cfg.patience = 0;
                let mut t = Trainer::new(&backbone, &data, target.clone(), cfg)?;
                if let Some(b) = &base_eval {
                    t.evals.push(b.clone());
                }
                let started = Instant::now();
                if t.run(&mut Probe(stop.clone()))? == Outcome::Interrupted {
                    eprintln!("interrupted while choosing the learning rate: nothing written");
                    std::process::exit(130);
                }
                let d = t.evals.last().expect("evaluation").ndcg10;
                if base_eval.is_none() {
                    eprintln!("dev nDCG@10 of the base model: {:.4}", t.evals[0].ndcg10);
                    base_eval = Some(t.evals[0].clone());
                }
                eprintln!(
                    "--lr auto: {lr:.0e} → dev nDCG@10 {d:.4} after {probe} steps ({:.0} s)",
                    started.elapsed().as_secs_f64()
                );
                lr_search.push((lr, d));
            }
            let (best, _) =
                lr_search
                    .iter()
                    .copied()
                    .fold((config.lr, f64::NEG_INFINITY), |b, x| {
                        if x.1 > b.1 {
                            x
                        } else {
                            b
                        }
                    });
            config.lr = best;
            eprintln!("--lr auto: training at {best:.0e}");
        }
    }
    let mut trainer = Trainer::new(&backbone, &data, target.clone(), config)?;
    let (per_epoch, total) = trainer.plan();
    trainer.config.eval_every = a.eval_every.unwrap_or(total.div_ceil(5).max(1));
    if a.resume {
        trainer
            .resume(&ckpt)
            .with_context(|| format!("resuming from {}", ckpt.display()))?;
        eprintln!("resumed at step {}", trainer.steps.len());
    }
    if a.checkpoint_every > 0 {
        trainer.checkpoint_every = Some((a.checkpoint_every, ckpt.clone()));
    }
    if let (Some(b), true) = (base_eval, trainer.evals.is_empty()) {
        // The probes scored the base model already.
        trainer.evals.push(b);
    }
    let params = trainer.param_count();
    let base = backbone.bert().parameter_count();
    let pool = data.dev_pool(a.dev_depth).len();
    let evals = trainer.eval_steps();
    eprintln!(
        "training {} ({}): {params} trainable parameters ({:.3}% of the backbone); {} training queries ({} judged pairs), {per_epoch} steps per epoch, {total} steps ({:.1} epochs){}",
        a.kind,
        a.task,
        100.0 * params as f64 / base as f64,
        data.train_queries.len(),
        data.examples.len(),
        total as f64 / per_epoch as f64,
        if a.epochs.is_none() && a.max_steps.is_none() {
            " — the default budget; --max-steps or --epochs for another".to_owned()
        } else {
            String::new()
        }
    );
    if data.dev.is_empty() {
        eprintln!(
            "warning: no dev split ({}): nothing checks that the result beats the base model",
            if a.dev_queries == Some(0) {
                "--dev-queries 0".to_owned()
            } else {
                format!(
                    "{} training queries, fewer than {}",
                    data.train_queries.len(),
                    aside_trainer::data::DEV_MIN_QUERIES
                )
            }
        );
    } else {
        eprintln!(
            "dev split: {} queries held out, ranking {pool} documents (each one's base top {} and judged ones), evaluated at steps {}",
            data.dev.len(),
            a.dev_depth,
            short_list(&evals)
        );
        data.write_dev_beir(&log_dir.join("dev"), a.dev_depth)?;
    }

    let done_before = trainer.steps.len();
    let mut bar = Bar {
        tty: std::io::stderr().is_terminal(),
        t0: Instant::now(),
        first: None,
        stop,
        evals_left: evals.iter().filter(|&&s| s > done_before).count(),
        eval_seconds: trainer.evals.first().map_or(0.0, |e| e.seconds),
        prior_seconds: trainer.steps.last().map_or(0.0, |s| s.seconds),
    };
    let outcome = match trainer.run(&mut bar) {
        Ok(o) => o,
        Err(e) => {
            if bar.tty {
                eprintln!();
            }
            // The steps done are not thrown away with the run: a checkpoint of them
            // (as on Ctrl-C) lets `--resume` continue once the cause is fixed.
            if trainer.steps.len() > done_before {
                match trainer.checkpoint(&ckpt) {
                    Ok(()) => {
                        return Err(e.context(format!(
                            "training stopped after step {}; the steps done are kept as a checkpoint in {} (the same command with --resume continues from there)",
                            trainer.steps.len(),
                            ckpt.display()
                        )))
                    }
                    Err(c) => eprintln!("no checkpoint could be written either: {c:#}"),
                }
            }
            return Err(e);
        }
    };
    if bar.tty {
        eprintln!();
    }
    let verdict = trainer.verdict();
    let refused = verdict.is_some_and(|v| !v.improved()) && !a.keep_worse;
    let written = outcome != Outcome::Interrupted && !refused;
    write_logs(&trainer, &log_dir, &a, &target, base, written, &lr_search)?;
    if outcome == Outcome::Interrupted {
        trainer.checkpoint(&ckpt)?;
        eprintln!(
            "interrupted at step {}: checkpoint in {}; run the same command with --resume to continue",
            trainer.steps.len(),
            ckpt.display()
        );
        std::process::exit(130);
    }
    if ckpt.exists() {
        std::fs::remove_dir_all(&ckpt).ok();
    }
    let secs = trainer.steps.last().map_or(0.0, |s| s.seconds);
    let dev_line = verdict.map_or(String::new(), |v| {
        if v.improved() {
            format!(
                "; dev nDCG@10 {:.4} → {:.4} (+{:.4}, step {})",
                v.base,
                v.best,
                v.best - v.base,
                v.best_step
            )
        } else {
            format!(
                "; dev nDCG@10 base {:.4}, best checkpoint {:.4} (step {})",
                v.base,
                v.best,
                trainer.kept_step()
            )
        }
    });
    if refused {
        let v = verdict.expect("verdict");
        eprintln!(
            "no checkpoint beat the base model on the dev split (base {:.4}, best {:.4} at step {}): no adapter written{}. \
             Training made this task worse: try a lower --lr, fewer steps, or check the judgements; --keep-worse writes it anyway",
            v.base,
            v.best,
            trainer.kept_step(),
            if a.output.exists() {
                format!(" ({} is left as it was)", a.output.display())
            } else {
                String::new()
            }
        );
        std::process::exit(EXIT_NOT_BETTER);
    }
    trainer.save(&a.output)?;
    eprintln!(
        "{}: wrote {} ({}) after {} steps in {}{dev_line}; logs in {}",
        match outcome {
            Outcome::EarlyStopped => "stopped early",
            _ => "done",
        },
        a.output.display(),
        match &target {
            Target::Full => "a model folder: pass it as --model".to_owned(),
            Target::Adapter(_) => "a native adapter".to_owned(),
        },
        trainer.steps.len(),
        clock(secs),
        log_dir.display()
    );
    if verdict.is_some_and(|v| !v.improved()) {
        eprintln!("warning: --keep-worse: the adapter written scores below the base model on the dev split");
    }
    Ok(())
}

/// The exit status of a run whose checkpoints all scored below the base model.
pub const EXIT_NOT_BETTER: i32 = 3;

/// `1, 2, 3` or `30, 60, …, 150`.
fn short_list(xs: &[usize]) -> String {
    if xs.len() <= 6 {
        return xs
            .iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(", ");
    }
    format!("{}, {}, …, {}", xs[0], xs[1], xs[xs.len() - 1])
}

/// First step whose trailing 10-step mean loss is at or below `target`.
pub fn steps_to_loss(steps: &[StepLog], target: f64) -> Option<usize> {
    (0..steps.len()).find_map(|i| {
        let from = i.saturating_sub(9);
        let w = &steps[from..=i];
        let mean = w.iter().map(|s| s.loss).sum::<f64>() / w.len() as f64;
        (i >= 9 && mean <= target).then_some(steps[i].step)
    })
}

fn write_logs(
    t: &Trainer<'_>,
    dir: &Path,
    a: &TrainArgs,
    target: &Target,
    base: usize,
    written: bool,
    lr_search: &[(f64, f64)],
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut csv = String::from("step,epoch,loss,lr,grad_norm,seconds\n");
    for s in &t.steps {
        csv.push_str(&format!(
            "{},{},{:.6},{:.6e},{:.6},{:.3}\n",
            s.step, s.epoch, s.loss, s.lr, s.grad_norm, s.seconds
        ));
    }
    std::fs::write(dir.join("loss.csv"), csv)?;
    let mut csv = String::from("epoch,step,mean_loss\n");
    for e in &t.epochs {
        csv.push_str(&format!("{},{},{:.6}\n", e.epoch, e.step, e.mean_loss));
    }
    std::fs::write(dir.join("epochs.csv"), csv)?;
    if !t.evals.is_empty() {
        let mut csv = String::from("step,dev_ndcg10,seconds\n");
        for e in &t.evals {
            csv.push_str(&format!("{},{:.6},{:.1}\n", e.step, e.ndcg10, e.seconds));
        }
        std::fs::write(dir.join("dev.csv"), csv)?;
    }
    let title = a
        .title
        .clone()
        .unwrap_or_else(|| format!("{} {} lr {:.0e}", a.kind, t.config.task, t.config.lr));
    let series = vec![aside_trainer::plot::Series {
        label: title.clone(),
        points: t.steps.iter().map(|s| (s.step as f64, s.loss)).collect(),
    }];
    aside_trainer::plot::line_chart(&dir.join("loss.png"), &title, "step", "loss", &series, 10)?;
    let n = t.steps.len().min(10);
    let final_loss = t.steps[t.steps.len() - n..]
        .iter()
        .map(|s| s.loss)
        .sum::<f64>()
        / n.max(1) as f64;
    let target_name = match target {
        Target::Full => "full".to_owned(),
        Target::Adapter(m) => m.kind.name().to_owned(),
    };
    let summary = serde_json::json!({
        "kind": target_name,
        "task": t.config.task,
        "trainable_params": t.param_count(),
        "backbone_params": base,
        "steps": t.steps.len(),
        "seconds": t.steps.last().map_or(0.0, |s| s.seconds),
        "final_loss_mean10": final_loss,
        "target_loss": a.target_loss,
        "steps_to_target_loss": a.target_loss.and_then(|x| steps_to_loss(&t.steps, x)),
        "epochs": t.epochs,
        "dev": t.verdict().map(|v| serde_json::json!({
            "queries": t.config.dev_queries,
            "base_ndcg10": v.base,
            "best_ndcg10": v.best,
            "best_step": v.best_step,
            "improved": v.improved(),
            "evaluations": t.evals,
        })),
        "kept_step": t.kept_step(),
        "lr_search": lr_search
            .iter()
            .map(|(lr, d)| serde_json::json!({"lr": lr, "dev_ndcg10": d}))
            .collect::<Vec<_>>(),
        "written": written,
        "config": t.config,
    });
    std::fs::write(
        dir.join("summary.json"),
        serde_json::to_vec_pretty(&summary)?,
    )?;
    Ok(())
}
