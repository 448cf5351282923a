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
use aside_trainer::{EpochLog, Outcome, Progress, StepLog, Target, TrainConfig, TrainSet, Trainer};
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
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    /// Stop after this many updates (0: the epochs decide).
    #[arg(long, default_value_t = 0)]
    pub max_steps: usize,
    /// Queries per step.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Hard negatives per query (retrieval: besides the in-batch ones; rerank: per positive).
    #[arg(long)]
    pub negatives: Option<usize>,
    /// Negatives are drawn from the base model's top N (judged positives excluded).
    #[arg(long, default_value_t = 30)]
    pub negative_depth: usize,
    /// Peak learning rate (default: 2e-5 for full, 1e-3 for adapters).
    #[arg(long)]
    pub lr: Option<f64>,
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
    /// Hold out this many training queries as a dev split (nDCG@10 per epoch).
    #[arg(long, default_value_t = 0)]
    pub dev_queries: usize,
    /// Stop after this many epochs without a better dev nDCG@10, keeping the best.
    #[arg(long, default_value_t = 0)]
    pub patience: usize,
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

struct Bar {
    tty: bool,
    t0: Instant,
    first: Option<usize>,
    stop: Arc<AtomicBool>,
}

impl Progress for Bar {
    fn step(&mut self, log: &StepLog, total: usize) {
        let first = *self.first.get_or_insert(log.step - 1);
        let done = log.step - first;
        let rate = done as f64 / self.t0.elapsed().as_secs_f64().max(1e-9);
        let eta = (total - log.step) as f64 / rate.max(1e-9);
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
        match log.dev_ndcg10 {
            Some(d) => eprintln!(
                "epoch {} done: mean loss {:.4}, dev nDCG@10 {d:.4}",
                log.epoch, log.mean_loss
            ),
            None => eprintln!("epoch {} done: mean loss {:.4}", log.epoch, log.mean_loss),
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
    let config = TrainConfig {
        task: a.task.name().into(),
        epochs: a.epochs,
        max_steps: a.max_steps,
        batch_size: a.batch_size,
        negatives,
        negative_depth: a.negative_depth,
        lr: a
            .lr
            .unwrap_or(if target == Target::Full { 2e-5 } else { 1e-3 }),
        head_lr: a.head_lr,
        weight_decay: a.weight_decay,
        warmup: a.warmup,
        clip: a.clip,
        scale: a.scale,
        query_max_length: a.query_max_length,
        doc_max_length: a.doc_max_length,
        seed: a.seed,
        dev_queries: a.dev_queries,
        patience: a.patience,
    };
    if a.patience > 0 && a.dev_queries == 0 {
        bail!("--patience needs a dev split: set --dev-queries");
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
    let mut data = TrainSet::load(&a.data, &a.split, a.dev_queries, a.seed)?;
    if negatives > 0 || a.dev_queries > 0 {
        let mine_len = a
            .mine_max_length
            .min(backbone.config().max_position_embeddings);
        data.mine_negatives(&backbone, a.negative_depth, mine_len, &a.cache_dir)?;
    }
    let mut trainer = Trainer::new(&backbone, &data, target.clone(), config)?;
    if a.resume {
        trainer
            .resume(&ckpt)
            .with_context(|| format!("resuming from {}", ckpt.display()))?;
        eprintln!("resumed at step {}", trainer.steps.len());
    }
    let (per_epoch, total) = trainer.plan();
    let params = trainer.param_count();
    let base = backbone.bert().parameter_count();
    eprintln!(
        "training {} ({}): {params} trainable parameters ({:.3}% of the backbone), {} examples, {} dev queries, {per_epoch} steps per epoch, {total} steps",
        a.kind,
        a.task,
        100.0 * params as f64 / base as f64,
        data.examples.len(),
        data.dev.len()
    );

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
    let mut bar = Bar {
        tty: std::io::stderr().is_terminal(),
        t0: Instant::now(),
        first: None,
        stop,
    };
    let outcome = if a.checkpoint_every > 0 {
        // Periodic checkpoints need the trainer, which the loop borrows: run in
        // slices of `checkpoint_every` steps instead.
        loop {
            let done = trainer.steps.len();
            let slice_end = (done + a.checkpoint_every).min(total);
            let mut cfg = trainer.config.clone();
            cfg.max_steps = slice_end;
            let saved = std::mem::replace(&mut trainer.config, cfg);
            let r = trainer.run(&mut bar);
            trainer.config = saved;
            let outcome = r?;
            if outcome != Outcome::Finished || slice_end >= total {
                break outcome;
            }
            trainer.checkpoint(&ckpt)?;
        }
    } else {
        trainer.run(&mut bar)?
    };
    if bar.tty {
        eprintln!();
    }
    write_logs(&trainer, &log_dir, &a, &target, base)?;
    if outcome == Outcome::Interrupted {
        trainer.checkpoint(&ckpt)?;
        eprintln!(
            "interrupted at step {}: checkpoint in {}; run the same command with --resume to continue",
            trainer.steps.len(),
            ckpt.display()
        );
        std::process::exit(130);
    }
    trainer.save(&a.output)?;
    if ckpt.exists() {
        std::fs::remove_dir_all(&ckpt).ok();
    }
    let secs = trainer.steps.last().map_or(0.0, |s| s.seconds);
    eprintln!(
        "{}: wrote {} after {} steps in {} ({}); logs in {}",
        match outcome {
            Outcome::EarlyStopped => "stopped early",
            _ => "done",
        },
        a.output.display(),
        trainer.steps.len(),
        clock(secs),
        match &target {
            Target::Full => "a model folder: pass it as --model".to_owned(),
            Target::Adapter(_) => "a native adapter".to_owned(),
        },
        log_dir.display()
    );
    Ok(())
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
    let mut csv = String::from("epoch,step,mean_loss,dev_ndcg10\n");
    for e in &t.epochs {
        csv.push_str(&format!(
            "{},{},{:.6},{}\n",
            e.epoch,
            e.step,
            e.mean_loss,
            e.dev_ndcg10.map_or(String::new(), |d| format!("{d:.6}"))
        ));
    }
    std::fs::write(dir.join("epochs.csv"), csv)?;
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
        "config": t.config,
    });
    std::fs::write(
        dir.join("summary.json"),
        serde_json::to_vec_pretty(&summary)?,
    )?;
    Ok(())
}
