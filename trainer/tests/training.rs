//! Short real training runs on the tiny BERT and a synthetic BEIR folder: the loss
//! falls, only adapter parameters change, checkpoints resume exactly, full
//! fine-tuning writes a loadable model folder, rerank and early stopping work.

use aside_adapters::{format, Dims, Kind, Meta, Task};
use aside_backbone::testing::TinyBert;
use aside_backbone::{Backbone, EncodeOptions, LoadOptions};
use aside_trainer::data::SplitOptions;
use aside_trainer::testing::write_synthetic_beir;
use aside_trainer::{
    EpochLog, Outcome, Progress, Sample, StepLog, Target, TrainConfig, TrainSet, Trainer,
};

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
        eval_every: 0,
        dev_depth: 5,
        sample: Sample::Pairs,
        near_duplicate: None,
        margin: None,
        mask_same_text: false,
        min_relevance: 1,
    }
}

fn set(f: &Fixture, dev: usize) -> TrainSet {
    let mut s = TrainSet::load(
        &f.data,
        "train",
        &SplitOptions {
            dev_queries: Some(dev),
            min_relevance: 1,
            seed: 1,
        },
    )
    .unwrap();
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
fn the_dev_split_scores_the_base_model_first_and_the_best_evaluation_is_kept() {
    let f = fixture();
    let data = set(&f, 4);
    assert_eq!(data.dev.len(), 4);
    let dev_ids: Vec<usize> = data.dev.clone();
    assert!(data.examples.iter().all(|(q, _)| !dev_ids.contains(q)));
    assert!(data.train_queries.iter().all(|q| !dev_ids.contains(q)));
    let mut cfg = config(Task::Retrieval, 3e-2);
    cfg.dev_queries = 4;
    cfg.eval_every = 2;
    cfg.epochs = 6;
    let mut t = Trainer::new(
        &f.backbone,
        &data,
        Target::Adapter(meta(Kind::IaaL, Some(4), Some(8))),
        cfg,
    )
    .unwrap();
    // 14 training queries, 3 steps an epoch, 6 epochs.
    assert_eq!(t.eval_steps(), (1..=9).map(|i| 2 * i).collect::<Vec<_>>());
    assert_eq!(t.run(&mut quiet()).unwrap(), Outcome::Finished);
    // The base model first (step 0), then every two steps.
    let steps: Vec<usize> = t.evals.iter().map(|e| e.step).collect();
    assert_eq!(steps, (0..=9).map(|i| 2 * i).collect::<Vec<_>>());
    let base = t.evals[0].ndcg10;
    assert!((base - t.base_ndcg().unwrap()).abs() < 1e-12);
    for e in &t.evals {
        assert!((0.0..=1.0).contains(&e.ndcg10), "{e:?}");
    }
    // The parameters kept are the best evaluation's, whichever step it was.
    let best = t.evals[1..]
        .iter()
        .map(|e| e.ndcg10)
        .fold(f64::NEG_INFINITY, f64::max);
    let now = t.dev_ndcg().unwrap();
    assert!((now - best).abs() < 1e-9, "kept {now}, best was {best}");
    let v = t.verdict().unwrap();
    assert_eq!(v.base, base);
    assert_eq!(v.best, best);
    assert_eq!(v.improved(), best > base);
    assert_eq!(
        t.kept_step(),
        t.evals[1..].iter().find(|e| e.ndcg10 == best).unwrap().step
    );
}

#[test]
fn early_stopping_counts_evaluations_and_keeps_the_best() {
    let f = fixture();
    let data = set(&f, 4);
    let mut cfg = config(Task::Retrieval, 1e-1);
    cfg.dev_queries = 4;
    cfg.eval_every = 1;
    cfg.patience = 2;
    cfg.epochs = 10;
    let mut t = Trainer::new(
        &f.backbone,
        &data,
        Target::Adapter(meta(Kind::IaaL, Some(4), Some(8))),
        cfg,
    )
    .unwrap();
    let outcome = t.run(&mut quiet()).unwrap();
    if outcome == Outcome::EarlyStopped {
        let last = t.evals.len() - 1;
        let best = t.evals[..last - 1]
            .iter()
            .map(|e| e.ndcg10)
            .fold(f64::NEG_INFINITY, f64::max);
        assert!(t.evals[last].ndcg10 <= best && t.evals[last - 1].ndcg10 <= best);
        assert!(t.steps.len() < 30);
    } else {
        assert_eq!(t.steps.len(), 30);
    }
    let best = t.evals[1..]
        .iter()
        .map(|e| e.ndcg10)
        .fold(f64::NEG_INFINITY, f64::max);
    assert!((t.dev_ndcg().unwrap() - best).abs() < 1e-9);
}

#[test]
fn a_resumed_run_with_a_dev_split_keeps_its_evaluations_and_best_checkpoint() {
    let f = fixture();
    let data = set(&f, 4);
    let target = Target::Adapter(meta(Kind::IaaL, Some(4), Some(4)));
    let mut cfg = config(Task::Retrieval, 3e-2);
    cfg.dev_queries = 4;
    cfg.eval_every = 2;
    cfg.epochs = 4;
    cfg.sample = Sample::Queries;
    cfg.margin = Some(0.95);
    cfg.near_duplicate = Some(0.95);
    cfg.mask_same_text = true;
    let mut straight = Trainer::new(&f.backbone, &data, target.clone(), cfg.clone()).unwrap();
    straight.run(&mut quiet()).unwrap();

    let ck = tempfile::tempdir().unwrap();
    let mut first = Trainer::new(&f.backbone, &data, target.clone(), cfg.clone()).unwrap();
    let mut stop = Quiet {
        stop_after: Some(5),
        seen: 0,
    };
    assert_eq!(first.run(&mut stop).unwrap(), Outcome::Interrupted);
    first.checkpoint(ck.path()).unwrap();
    drop(first);
    let mut resumed = Trainer::new(&f.backbone, &data, target, cfg).unwrap();
    resumed.resume(ck.path()).unwrap();
    resumed.run(&mut quiet()).unwrap();
    let pairs = |t: &Trainer<'_>| -> Vec<(usize, f64)> {
        t.evals.iter().map(|e| (e.step, e.ndcg10)).collect()
    };
    assert_eq!(pairs(&straight), pairs(&resumed));
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
}

