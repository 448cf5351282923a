//! Short real training runs on the tiny BERT and a synthetic BEIR folder: the loss
//! falls, only adapter parameters change, checkpoints resume exactly, full
//! fine-tuning writes a loadable model folder, rerank and early stopping work.

use aside_adapters::{format, Dims, Kind, Meta, Task};
use aside_backbone::testing::TinyBert;
use aside_backbone::{Backbone, EncodeOptions, LoadOptions};
use aside_trainer::testing::write_synthetic_beir;
use aside_trainer::{EpochLog, Outcome, Progress, StepLog, Target, TrainConfig, TrainSet, Trainer};

struct Quiet {
    stop_after: Option<usize>,
    seen: usize,
}

impl Progress for Quiet {
    fn step(&mut self, _log: &StepLog, _total: usize) {
        self.seen += 1;
    }
    fn epoch(&mut self, _log: &EpochLog) {}
    fn interrupted(&self) -> bool {
        self.stop_after.is_some_and(|n| self.seen >= n)
    }
}

fn quiet() -> Quiet {
    Quiet {
        stop_after: None,
        seen: 0,
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    backbone: Backbone,
    data: std::path::PathBuf,
    cache: std::path::PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    TinyBert::default()
        .write(&dir.path().join("model"))
        .unwrap();
    let backbone = Backbone::load(&dir.path().join("model"), &LoadOptions::default()).unwrap();
    write_synthetic_beir(&dir.path().join("data"), 24, 3).unwrap();
    Fixture {
        data: dir.path().join("data"),
        cache: dir.path().join("cache"),
        _dir: dir,
        backbone,
    }
}

fn config(task: Task, lr: f64) -> TrainConfig {
    TrainConfig {
        task: task.name().into(),
        epochs: 8,
        max_steps: 0,
        batch_size: 6,
        negatives: 1,
        negative_depth: 5,
        lr,
        head_lr: None,
        weight_decay: 0.0,
        warmup: 0.1,
        clip: 1.0,
        scale: 20.0,
        query_max_length: 16,
        doc_max_length: 32,
        seed: 1,
        dev_queries: 0,
        patience: 0,
    }
}

fn set(f: &Fixture, dev: usize) -> TrainSet {
    let mut s = TrainSet::load(&f.data, "train", dev, 1).unwrap();
    s.mine_negatives(&f.backbone, 5, 32, &f.cache).unwrap();
    s
}

fn meta(kind: Kind, r: Option<usize>, ar: Option<usize>) -> Meta {
    let mut m = Meta::new(kind, Task::Retrieval);
    m.r = r;
    m.ar = ar;
    if kind == Kind::Lora {
        m.lora_targets = vec![aside_backbone::Site::Query, aside_backbone::Site::Value];
    }
    m
}

fn mean(xs: &[StepLog]) -> f64 {
    xs.iter().map(|s| s.loss).sum::<f64>() / xs.len() as f64
}

#[test]
fn each_kind_lowers_the_loss_and_leaves_the_backbone_alone() {
    let f = fixture();
    let data = set(&f, 0);
    let before = f.backbone.bert().named_tensors().unwrap();
    for m in [
        meta(Kind::IaaL, Some(4), Some(8)),
        meta(Kind::IaaS, Some(4), Some(4)),
        meta(Kind::IaaM, Some(4), Some(16)),
        meta(Kind::Houlsby, Some(8), None),
        meta(Kind::Lora, Some(8), None),
        meta(Kind::Bitfit, None, None),
    ] {
        let kind = m.kind;
        let mut t = Trainer::new(
            &f.backbone,
            &data,
            Target::Adapter(m),
            config(Task::Retrieval, 1e-2),
        )
        .unwrap();
        let init: Vec<_> = t
            .vars()
            .iter()
            .map(|(_, v)| v.as_tensor().copy().unwrap())
            .collect();
        assert_eq!(t.run(&mut quiet()).unwrap(), Outcome::Finished);
        let n = t.steps.len();
        assert_eq!(n, 24, "{kind}: 3 steps per epoch × 8 epochs");
        let (first, last) = (mean(&t.steps[..6]), mean(&t.steps[n - 6..]));
        assert!(last < 0.8 * first, "{kind}: loss {first:.4} -> {last:.4}");
        let changed = t
            .vars()
            .iter()
            .zip(&init)
            .filter(|((_, v), i)| {
                let d = (v.as_tensor() - *i)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap();
                d.to_scalar::<f32>().unwrap() > 0.0
            })
            .count();
        assert!(
            changed * 2 >= init.len(),
            "{kind}: only {changed} of {} tensors moved",
            init.len()
        );
        // The saved file is a valid adapter of this backbone.
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("a.safetensors");
        t.save(&out).unwrap();
        let a = format::read_adapter(
            &std::fs::read(&out).unwrap(),
            &Dims::of(&f.backbone),
            u64::MAX,
        )
        .unwrap();
        assert_eq!(a.kind(), kind);
        assert_eq!(a.meta().backbone.as_deref(), Some(f.backbone.sha256()));
    }
    for ((n, a), (_, b)) in before
        .iter()
        .zip(f.backbone.bert().named_tensors().unwrap())
    {
        let d = (a - &b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(d, 0.0, "backbone tensor {n} changed");
    }
}

#[test]
fn a_resumed_run_ends_exactly_where_an_uninterrupted_one_does() {
    let f = fixture();
    let data = set(&f, 0);
    let target = Target::Adapter(meta(Kind::IaaL, Some(4), Some(4)));
    let mut cfg = config(Task::Retrieval, 5e-3);
    cfg.epochs = 3;
    let mut straight = Trainer::new(&f.backbone, &data, target.clone(), cfg.clone()).unwrap();
    straight.run(&mut quiet()).unwrap();

    let ck = tempfile::tempdir().unwrap();
    let mut first = Trainer::new(&f.backbone, &data, target.clone(), cfg.clone()).unwrap();
    let mut stop = Quiet {
        stop_after: Some(4),
        seen: 0,
    };
    assert_eq!(first.run(&mut stop).unwrap(), Outcome::Interrupted);
    assert_eq!(first.steps.len(), 4);
    first.checkpoint(ck.path()).unwrap();
    drop(first);

    let mut resumed = Trainer::new(&f.backbone, &data, target.clone(), cfg.clone()).unwrap();
    resumed.resume(ck.path()).unwrap();
    assert_eq!(resumed.run(&mut quiet()).unwrap(), Outcome::Finished);
    assert_eq!(resumed.steps.len(), straight.steps.len());
    for (a, b) in straight.steps.iter().zip(&resumed.steps) {
        assert_eq!(a.loss, b.loss, "step {}", a.step);
    }
    for ((n, a), (_, b)) in straight.vars().iter().zip(resumed.vars()) {
        let d = (a.as_tensor() - b.as_tensor())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert_eq!(
            d.to_scalar::<f32>().unwrap(),
            0.0,
            "{n} differs after resume"
        );
    }

    // A checkpoint of other settings is refused, naming the difference.
    let mut other = cfg.clone();
    other.lr = 1e-1;
    let mut t = Trainer::new(&f.backbone, &data, target, other).unwrap();
    let err = t.resume(ck.path()).unwrap_err().to_string();
    assert!(err.contains("settings differ"), "{err}");
}

#[test]
fn full_fine_tuning_writes_a_model_folder_that_loads() {
    let f = fixture();
    let data = set(&f, 0);
    let mut cfg = config(Task::Retrieval, 1e-3);
    cfg.epochs = 2;
    let mut t = Trainer::new(&f.backbone, &data, Target::Full, cfg).unwrap();
    assert!(t.param_count() >= f.backbone.bert().parameter_count());
    t.run(&mut quiet()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    t.save(&dir.path().join("m")).unwrap();
    let tuned = Backbone::load(&dir.path().join("m"), &LoadOptions::default()).unwrap();
    assert_ne!(tuned.sha256(), f.backbone.sha256());
    let opts = EncodeOptions {
        max_length: 32,
        batch_size: 4,
    };
    let a = f.backbone.embed(&["the cell"], &opts).unwrap();
    let b = tuned.embed(&["the cell"], &opts).unwrap();
    let diff: f32 = a[0].iter().zip(&b[0]).map(|(x, y)| (x - y).abs()).sum();
    assert!(diff > 1e-4, "fine-tuning changed nothing");
    // Rerank needs a head, which only adapters carry.
    let err = Trainer::new(&f.backbone, &data, Target::Full, config(Task::Rerank, 1e-3))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("retrieval models only"), "{err}");
}

#[test]
fn rerank_training_lowers_the_cross_entropy_and_keeps_a_head() {
    let f = fixture();
    let data = set(&f, 0);
    let mut m = meta(Kind::IaaL, Some(4), Some(8));
    m.task = Task::Rerank;
    let mut cfg = config(Task::Rerank, 1e-2);
    cfg.negatives = 3;
    let mut t = Trainer::new(&f.backbone, &data, Target::Adapter(m), cfg).unwrap();
    t.run(&mut quiet()).unwrap();
    let n = t.steps.len();
    let (first, last) = (mean(&t.steps[..6]), mean(&t.steps[n - 6..]));
    assert!(last < 0.8 * first, "rerank loss {first:.4} -> {last:.4}");
    let a = t.adapter().unwrap();
    assert_eq!(a.task(), Task::Rerank);
    assert!(a.tensors().contains_key("head.weight"));
}

#[test]
fn a_head_learning_rate_moves_the_head_further_and_only_for_rerank() {
    let f = fixture();
    let data = set(&f, 0);
    let mut m = meta(Kind::IaaL, Some(4), Some(8));
    m.task = Task::Rerank;
    let moved = |head_lr: Option<f64>| {
        let mut cfg = config(Task::Rerank, 1e-3);
        cfg.negatives = 3;
        cfg.max_steps = 4;
        cfg.head_lr = head_lr;
        let mut t = Trainer::new(&f.backbone, &data, Target::Adapter(m.clone()), cfg).unwrap();
        let start = t.adapter().unwrap().tensors()["head.weight"]
            .copy()
            .unwrap();
        t.run(&mut quiet()).unwrap();
        let end = t.adapter().unwrap().tensors()["head.weight"].clone();
        (end - start)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let (same, faster) = (moved(None), moved(Some(3e-2)));
    assert!(
        faster > 5.0 * same,
        "head moved {same} at lr, {faster} at 30x lr"
    );
    let mut cfg = config(Task::Retrieval, 1e-3);
    cfg.head_lr = Some(1e-2);
    let err = Trainer::new(
        &f.backbone,
        &data,
        Target::Adapter(meta(Kind::IaaL, Some(4), Some(8))),
        cfg,
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("rerank"), "{err}");
}

#[test]
fn a_dev_split_reports_ndcg_per_epoch_and_early_stopping_keeps_the_best() {
    let f = fixture();
    let data = set(&f, 4);
    assert_eq!(data.dev.len(), 4);
    let dev_ids: Vec<usize> = data.dev.clone();
    assert!(data.examples.iter().all(|(q, _)| !dev_ids.contains(q)));
    let mut cfg = config(Task::Retrieval, 1e-2);
    cfg.dev_queries = 4;
    cfg.patience = 1;
    cfg.epochs = 6;
    let mut t = Trainer::new(
        &f.backbone,
        &data,
        Target::Adapter(meta(Kind::IaaL, Some(4), Some(8))),
        cfg,
    )
    .unwrap();
    let outcome = t.run(&mut quiet()).unwrap();
    assert!(!t.epochs.is_empty());
    for e in &t.epochs {
        let d = e.dev_ndcg10.expect("dev nDCG per epoch");
        assert!((0.0..=1.0).contains(&d));
    }
    if outcome == Outcome::EarlyStopped {
        let best = t
            .epochs
            .iter()
            .filter_map(|e| e.dev_ndcg10)
            .fold(0.0, f64::max);
        let now = t.dev_ndcg().unwrap();
        assert!((now - best).abs() < 1e-9, "kept {now}, best was {best}");
    }
}
