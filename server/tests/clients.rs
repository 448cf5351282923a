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