#[test]
fn query_sampling_visits_each_training_query_once_an_epoch() {
    let f = fixture();
    // A query with many positives: pairs would give it most of an epoch.
    let qrels = f.data.join("qrels/train.tsv");
    let mut text = std::fs::read_to_string(&qrels).unwrap();
    for d in 30..40 {
        text.push_str(&format!("q0\td{d}\t1\n"));
    }
    std::fs::write(&qrels, text).unwrap();
    let data = set(&f, 0);
    assert_eq!(data.train_queries.len(), 18);
    assert_eq!(data.examples.len(), 28);
    let mut cfg = config(Task::Retrieval, 1e-3);
    cfg.sample = Sample::Queries;
    cfg.epochs = 2;
    let t = Trainer::new(
        &f.backbone,
        &data,
        Target::Adapter(meta(Kind::Bitfit, None, None)),
        cfg.clone(),
    )
    .unwrap();
    assert_eq!(t.plan(), (3, 6));
    cfg.sample = Sample::Pairs;
    let t = Trainer::new(
        &f.backbone,
        &data,
        Target::Adapter(meta(Kind::Bitfit, None, None)),
        cfg,
    )
    .unwrap();
    assert_eq!(t.plan(), (5, 10));
}

#[test]
fn near_duplicates_of_a_positive_and_negatives_above_the_margin_are_not_drawn() {
    let f = fixture();
    // d0 is q0's positive; "d0-copy" is its text again under another id (other
    // spacing), unjudged; "d0-near" is it with one word more.
    let corpus = f.data.join("corpus.jsonl");
    let mut text = std::fs::read_to_string(&corpus).unwrap();
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let d0 = first["text"].as_str().unwrap().to_owned();
    text.push_str(&format!(
        "{}\n{}\n",
        serde_json::json!({"_id": "d0-copy", "title": "", "text": format!(" {}  ", d0.replace(' ', "  "))}),
        serde_json::json!({"_id": "d0-near", "title": "", "text": format!("{d0} the")}),
    ));
    std::fs::write(&corpus, text).unwrap();
    // Every document mined: the random tiny model need not rank the copies high.
    let mut data = set(&f, 0);
    data.mine_negatives(&f.backbone, 60, 32, &f.cache).unwrap();
    let q0 = data.queries.iter().position(|(q, _)| q == "q0").unwrap();
    let row = |id: &str| data.corpus.iter().position(|(d, _)| d == id).unwrap();
    let (d0, copy, near) = (row("d0"), row("d0-copy"), row("d0-near"));
    let negs = &data.negatives[q0];
    let find = |r: usize| negs.iter().find(|n| n.row == r).copied();
    let c = find(copy).expect("the copy is mined as a negative");
    assert!(c.same_text && c.likeness > 0.999, "{c:?}");
    let n = find(near).expect("the near copy is mined as a negative");
    assert!(!n.same_text && n.likeness > 0.9, "{n:?}");
    let pos_score = data.positive_scores[q0][&d0];

    let mut cfg = config(Task::Retrieval, 1e-3);
    cfg.negative_depth = 60;
    let target = Target::Adapter(meta(Kind::Bitfit, None, None));
    let all = Trainer::new(&f.backbone, &data, target.clone(), cfg.clone())
        .unwrap()
        .drawable(q0, d0);
    assert!(all.contains(&copy) && all.contains(&near));
    cfg.near_duplicate = Some(n.likeness - 1e-4);
    let t = Trainer::new(&f.backbone, &data, target.clone(), cfg.clone()).unwrap();
    let drawable = t.drawable(q0, d0);
    assert!(!drawable.contains(&copy) && !drawable.contains(&near));
    for r in &drawable {
        let x = negs.iter().find(|n| n.row == *r).unwrap();
        assert!(!x.same_text && x.likeness < n.likeness - 1e-4);
    }
    cfg.near_duplicate = None;
    cfg.margin = Some(0.9);
    let t = Trainer::new(&f.backbone, &data, target, cfg).unwrap();
    let drawable = t.drawable(q0, d0);
    assert!(!drawable.is_empty());
    for x in negs {
        assert_eq!(
            drawable.contains(&x.row),
            x.score < 0.9 * pos_score,
            "{x:?}"
        );
    }
}

