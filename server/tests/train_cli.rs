//! `aside train` as a real process on the tiny BERT and a synthetic BEIR folder:
//! outputs and logs, Ctrl-C checkpoint and `--resume`, full fine-tuning, bad input.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

use aside_backbone::testing::TinyBert;
use aside_trainer::testing::write_synthetic_beir;

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_aside");

struct Fx {
    dir: tempfile::TempDir,
}

impl Fx {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        TinyBert::default()
            .write(&dir.path().join("model"))
            .unwrap();
        write_synthetic_beir(&dir.path().join("data"), 24, 3).unwrap();
        Fx { dir }
    }
    fn p(&self, s: &str) -> String {
        self.dir.path().join(s).to_str().unwrap().to_owned()
    }
    fn train_args(&self, out: &str, extra: &[&str]) -> Vec<String> {
        let (model, data, cache, out) = (
            self.p("model"),
            self.p("data"),
            self.p("cache"),
            self.p(out),
        );
        args(
            &[
                "train",
                "--model",
                &model,
                "--data",
                &data,
                "--cache-dir",
                &cache,
                "--query-max-length",
                "16",
                "--doc-max-length",
                "32",
                "--batch-size",
                "6",
                "--negative-depth",
                "5",
                "-o",
                &out,
            ],
            extra,
        )
    }
}

/// Owned arguments: `base` then `extra`.
fn args(base: &[&str], extra: &[&str]) -> Vec<String> {
    base.iter().chain(extra).map(|s| s.to_string()).collect()
}

