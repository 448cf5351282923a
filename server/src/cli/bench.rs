//! `aside bench encode`: corpus-encoding throughput on a BEIR corpus (title + " " + text),
//! the figure the README reports. Prints docs/s and tokens/s for each timed repeat.

use std::io::BufRead;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use aside_backbone::{EncodeOptions, Input, LoadOptions};
use clap::Args;

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: super::ModelArgs,
    /// BEIR folder with `corpus.jsonl`.
    #[arg(long)]
    pub data: PathBuf,
    /// Documents to encode (the corpus's first N).
    #[arg(long, default_value_t = 512)]
    pub docs: usize,
    #[arg(long, default_value_t = aside_backbone::DEFAULT_MAX_LENGTH)]
    pub max_length: usize,
    #[arg(long, default_value_t = aside_backbone::DEFAULT_BATCH_SIZE)]
    pub batch_size: usize,
    /// Timed repeats after one warm-up pass over a single batch.
    #[arg(long, default_value_t = 1)]
    pub repeats: usize,
    /// Arithmetic of the backbone's linears (f32, int8 or int8-fast). For int8 the run ends by
    /// encoding the same documents in f32 and printing the cosine between the two.
    #[arg(long, default_value = "f32")]
    pub precision: aside_backbone::Precision,
}

/// Reads `title + " " + text` of the first `n` documents of a BEIR corpus.
pub fn read_corpus(path: &std::path::Path, n: usize) -> anyhow::Result<Vec<(String, String)>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        if out.len() >= n {
            break;
        }
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("{} line {}", path.display(), i + 1))?;
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_owned();
        let title = s("title");
        let text = s("text");
        let doc = if title.is_empty() {
            text
        } else {
            format!("{title} {text}")
        };
        out.push((s("_id"), doc));
    }
    Ok(out)
}

pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    let backbone = a.model.load(&LoadOptions {
        precision: a.precision,
        ..Default::default()
    })?;
    let docs = read_corpus(&a.data.join("corpus.jsonl"), a.docs)?;
    let texts: Vec<&str> = docs.iter().map(|(_, t)| t.as_str()).collect();
    let opts = EncodeOptions {
        max_length: a.max_length,
        batch_size: a.batch_size,
    };
    let inputs: Vec<Input<'_>> = texts.iter().map(|t| Input::Single(t)).collect();
    let tokens: usize = backbone
        .tokens()
        .encode(&inputs, a.max_length)?
        .iter()
        .map(|e| e.ids.len())
        .sum();
    backbone.embed(&texts[..a.batch_size.min(texts.len())], &opts)?;
    println!(
        "encode: {} docs, {} tokens (max length {}, batch {}, {} threads, {})",
        texts.len(),
        tokens,
        a.max_length,
        a.batch_size,
        rayon_threads(),
        a.precision
    );
    let mut last = Vec::new();
    for r in 0..a.repeats {
        let t0 = Instant::now();
        last = backbone.embed(&texts, &opts)?;
        let s = t0.elapsed().as_secs_f64();
        println!(
            "repeat {}: {:.2} s, {:.1} docs/s, {:.0} tokens/s",
            r + 1,
            s,
            texts.len() as f64 / s,
            tokens as f64 / s
        );
    }
    if a.precision != aside_backbone::Precision::F32 && !last.is_empty() {
        drop(backbone);
        let reference = a
            .model
            .load(&LoadOptions::default())?
            .embed(&texts, &opts)?;
        let cos: Vec<f64> = last
            .iter()
            .zip(&reference)
            .map(|(x, y)| aside_backbone::pooling::cosine(x, y))
            .collect();
        let min = cos.iter().cloned().fold(f64::INFINITY, f64::min);
        let mean = cos.iter().sum::<f64>() / cos.len() as f64;
        println!(
            "{} vs f32 over {} docs: cosine min {min:.6}, mean {mean:.6}",
            a.precision,
            cos.len()
        );
    }
    Ok(())
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