#[test]
fn graded_judgements_below_the_minimum_neither_train_nor_count_as_negatives() {
    let f = fixture();
    let qrels = f.data.join("qrels/train.tsv");
    let mut text = std::fs::read_to_string(&qrels).unwrap();
    text = text.replace("q0\td0\t1", "q0\td0\t2");
    text.push_str("q0\td30\t1\n");
    std::fs::write(&qrels, text).unwrap();
    let load = |min| {
        let mut s = TrainSet::load(
            &f.data,
            "train",
            &SplitOptions {
                dev_queries: Some(0),
                min_relevance: min,
                seed: 1,
            },
        )
        .unwrap();
        s.mine_negatives(&f.backbone, 40, 32, &f.cache).unwrap();
        s
    };
    let (one, two) = (load(1), load(2));
    let q0 = one.queries.iter().position(|(q, _)| q == "q0").unwrap();
    let row = |id: &str| one.corpus.iter().position(|(d, _)| d == id).unwrap();
    assert_eq!(one.positives[q0], vec![row("d0"), row("d30")]);
    assert_eq!(two.positives[q0], vec![row("d0")]);
    // Only q0 has a grade-2 judgement: the others have nothing to train on at 2.
    assert_eq!(two.train_queries, vec![q0]);
    for s in [&one, &two] {
        assert!(s.negatives[q0].iter().all(|n| n.row != row("d30")));
    }
    let err = TrainSet::load(
        &f.data,
        "train",
        &SplitOptions {
            dev_queries: Some(0),
            min_relevance: 3,
            seed: 1,
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("grade 3"), "{err}");
}

#[test]
fn a_last_batch_of_one_query_trains_in_every_task() {
    // Batches one short of the training queries: each epoch ends on a batch of one
    // query (one positive and its negatives: a 1 × group score matrix for rerank).
    let f = fixture();
    let data = set(&f, 0);
    let n = data.train_queries.len();
    assert!(n > 2);
    for task in [Task::Rerank, Task::Retrieval] {
        let mut m = meta(Kind::IaaL, Some(4), Some(8));
        m.task = task;
        let mut cfg = config(task, 1e-3);
        cfg.sample = Sample::Queries;
        cfg.batch_size = n - 1;
        cfg.negatives = 3;
        cfg.epochs = 2;
        let mut t = Trainer::new(&f.backbone, &data, Target::Adapter(m), cfg).unwrap();
        t.run(&mut quiet()).unwrap();
        assert_eq!(t.steps.len(), 4, "{task:?}");
        assert!(t.steps.iter().all(|s| s.loss.is_finite()), "{task:?}");
    }
}
