//! Test helper for the crash test (not a user tool): upserts batches into a
//! collection as fast as it can and prints `ack N` after batch N is durable, until
//! it is killed.
//!
//!     crash_writer DIR [graph|hnsw_rs] [staging]
//!
//! `staging`: also holds a staging copy of the collection open (as a re-embedding
//! does) while it writes.

use std::io::Write;

use aside_index::{
    CollectionConfig, Doc, Engine, HnswParams, Index, LexicalSettings, Metric, Space,
};

fn main() {
    let dir = std::env::args()
        .nth(1)
        .expect("usage: crash_writer DIR [ENGINE]");
    let engine: Engine = std::env::args()
        .nth(2)
        .map_or(Engine::Graph, |e| e.parse().expect("engine"));
    let index = Index::open(std::path::Path::new(&dir)).expect("open");
    let c = match index.get("crash") {
        Ok(c) => c,
        Err(_) => index
            .create(CollectionConfig {
                name: "crash".into(),
                dim: 8,
                // hnsw_rs orders by l2 or cosine (these vectors are not unit).
                metric: if engine == Engine::HnswRs {
                    Metric::L2
                } else {
                    Metric::Dot
                },
                hnsw: HnswParams::default(),
                space: Space::default(),
                engine,
                lexical: Some(LexicalSettings {
                    language: "en".into(),
                }),
            })
            .expect("create"),
    };
    let _staging = (std::env::args().nth(3).as_deref() == Some("staging"))
        .then(|| index.create_staging(c.config()).expect("staging"));
    let mut out = std::io::stdout().lock();
    for batch in 0u64.. {
        let docs = (0..20)
            .map(|i| Doc {
                id: format!("b{batch}-{i}"),
                vector: (0..8).map(|j| (batch * 100 + i * 8 + j) as f32).collect(),
                text: format!("batch {batch} doc {i} tok{batch}x{i}"),
                metadata: serde_json::json!({"batch": batch}),
            })
            .collect();
        c.upsert(docs).expect("upsert");
        writeln!(out, "ack {batch}").expect("stdout");
        out.flush().expect("flush");
    }
}
