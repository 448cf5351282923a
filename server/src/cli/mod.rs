//! Command-line parsing and dispatch to each subcommand.

pub mod adapter;
mod bench;
mod bench_adapters;
mod bench_index;
mod embed;
mod eval;
mod healthcheck;
mod plot;
pub mod serve;
mod train;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// aside: many retrieval tasks served from one frozen backbone, each a small adapter.
#[derive(Debug, Parser)]
#[command(name = "aside", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API.
    Serve(serve::ServeArgs),
    /// Embed JSONL from stdin (`{"id", "text"}` per line) to JSONL on stdout.
    Embed(embed::EmbedArgs),
    /// Evaluate retrieval (and re-ranking) on a BEIR folder.
    Eval(eval::EvalArgs),
    /// Train an adapter (or fine-tune the whole backbone) on a BEIR folder.
    Train(Box<train::TrainArgs>),
    /// Exit 0 when a local server answers GET /health (for container health checks).
    Healthcheck(healthcheck::HealthcheckArgs),
    /// Plot the loss curves of training runs into one PNG.
    Plot(plot::PlotArgs),
    /// Measure throughput.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Inspect or convert adapter files.
    #[command(subcommand)]
    Adapter(adapter::AdapterCommand),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(a) => serve::run(a),
        Command::Embed(a) => embed::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Train(a) => train::run(*a),
        Command::Plot(a) => plot::run(a),
        Command::Healthcheck(a) => healthcheck::run(a),
        Command::Adapter(c) => adapter::run(c),
        Command::Bench(BenchCommand::Encode(a)) => bench::run(a),
        Command::Bench(BenchCommand::Adapters(a)) => bench_adapters::run(a),
        Command::Bench(BenchCommand::Index(a)) => bench_index::run(a),
    }
}

/// The default model folder, relative to the working directory.
pub fn default_model_dir() -> PathBuf {
    PathBuf::from("models/all-MiniLM-L6-v2")
}

/// The backbone every subcommand loads: one `--model` flag, declared once.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// Model folder (config.json, tokenizer.json, model.safetensors).
    #[arg(
        id = "model",
        long = "model",
        env = "ASIDE_MODEL",
        default_value_os_t = default_model_dir()
    )]
    pub dir: PathBuf,
    /// cpu, or cuda / cuda:N (a build with the `cuda` feature); `serve` also takes a
    /// list, cuda:0,cuda:1, and runs one inference worker per GPU.
    #[arg(long, env = "ASIDE_DEVICE", default_value = "cpu")]
    pub device: String,
}

impl ModelArgs {
    /// The devices `--device` names, in order (at least one).
    pub fn devices(&self) -> anyhow::Result<Vec<candle_core::Device>> {
        self.device
            .split(',')
            .map(|d| parse_device(d.trim()))
            .collect()
    }

    /// Loads the backbone on the first device `--device` names (the options' device
    /// is replaced); a missing folder says how to name one.
    pub fn load(
        &self,
        opts: &aside_backbone::LoadOptions,
    ) -> anyhow::Result<aside_backbone::Backbone> {
        let device = self.devices()?.remove(0);
        self.load_on(&aside_backbone::LoadOptions {
            device,
            precision: opts.precision,
        })
    }

    /// Loads the backbone with exactly these options.
    pub fn load_on(
        &self,
        opts: &aside_backbone::LoadOptions,
    ) -> anyhow::Result<aside_backbone::Backbone> {
        let dir = &self.dir;
        if !dir.join("config.json").is_file() {
            let cwd = std::env::current_dir()
                .map(|d| format!(" (relative to {})", d.display()))
                .unwrap_or_default();
            let shown = if dir.is_relative() {
                format!("{}{cwd}", dir.display())
            } else {
                dir.display().to_string()
            };
            anyhow::bail!(
                "no model folder at {shown}: pass --model DIR (or set ASIDE_MODEL) to a folder with config.json, tokenizer.json and model.safetensors; in the checkout, scripts/fetch-model.sh fetches the default model to {}",
                default_model_dir().display()
            );
        }
        aside_backbone::Backbone::load(dir, opts)
            .map_err(anyhow::Error::msg)
            .map_err(|e| e.context(format!("loading model from {}", dir.display())))
    }
}

/// `cpu`, `cuda` or `cuda:N`. Without the `cuda` feature a GPU is refused by name; in
/// a `cuda` build on a machine without a GPU or driver, CUDA's own error says which.
pub fn parse_device(s: &str) -> anyhow::Result<candle_core::Device> {
    let cuda = |n: usize| -> anyhow::Result<candle_core::Device> {
        if !cfg!(feature = "cuda") {
            anyhow::bail!(
                "--device {s}: this build has no GPU support (build with `--features cuda`, or use the CUDA image)"
            );
        }
        candle_core::Device::new_cuda(n)
            .map_err(|e| anyhow::anyhow!("--device {s}: no usable CUDA device {n}: {e}"))
    };
    match s {
        "cpu" => Ok(candle_core::Device::Cpu),
        "cuda" => cuda(0),
        _ => match s.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(n) => cuda(n),
            None => anyhow::bail!("--device: expected cpu, cuda or cuda:N, got `{s}`"),
        },
    }
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Corpus encoding throughput (docs/s, tokens/s).
    Encode(bench::BenchArgs),
    /// Adapter overhead, mixed-adapter batches, load time, resident memory.
    Adapters(bench_adapters::BenchAdaptersArgs),
    /// HNSW build, recall and QPS; durable upsert throughput.
    Index(bench_index::BenchIndexArgs),
}
