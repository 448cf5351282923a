//! The `aside` command line, run as a real process: the `embed` contract, adapters,
//! `adapter inspect` and `adapter convert`, `--device` and the f16/bf16 precisions.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use aside_adapters::testing::{random_adapter, test_metas};
use aside_adapters::{format, Dims};
use aside_backbone::testing::TinyBert;
use aside_backbone::{Backbone, LoadOptions};

const BIN: &str = env!("CARGO_BIN_EXE_aside");

fn run(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn tiny() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    TinyBert::default().write(d.path()).unwrap();
    d
}

fn lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn embed_keeps_order_and_ids() {
    let m = tiny();
    let model = m.path().to_str().unwrap();
    let input = "{\"id\": \"b\", \"text\": \"hello world\"}\n\n{\"id\": 7, \"text\": \"\"}\n{\"id\": \"a\", \"text\": \"the cell\"}\n";
    let out = run(&["embed", "--model", model, "--max-length", "64"], input);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = lines(&out);
    let ids: Vec<String> = v.iter().map(|l| l["id"].to_string()).collect();
    assert_eq!(ids, ["\"b\"", "7", "\"a\""]);
    assert_eq!(v[0]["embedding"].as_array().unwrap().len(), 32);
}

#[test]
fn a_malformed_line_is_named_and_nothing_is_printed() {
    let m = tiny();
    let model = m.path().to_str().unwrap();
    for (input, want) in [
        (
            "{\"id\": \"a\", \"text\": \"ok\"}\n{\"id\": \"b\", \"text\": 3}\n",
            "input line 2",
        ),
        (
            "{\"id\": \"a\", \"text\": \"ok\"}\nnot json\n",
            "input line 2",
        ),
        ("{\"text\": \"no id\"}\n", "input line 1"),
        (
            "{\"id\": [1], \"text\": \"x\"}\n",
            "input line 1: `id` must be a string or a number",
        ),
    ] {
        let out = run(&["embed", "--model", model, "--max-length", "64"], input);
        assert!(!out.status.success());
        assert!(out.stdout.is_empty(), "nothing printed for a bad input");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "`{err}` should name `{want}`");
    }
    let out = run(&["embed", "--model", "/nonexistent/model"], "");
    assert!(String::from_utf8_lossy(&out.stderr).contains("config.json"));
}

/// The tiny model with a seeded random IAA-L adapter written beside it as
/// `a.safetensors`: (model folder, adapter file, adapter).
fn tiny_with_iaa(
    seed: u64,
) -> (
    tempfile::TempDir,
    std::path::PathBuf,
    aside_adapters::Adapter,
) {
    let m = tiny();
    let b = Backbone::load(m.path(), &LoadOptions::default()).unwrap();
    let (_, meta) = test_metas(b.sha256())
        .into_iter()
        .find(|(l, _)| *l == "iaa-l")
        .unwrap();
    let a = random_adapter(&meta, &Dims::of(&b), b.bert(), seed);
    let path = m.path().join("a.safetensors");
    std::fs::write(&path, format::write_adapter(&a).unwrap()).unwrap();
    (m, path, a)
}