fn run(args: &[String]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn ok(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    err
}

#[test]
fn train_writes_a_served_adapter_with_logs_and_a_plot() {
    let fx = Fx::new();
    let out = run(&fx.train_args(
        "a.safetensors",
        &[
            "--kind",
            "iaa-l",
            "--r",
            "4",
            "--ar",
            "8",
            "--epochs",
            "4",
            "--lr",
            "1e-2",
            "--target-loss",
            "5",
        ],
    ));
    let err = ok(&out);
    assert!(err.contains("trainable parameters"), "{err}");
    assert!(err.contains("steps/s"), "no progress: {err}");
    // Logs: a CSV row per step, the epochs, the plot, a summary.
    let logs = fx.dir.path().join("a.safetensors.train");
    let csv = std::fs::read_to_string(logs.join("loss.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 12, "{csv}");
    assert!(csv.starts_with("step,epoch,loss,lr,grad_norm,seconds"));
    assert_eq!(
        std::fs::read_to_string(logs.join("epochs.csv"))
            .unwrap()
            .lines()
            .count(),
        5
    );
    let png = std::fs::read(logs.join("loss.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(logs.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["steps"], 12);
    assert_eq!(summary["steps_to_target_loss"], 10);
    assert!(summary["trainable_params"].as_u64().unwrap() > 0);
    // The adapter validates, and `eval` takes it.
    let inspect = run(&[
        "adapter".into(),
        "inspect".into(),
        fx.p("a.safetensors"),
        "--model".into(),
        fx.p("model"),
        "--json".into(),
    ]);
    ok(&inspect);
    let v: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(v["kind"], "iaa-l");
    let eval = run(&[
        "eval".into(),
        "--model".into(),
        fx.p("model"),
        "--adapter".into(),
        fx.p("a.safetensors"),
        "--data".into(),
        fx.p("data"),
        "--max-length".into(),
        "32".into(),
        "--no-cache".into(),
        "--json".into(),
    ]);
    ok(&eval);
    let m: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    assert_eq!(m["queries"], 6);
    // And the server takes it as a task.
    let server = common::Server::start(
        &fx.dir.path().join("model"),
        &fx.dir.path().join("state"),
        &["--max-length", "64"],
    );
    let bytes = std::fs::read(fx.p("a.safetensors")).unwrap();
    let (status, _, body) = server.raw(
        "PUT",
        "/v1/adapters/trained",
        &[("content-type", "application/octet-stream")],
        Some(&bytes),
    );
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    let (status, v) = server.call(
        "POST",
        "/v1/embed",
        Some(&serde_json::json!({"inputs": ["the cell"], "adapter": "trained"})),
    );
    assert_eq!(status, 200, "{v}");
    // The container health check against it.
    let port = server.addr.rsplit(':').next().unwrap().to_owned();
    ok(&run(&["healthcheck".into(), "--port".into(), port.clone()]));
    server.stop();
    let down = run(&[
        "healthcheck".into(),
        "--port".into(),
        port,
        "--timeout".into(),
        "1".into(),
    ]);
    assert!(
        !down.status.success(),
        "healthcheck passed with the server stopped"
    );
}

#[test]
fn eval_caches_the_corpus_embeddings_and_fuses_rerank_with_retrieval_scores() {
    let fx = Fx::new();
    ok(&run(&fx.train_args(
        "rr.safetensors",
        &[
            "--kind", "iaa-l", "--r", "4", "--ar", "8", "--task", "rerank", "--epochs", "1",
        ],
    )));
    let (model, data, cache) = (fx.p("model"), fx.p("data"), fx.p("evalcache"));
    let eval = |extra: &[&str]| {
        let mut v = args(
            &[
                "eval",
                "--model",
                &model,
                "--data",
                &data,
                "--cache-dir",
                &cache,
                "--json",
            ],
            extra,
        );
        if !extra.contains(&"--max-length") {
            v.extend(["--max-length".to_string(), "32".to_string()]);
        }
        let out = run(&v);
        let err = ok(&out);
        let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (m, err)
    };
    // First run encodes and writes the cache; the second reads it, same figures.
    let (first, err) = eval(&[]);
    assert!(!err.contains("cached"), "{err}");
    let files: Vec<_> = std::fs::read_dir(fx.p("evalcache"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let (again, err) = eval(&[]);
    assert!(err.contains("corpus embeddings: cached"), "{err}");
    assert_eq!(first, again);
    // A damaged cache file is not trusted: the corpus is encoded again.
    let bytes = std::fs::read(&files[0]).unwrap();
    std::fs::write(&files[0], &bytes[..bytes.len() - 4]).unwrap();
    let (third, err) = eval(&[]);
    assert!(!err.contains("cached"), "{err}");
    assert_eq!(first, third);
    // Another max length is another cache entry.
    let (_, err) = eval(&["--max-length", "24"]);
    assert!(!err.contains("cached"), "{err}");
    // Re-ranking with the retrieval score weighted far above the head keeps the
    // retrieval order, so the figures are retrieval's; the head alone changes them.
    let rr = fx.p("rr.safetensors");
    let (fused, _) = eval(&["--rerank", &rr, "--candidates", "10", "--fuse", "1e4"]);
    assert_eq!(fused["ndcg@10"], first["ndcg@10"]);
    assert_eq!(fused["mrr@10"], first["mrr@10"]);
    let (alone, err) = eval(&["--rerank", &rr, "--candidates", "10"]);
    assert_ne!(alone["ndcg@10"], first["ndcg@10"]);
    // The second re-ranking run found every pair's score in the cache.
    assert!(err.contains("pair scores cached"), "{err}");
    // A run killed mid-write leaves a cut line and misses the rest: the next run
    // ignores the cut line, computes what is missing, and gets the same figures.
    let scores = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".tsv"))
        .expect("a rerank score file");
    let bytes = std::fs::read(&scores).unwrap();
    std::fs::write(&scores, &bytes[..bytes.len() / 2 + 7]).unwrap();
    let (resumed, err) = eval(&["--rerank", &rr, "--candidates", "10", "--fuse", "1e4"]);
    assert!(err.contains("pair scores cached"), "{err}");
    assert_eq!(resumed, fused);
    let (uncached, err) = eval(&["--rerank", &rr, "--candidates", "10", "--no-cache"]);
    assert!(!err.contains("cached"), "{err}");
    assert_eq!(uncached, alone);
    // Each run also reports the stages: retrieval alone, and the head alone when fused.
    assert_eq!(alone["retrieval"]["ndcg@10"], first["ndcg@10"]);
    assert!(alone.get("head_only").is_none());
    assert_eq!(fused["head_only"]["ndcg@10"], alone["ndcg@10"]);
    assert_eq!(fused["retrieval"]["mrr@10"], first["mrr@10"]);
    // Bad weights are named.
    for (extra, want) in [
        (vec!["--fuse", "1"], "needs --rerank"),
        (vec!["--rerank", rr.as_str(), "--fuse=-1"], "--fuse must be"),
    ] {
        let out = run(&args(&["eval", "--model", &model, "--data", &data], &extra));
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{err}");
    }
}

#[test]
fn ctrl_c_writes_a_checkpoint_and_resume_finishes_the_run() {
    let fx = Fx::new();
    let args = fx.train_args(
        "r.safetensors",
        &["--kind", "houlsby", "--r", "4", "--epochs", "400"],
    );
    let mut child = Command::new(BIN)
        .args(&args)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut seen = String::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.starts_with("step 20/") {
            Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status()
                .unwrap();
        }
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{seen}");
    assert!(seen.contains("--resume"), "{seen}");
    let ckpt = fx.dir.path().join("r.safetensors.train/checkpoint");
    assert!(ckpt.join("state.json").is_file());
    assert!(!fx.dir.path().join("r.safetensors").exists());
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ckpt.join("state.json")).unwrap()).unwrap();
    let done = state["step"].as_u64().unwrap();
    assert!((20..1200).contains(&done), "checkpoint at step {done}");

    // Without --resume the unfinished run is not overwritten.
    let again = run(&args);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"));

    let mut resume = args.clone();
    resume.push("--resume".into());
    let err = ok(&run(&resume));
    assert!(err.contains(&format!("resumed at step {done}")), "{err}");
    let csv = std::fs::read_to_string(fx.dir.path().join("r.safetensors.train/loss.csv")).unwrap();
    let steps: Vec<u64> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(steps, (1..=1200).collect::<Vec<u64>>());
    assert!(fx.dir.path().join("r.safetensors").is_file());
    assert!(
        !ckpt.exists(),
        "the checkpoint of a finished run is removed"
    );
}

#[test]
fn full_fine_tuning_writes_a_model_folder_embed_accepts() {
    let fx = Fx::new();
    ok(&run(
        &fx.train_args("m", &["--kind", "full", "--epochs", "1"])
    ));
    let out = Command::new(BIN)
        .args(["embed", "--model", &fx.p("m"), "--max-length", "32"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .unwrap()
                .write_all(b"{\"id\": \"a\", \"text\": \"the cell\"}\n")?;
            c.wait_with_output()
        })
        .unwrap();
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"embedding\""));
}

#[test]
fn bad_settings_are_named() {
    let fx = Fx::new();
    for (extra, want) in [
        (vec!["--kind", "nope"], "--kind"),
        (vec!["--kind", "iaa-l", "--r", "4"], "ar"),
        (
            vec![
                "--kind",
                "iaa-l",
                "--r",
                "4",
                "--ar",
                "4",
                "--patience",
                "2",
            ],
            "--dev-queries",
        ),
        (
            vec!["--kind", "lora", "--r", "4", "--lora-targets", "query,nope"],
            "nope",
        ),
        (
            vec!["--kind", "full", "--task", "rerank"],
            "retrieval models only",
        ),
    ] {
        let out = run(&fx.train_args("x.safetensors", &extra));
        assert!(!out.status.success(), "{extra:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{extra:?}: {err}");
    }
    let mut args = fx.train_args("x.safetensors", &["--kind", "bitfit"]);
    let i = args.iter().position(|a| a == "--data").unwrap();
    args[i + 1] = fx.p("missing");
    let out = run(&args);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing"));
    assert!(!fx.dir.path().join("x.safetensors").exists());
}

/// The eval's nDCG@10 of `aside eval` on a folder (`--max-length 32`, no cache).
fn eval_ndcg(fx: &Fx, data: &str, split: &str, extra: &[&str]) -> f64 {
    let (model, data) = (fx.p("model"), data.to_owned());
    let out = run(&args(
        &[
            "eval",
            "--model",
            &model,
            "--data",
            &data,
            "--split",
            split,
            "--max-length",
            "32",
            "--no-cache",
            "--json",
        ],
        extra,
    ));
    ok(&out);
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    m["ndcg@10"].as_f64().unwrap()
}

fn summary(fx: &Fx, out: &str) -> serde_json::Value {
    serde_json::from_slice(
        &std::fs::read(fx.dir.path().join(format!("{out}.train/summary.json"))).unwrap(),
    )
    .unwrap()
}

#[test]
fn the_dev_evaluation_is_what_aside_eval_reports_on_the_dev_folder() {
    let fx = Fx::new();
    // Retrieval: base and best dev figures against `aside eval` on the written folder,
    // without and with the written adapter (the best checkpoint).
    let err = ok(&run(&fx.train_args(
        "a.safetensors",
        &[
            "--kind",
            "iaa-l",
            "--r",
            "4",
            "--ar",
            "8",
            "--epochs",
            "6",
            "--lr",
            "1e-2",
            "--dev-queries",
            "6",
            "--eval-every",
            "2",
            "--keep-worse",
        ],
    )));
    assert!(err.contains("dev nDCG@10 of the base model"), "{err}");
    assert!(err.contains("plan: "), "{err}");
    let s = summary(&fx, "a.safetensors");
    let dev = &s["dev"];
    assert_eq!(dev["queries"], 6);
    assert_eq!(dev["evaluations"].as_array().unwrap().len(), 1 + 6);
    let folder = fx.p("a.safetensors.train/dev");
    let base = eval_ndcg(&fx, &folder, "dev", &[]);
    assert!(
        (base - dev["base_ndcg10"].as_f64().unwrap()).abs() < 1e-6,
        "{base} {dev}"
    );
    let written = eval_ndcg(&fx, &folder, "dev", &["--adapter", &fx.p("a.safetensors")]);
    let best = dev["best_ndcg10"].as_f64().unwrap();
    assert!((written - best).abs() < 1e-6, "{written} {dev}");
    let kept = s["kept_step"].as_u64().unwrap();
    let at_kept = dev["evaluations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["step"] == kept)
        .unwrap();
    assert_eq!(at_kept["ndcg10"].as_f64().unwrap(), best);

    // Rerank: the base is the retriever's order over the pool; the written head
    // re-ranks its top --dev-depth as `aside eval --rerank --candidates` does.
    ok(&run(&fx.train_args(
        "r.safetensors",
        &[
            "--kind",
            "iaa-l",
            "--r",
            "4",
            "--ar",
            "8",
            "--task",
            "rerank",
            "--epochs",
            "3",
            "--dev-queries",
            "6",
            "--dev-depth",
            "4",
            "--keep-worse",
        ],
    )));
    let s = summary(&fx, "r.safetensors");
    let folder = fx.p("r.safetensors.train/dev");
    let base = eval_ndcg(&fx, &folder, "dev", &[]);
    assert!(
        (base - s["dev"]["base_ndcg10"].as_f64().unwrap()).abs() < 1e-6,
        "{base} {s}"
    );
    let written = eval_ndcg(
        &fx,
        &folder,
        "dev",
        &["--rerank", &fx.p("r.safetensors"), "--candidates", "4"],
    );
    let best = s["dev"]["best_ndcg10"].as_f64().unwrap();
    assert!((written - best).abs() < 1e-6, "{written} {s}");
}

#[test]
fn training_that_only_makes_the_task_worse_writes_nothing_and_fails() {
    let fx = Fx::new();
    // Each query's text is its document's: the bare backbone already ranks every
    // judged document first (dev nDCG@10 1), so no checkpoint can beat it. The dev
    // queries keep their true judgements; every other training query is judged
    // relevant to another query's document, so training only pulls queries away
    // from their own.
    let data = std::path::Path::new(&fx.p("data")).to_owned();
    let split = aside_trainer::TrainSet::load(
        &data,
        "train",
        &aside_trainer::data::SplitOptions {
            dev_queries: Some(6),
            min_relevance: 1,
            seed: 42,
        },
    )
    .unwrap();
    let dev: Vec<&str> = split
        .dev
        .iter()
        .map(|&q| split.queries[q].0.as_str())
        .collect();
    let mut queries = String::new();
    for (i, (id, text)) in split.corpus.iter().enumerate().take(24) {
        assert_eq!(id, &format!("d{i}"));
        queries.push_str(&format!(
            "{}\n",
            serde_json::json!({"_id": format!("q{i}"), "text": text})
        ));
    }
    std::fs::write(data.join("queries.jsonl"), queries).unwrap();
    let mut qrels = String::from("query-id\tcorpus-id\tscore\n");
    for (i, (q, _)) in split.queries.iter().enumerate() {
        let d = if dev.contains(&q.as_str()) {
            i
        } else {
            (i + 7) % split.queries.len()
        };
        qrels.push_str(&format!("{q}\td{d}\t1\n"));
    }
    std::fs::write(data.join("qrels/train.tsv"), qrels).unwrap();
    let train = |extra: &[&str]| {
        let mut a = fx.train_args(
            "w.safetensors",
            &[
                "--kind",
                "iaa-l",
                "--r",
                "4",
                "--ar",
                "8",
                "--epochs",
                "8",
                "--lr",
                "3e-2",
                "--dev-queries",
                "6",
            ],
        );
        a.extend(extra.iter().map(|s| s.to_string()));
        run(&a)
    };
    let out = train(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("no checkpoint beat the base model"), "{err}");
    assert!(!fx.dir.path().join("w.safetensors").exists());
    let s = summary(&fx, "w.safetensors");
    assert_eq!(s["written"], false);
    assert_eq!(s["dev"]["improved"], false);
    assert_eq!(s["dev"]["base_ndcg10"], 1.0);
    assert!(s["dev"]["best_ndcg10"].as_f64() <= s["dev"]["base_ndcg10"].as_f64());
    // --keep-worse writes the best of the worse checkpoints, and says so.
    let out = train(&["--keep-worse"]);
    let err = ok(&out);
    assert!(err.contains("scores below the base model"), "{err}");
    assert!(fx.dir.path().join("w.safetensors").is_file());
}

#[test]
fn lr_auto_scores_three_rates_on_the_dev_split_and_trains_at_the_best() {
    let fx = Fx::new();
    let err = ok(&run(&fx.train_args(
        "l.safetensors",
        &[
            "--kind",
            "iaa-l",
            "--r",
            "4",
            "--ar",
            "8",
            "--max-steps",
            "50",
            "--lr",
            "auto",
            "--dev-queries",
            "6",
            "--keep-worse",
        ],
    )));
    assert!(err.contains("--lr auto: training at"), "{err}");
    let s = summary(&fx, "l.safetensors");
    let search = s["lr_search"].as_array().unwrap();
    let rates: Vec<f64> = search.iter().map(|x| x["lr"].as_f64().unwrap()).collect();
    assert_eq!(rates, vec![1e-3, 3e-3, 1e-2]);
    let best = search
        .iter()
        .max_by(|a, b| {
            a["dev_ndcg10"]
                .as_f64()
                .partial_cmp(&b["dev_ndcg10"].as_f64())
                .unwrap()
        })
        .unwrap();
    assert_eq!(s["config"]["lr"], best["lr"]);
    // The base model was scored once, before the probes, and heads the run's evaluations.
    assert_eq!(
        err.matches("dev nDCG@10 of the base model").count(),
        1,
        "{err}"
    );
    assert_eq!(s["dev"]["evaluations"][0]["step"], 0);
    // Without a dev split there is nothing to choose by.
    let out = run(&fx.train_args(
        "n.safetensors",
        &["--kind", "bitfit", "--lr", "auto", "--dev-queries", "0"],
    ));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs one"));
}

#[test]
fn a_run_that_fails_midway_keeps_a_checkpoint_of_its_steps() {
    // A learning rate this large makes the loss non-finite within a few steps: the
    // run fails, naming the cause, and the steps before the failure are kept.
    let fx = Fx::new();
    let args = fx.train_args(
        "nan.safetensors",
        &[
            "--kind",
            "houlsby",
            "--r",
            "4",
            "--epochs",
            "50",
            "--lr",
            "1e12",
            "--dev-queries",
            "0",
            "--warmup",
            "0",
        ],
    );
    let out = run(&args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("lower the learning rate"), "{err}");
    assert!(err.contains("--resume"), "{err}");
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            fx.dir
                .path()
                .join("nan.safetensors.train/checkpoint/state.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert!(state["step"].as_u64().unwrap() >= 1, "{state}");
    assert!(!fx.dir.path().join("nan.safetensors").exists());
}
