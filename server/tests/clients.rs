//! The client libraries people already use (OpenAI, Hugging Face, Cohere,
//! LangChain, LlamaIndex; installed by scripts/pyenv.sh) against the real binary
//! with the real model: each gets what aside's own routes give, and unsupported
//! fields are refused by name (`tests/py/clients_check.py`).

mod common;

use aside_adapters::testing::random_adapter;
use aside_adapters::{format, Dims, Kind, Meta, Task};
use aside_backbone::testing::real_model;
use aside_backbone::{Backbone, LoadOptions};
use common::Server;

fn adapter(b: &Backbone, task: Task, seed: u64) -> Vec<u8> {
    let mut m = Meta::new(Kind::IaaL, task);
    m.r = Some(8);
    m.ar = Some(8);
    m.backbone = Some(b.sha256().to_owned());
    format::write_adapter(&random_adapter(&m, &Dims::of(b), b.bert(), seed)).unwrap()
}

#[test]
fn openai_huggingface_cohere_langchain_and_llama_index_clients_work() {
    let Some(model) = real_model(env!("CARGO_MANIFEST_DIR")) else {
        return;
    };
    let Some(python) = common::python() else {
        return;
    };
    let b = Backbone::load(&model, &LoadOptions::default()).unwrap();
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(&model, data.path(), &[]);
    let put = |name: &str, bytes: &[u8]| {
        s.raw("PUT", &format!("/v1/adapters/{name}"), &[], Some(bytes))
            .0
    };
    assert_eq!(put("scifact", &adapter(&b, Task::Retrieval, 1)), 201);
    assert_eq!(put("judge", &adapter(&b, Task::Rerank, 2)), 201);
    let id = model.file_name().unwrap().to_string_lossy().into_owned();
    let out = common::run_python(
        &python,
        "clients_check.py",
        &[&format!("http://{}", s.addr), "scifact", "judge", &id],
    );
    eprintln!("{out}");
    assert!(out.contains("all client checks passed"), "{out}");
    s.stop();
}

#[test]
fn the_aside_python_client_drives_every_operation() {
    use aside_adapters::testing::test_metas;
    let Some(python) = common::python() else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    aside_backbone::testing::TinyBert::default()
        .write(&d.path().join("model"))
        .unwrap();
    let b = Backbone::load(&d.path().join("model"), &LoadOptions::default()).unwrap();
    let metas = test_metas(b.sha256());
    let find = |l: &str| metas.iter().find(|(x, _)| *x == l).unwrap().1.clone();
    for (label, file) in [
        ("iaa-l", "ret.safetensors"),
        ("rerank-iaa-l", "rr.safetensors"),
    ] {
        let bytes =
            format::write_adapter(&random_adapter(&find(label), &Dims::of(&b), b.bert(), 4))
                .unwrap();
        std::fs::write(d.path().join(file), bytes).unwrap();
    }
    let peft = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../adapters/tests/fixtures/peft/query-value"
    );
    let s = Server::start(
        &d.path().join("model"),
        &d.path().join("data"),
        &["--max-length", "64"],
    );
    let out = common::run_python(
        &python,
        "aside_client_check.py",
        &[
            &format!("http://{}", s.addr),
            d.path().join("ret.safetensors").to_str().unwrap(),
            d.path().join("rr.safetensors").to_str().unwrap(),
            peft,
        ],
    );
    eprintln!("{out}");
    assert!(out.contains("aside-client checks passed"), "{out}");
    s.stop();
}
