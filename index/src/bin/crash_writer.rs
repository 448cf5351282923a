//! Test helper for the crash test (not a user tool): upserts batches into a
//! collection as fast as it can and prints `ack N` after batch N is durable, until
//! it is killed.
//!
//!     crash_writer DIR

use std::io::Write;

use aside_index::{CollectionConfig, Doc, HnswParams, Index, Metric, Space};

fn main() {
    let dir = std::env::args().nth(1).expect("usage: crash_writer DIR");
    let index = Index::open(std::path::Path::new(&dir)).expect("open");
    let c = match index.get("crash") {
        Ok(c) => c,
        Err(_) => index
            .create(CollectionConfig {
                name: "crash".into(),
                dim: 8,
                metric: Metric::Dot,
                hnsw: HnswParams::default(),
                space: Space::default(),
            })
            .expect("create"),
    };
    let mut out = std::io::stdout().lock();
    for batch in 0u64.. {
        let docs = (0..20)
            .map(|i| Doc {
                id: format!("b{batch}-{i}"),
                vector: (0..8).map(|j| (batch * 100 + i * 8 + j) as f32).collect(),
                text: format!("batch {batch} doc {i}"),
                metadata: serde_json::json!({"batch": batch}),
            })
            .collect();
        c.upsert(docs).expect("upsert");
        writeln!(out, "ack {batch}").expect("stdout");
        out.flush().expect("flush");
    }
}
