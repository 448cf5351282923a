//! `aside embed`: JSONL in (`{"id", "text"}`), JSONL out (`{"id", "embedding"}`), same order.
//! All input is validated before anything is printed, so a malformed line produces
//! an error naming it and no output at all.

use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;

use anyhow::{bail, Context};
use aside_adapters::Task;
use aside_backbone::{EncodeOptions, Hooks, Input, Item, LoadOptions};
use clap::Args;
use serde::Deserialize;

#[derive(Debug, Args)]
pub struct EmbedArgs {
    #[command(flatten)]
    pub model: super::ModelArgs,
    /// Adapter to apply: a native `.safetensors` file or a PEFT LoRA folder.
    #[arg(long, env = "ASIDE_ADAPTER")]
    pub adapter: Option<PathBuf>,
    /// Maximum tokens per input, special tokens included; longer inputs are truncated.
    #[arg(long, env = "ASIDE_MAX_LENGTH", default_value_t = aside_backbone::DEFAULT_MAX_LENGTH)]
    pub max_length: usize,
    /// Inputs per forward pass.
    #[arg(long, env = "ASIDE_BATCH_SIZE", default_value_t = aside_backbone::DEFAULT_BATCH_SIZE)]
    pub batch_size: usize,
    /// Arithmetic of the backbone's linears: f32; int8 (AVX-512 VNNI; faster,
    /// embeddings within 0.999 cosine of f32); or int8-fast (one int8 weight plane:
    /// faster again, within 0.995).
    #[arg(long, env = "ASIDE_PRECISION", default_value = "f32")]
    pub precision: aside_backbone::Precision,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    id: serde_json::Value,
    text: String,
}

/// Parses JSONL input; blank lines are skipped, anything else malformed is an error.
fn read_lines(input: impl BufRead) -> anyhow::Result<Vec<Line>> {
    let mut out = Vec::new();
    for (n, line) in input.lines().enumerate() {
        let line = line.with_context(|| format!("reading input line {}", n + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed: Line = serde_json::from_str(&line).map_err(|e| {
            anyhow::anyhow!(
                "input line {}: expected {{\"id\": \"...\", \"text\": \"...\"}}: {e}",
                n + 1
            )
        })?;
        if !(parsed.id.is_string() || parsed.id.is_number()) {
            bail!("input line {}: `id` must be a string or a number", n + 1);
        }
        out.push(parsed);
    }
    Ok(out)
}

pub fn run(a: EmbedArgs) -> anyhow::Result<()> {
    let lines = read_lines(std::io::stdin().lock())?;
    let backbone = a.model.load(&LoadOptions {
        precision: a.precision,
        ..Default::default()
    })?;
    let opts = EncodeOptions {
        max_length: a.max_length,
        batch_size: a.batch_size,
    };
    backbone.check_options(&opts)?;
    let adapter = match &a.adapter {
        Some(p) => Some(super::adapter::load_adapter(p, &backbone)?),
        None => None,
    };
    if let Some(ad) = &adapter {
        if ad.task() == Task::Rerank {
            bail!("the adapter's task is rerank: it scores (query, document) pairs and makes no embeddings");
        }
    }
    let pool = match &adapter {
        Some(ad) => ad.pooling(backbone.pooling()),
        None => backbone.pooling(),
    };
    let hooks = adapter.as_ref().map(|a| a as &dyn Hooks);
    let items: Vec<Item<'_>> = lines
        .iter()
        .map(|l| Item {
            input: Input::Single(&l.text),
            hooks,
            pooling: pool.pooling,
            normalize: pool.normalize,
        })
        .collect();
    let vectors = backbone.encode(&items, &opts)?;
    let mut out = BufWriter::new(std::io::stdout().lock());
    for (line, v) in lines.iter().zip(vectors) {
        serde_json::to_writer(
            &mut out,
            &serde_json::json!({"id": line.id, "embedding": v}),
        )?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}
