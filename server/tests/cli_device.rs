//! `--device` and the GPU precisions on the command line: an adapter is placed for
//! a bf16 backbone (moved to its type once) and embeds within 0.999 of f32; a GPU
//! asked of a build without the `cuda` feature, a GPU for training, and a device
//! name that is not one are each refused by name.

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

fn embedding(out: &Output) -> Vec<f32> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    v["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn an_adapter_is_placed_for_a_bf16_backbone_and_embeds_close_to_f32() {
    let m = tempfile::tempdir().unwrap();
    TinyBert::default().write(m.path()).unwrap();
    let b = Backbone::load(m.path(), &LoadOptions::default()).unwrap();
    let (_, meta) = test_metas(b.sha256())
        .into_iter()
        .find(|(l, _)| *l == "iaa-l")
        .unwrap();
    let a = random_adapter(&meta, &Dims::of(&b), b.bert(), 11);
    let path = m.path().join("a.safetensors");
    std::fs::write(&path, format::write_adapter(&a).unwrap()).unwrap();
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
