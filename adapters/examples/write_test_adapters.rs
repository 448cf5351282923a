//! Writes the seeded test adapters (`aside_adapters::testing::test_metas`) for a
//! model folder, so `tools/make_fixtures.sh` can run the NumPy reference on them.
//!
//!     cargo run --release --example write_test_adapters -- MODEL_DIR OUT_DIR [--tiny]
//!
//! With `--tiny`, MODEL_DIR is first filled with the tiny random BERT of the tests.

use aside_adapters::testing::{random_adapter, test_metas};
use aside_adapters::{format, Dims};
use aside_backbone::{Backbone, LoadOptions};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (model, out) = (
        std::path::Path::new(&args[1]),
        std::path::Path::new(&args[2]),
    );
    if args.iter().any(|a| a == "--tiny") {
        aside_backbone::testing::TinyBert::default()
            .write(model)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let b = Backbone::load(model, &LoadOptions::default())?;
    let dims = Dims::of(&b);
    std::fs::create_dir_all(out)?;
    for (i, (label, meta)) in test_metas(b.sha256()).into_iter().enumerate() {
        let a = random_adapter(&meta, &dims, b.bert(), 100 + i as u64);
        std::fs::write(
            out.join(format!("{label}.safetensors")),
            format::write_adapter(&a)?,
        )?;
        println!("{label}: {} parameters", a.param_count());
    }
    Ok(())
}