#[test]
fn embed_applies_an_adapter_and_inspect_describes_it() {
    let (m, path, a) = tiny_with_iaa(5);
    let model = m.path().to_str().unwrap();
    let input = "{\"id\": \"x\", \"text\": \"hello world\"}\n";
    let bare = lines(&run(
        &["embed", "--model", model, "--max-length", "64"],
        input,
    ));
    let out = run(
        &[
            "embed",
            "--model",
            model,
            "--max-length",
            "64",
            "--adapter",
            path.to_str().unwrap(),
        ],
        input,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(lines(&out)[0]["embedding"], bare[0]["embedding"]);

    let out = run(
        &[
            "adapter",
            "inspect",
            path.to_str().unwrap(),
            "--model",
            model,
            "--json",
        ],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["kind"], "iaa-l");
    assert_eq!(v["r"], 6);
    assert_eq!(v["ar"], 8);
    assert_eq!(v["activation"], "gelu");
    assert_eq!(v["params"], a.param_count());

    std::fs::write(&path, b"not an adapter").unwrap();
    let out = run(
        &[
            "adapter",
            "inspect",
            path.to_str().unwrap(),
            "--model",
            model,
        ],
        "",
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("header"));
}

fn vector(v: &serde_json::Value) -> Vec<f64> {
    v["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// `--precision int8` runs the int8 linears (with an adapter on top) close to f32;
/// an unknown precision is refused by name.
#[test]
fn embed_in_int8_stays_close_to_f32() {
    let (m, path, _) = tiny_with_iaa(9);
    let model = m.path().to_str().unwrap();
    let input = "{\"id\": 1, \"text\": \"the cell divides\"}\n{\"id\": 2, \"text\": \"héllo wörld, 東京\"}\n";
    let adapter = path.to_str().unwrap();
    let args = |p| {
        [
            "embed",
            "--model",
            model,
            "--adapter",
            adapter,
            "--max-length",
            "64",
            "--precision",
            p,
        ]
    };
    let f32_out = run(&args("f32"), input);
    assert!(f32_out.status.success());
    for precision in ["int8", "int8-fast"] {
        let out = run(&args(precision), input);
        if !aside_backbone::Precision::Int8.supported() {
            eprintln!("SKIPPED: this CPU has no AVX-512 VNNI");
            assert!(String::from_utf8_lossy(&out.stderr).contains("VNNI"));
            return;
        }
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for (x, y) in lines(&f32_out).iter().zip(&lines(&out)) {
            let (x, y) = (vector(x), vector(y));
            let dot: f64 = x.iter().zip(&y).map(|(a, b)| a * b).sum();
            assert!(dot > 0.99, "{precision} vs f32 cosine {dot}");
            assert_ne!(x, y, "{precision} gave the f32 numbers");
        }
    }
    let out = run(&args("fp8"), input);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("fp8") && err.contains("int8"), "{err}");
}

#[test]
fn convert_writes_a_native_file_from_a_peft_folder() {
    let m = tiny();
    let model = m.path().to_str().unwrap();
    let peft = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../adapters/tests/fixtures/peft/query-value"
    );
    let out_file = m.path().join("lora.safetensors");
    let out = run(
        &[
            "adapter",
            "convert",
            "--peft",
            peft,
            "-o",
            out_file.to_str().unwrap(),
            "--model",
            model,
        ],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let input = "{\"id\": \"x\", \"text\": \"hello world\"}\n";
    let a = lines(&run(
        &[
            "embed",
            "--model",
            model,
            "--max-length",
            "64",
            "--adapter",
            peft,
        ],
        input,
    ));
    let b = lines(&run(
        &[
            "embed",
            "--model",
            model,
            "--max-length",
            "64",
            "--adapter",
            out_file.to_str().unwrap(),
        ],
        input,
    ));
    assert_eq!(a, b, "the folder and its native conversion embed alike");
}

#[test]
fn without_a_model_the_cli_says_once_how_to_pass_one() {
    let elsewhere = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args([
            "adapter",
            "init",
            "--kind",
            "iaa-l",
            "--r",
            "4",
            "--ar",
            "4",
            "-o",
            "a.safetensors",
        ])
        .current_dir(elsewhere.path())
        .env_remove("ASIDE_MODEL")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("pass --model").count(), 1, "{err}");
    assert_eq!(err.matches("fetch-model.sh").count(), 1, "{err}");
    assert!(!elsewhere.path().join("a.safetensors").exists());
}

fn embedding(out: &Output) -> Vec<f32> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    vector(&lines(out)[0])
        .into_iter()
        .map(|x| x as f32)
        .collect()
}

/// An adapter is placed for a bf16 backbone (moved to its type once) and embeds
/// within 0.999 of f32.
#[test]
fn an_adapter_is_placed_for_a_bf16_backbone_and_embeds_close_to_f32() {
    let (m, path, _) = tiny_with_iaa(11);
    let model = m.path().to_str().unwrap();
    let input = "{\"id\": 1, \"text\": \"the cell is a protein\"}\n";
    let args = |p: &'static str| {
        vec![
            "embed",
            "--model",
            model,
            "--max-length",
            "64",
            "--adapter",
            path.to_str().unwrap(),
            "--precision",
            p,
        ]
    };
    let f32v = embedding(&run(&args("f32"), input));
    let bf16v = embedding(&run(&args("bf16"), input));
    let bare = embedding(&run(
        &[
            "embed",
            "--model",
            model,
            "--max-length",
            "64",
            "--precision",
            "bf16",
        ],
        input,
    ));
    let cos = aside_backbone::pooling::cosine(&f32v, &bf16v);
    assert!(cos >= 0.999, "bf16 with the adapter: cosine {cos} to f32");
    assert!(
        aside_backbone::pooling::cosine(&bare, &bf16v) < 0.9999,
        "the adapter changed nothing in bf16"
    );
}

/// A name that is not a device, a GPU for training, and a GPU asked of a build
/// without the `cuda` feature are each refused by name.
#[test]
fn devices_that_cannot_serve_are_refused_by_name() {
    let input = "{\"id\": 1, \"text\": \"hello\"}\n";
    let err = |out: Output| {
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = err(run(&["embed", "--device", "gpu"], input));
    assert!(e.contains("expected cpu, cuda or cuda:N"), "{e}");
    let e = err(run(
        &[
            "train", "--kind", "iaa-l", "--data", "x", "-o", "y", "--device", "cuda",
        ],
        "",
    ));
    assert!(e.contains("training runs on the CPU"), "{e}");
    if !cfg!(feature = "cuda") {
        let e = err(run(&["embed", "--device", "cuda:1"], input));
        assert!(e.contains("this build has no GPU support"), "{e}");
    }
}
