//! `aside adapter inspect FILE` and `aside adapter convert --peft DIR -o FILE`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use aside_adapters::{format, peft, Adapter, Dims};
use aside_backbone::{Backbone, LoadOptions};
use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub enum AdapterCommand {
    /// Validate an adapter (native file or PEFT folder) and print what it is.
    Inspect(InspectArgs),
    /// Convert a Hugging Face PEFT LoRA folder to a native adapter file.
    Convert(ConvertArgs),
    /// Write a fresh adapter (method.md's initialisation: the identity until trained).
    Init(InitArgs),
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// iaa-s, iaa-l, iaa-m, houlsby, lora or bitfit.
    #[arg(long)]
    pub kind: aside_adapters::Kind,
    /// retrieval or rerank.
    #[arg(long, default_value = "retrieval")]
    pub task: aside_adapters::Task,
    #[command(flatten)]
    pub shape: ShapeArgs,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    #[command(flatten)]
    pub model: super::ModelArgs,
}

/// The sizes and options of a new adapter.
#[derive(Debug, Args)]
pub struct ShapeArgs {
    /// Inner (or LoRA) rank.
    #[arg(long)]
    pub r: Option<usize>,
    /// Aside rank (iaa-*).
    #[arg(long)]
    pub ar: Option<usize>,
    /// Adapter activation: relu, gelu, swish or tanh.
    #[arg(long, default_value = "relu")]
    pub activation: aside_adapters::Activation,
    /// LoRA targets, comma-separated (query,key,value,attn_out,inter,out).
    #[arg(long, default_value = "query,value")]
    pub lora_targets: String,
    /// LoRA α (default: r, a scale of 1).
    #[arg(long)]
    pub lora_alpha: Option<f64>,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A native `.safetensors` adapter, or a PEFT folder.
    pub file: PathBuf,
    #[command(flatten)]
    pub model: super::ModelArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// PEFT folder (`adapter_config.json` + `adapter_model.safetensors`).
    #[arg(long)]
    pub peft: PathBuf,
    /// Output native adapter file.
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    #[command(flatten)]
    pub model: super::ModelArgs,
}

/// Loads an adapter for `backbone`: a native file, or a PEFT folder converted on the fly.
pub fn load_adapter(path: &Path, backbone: &Backbone) -> anyhow::Result<Adapter> {
    let dims = Dims::of(backbone);
    let adapter = if path.is_dir() {
        peft::convert_dir(path, &dims)
            .with_context(|| format!("PEFT adapter {}", path.display()))?
    } else {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        format::read_adapter(&bytes, &dims, u64::MAX)
            .with_context(|| format!("adapter {}", path.display()))?
    };
    // On a GPU, or in f16/bf16, the adapter's tensors move to the backbone once.
    Ok(adapter.for_backbone(backbone)?)
}

pub fn run(cmd: AdapterCommand) -> anyhow::Result<()> {
    match cmd {
        AdapterCommand::Inspect(a) => inspect(a),
        AdapterCommand::Convert(a) => convert(a),
        AdapterCommand::Init(a) => init(a),
    }
}

fn load_backbone(model: &super::ModelArgs) -> anyhow::Result<Backbone> {
    model.load(&LoadOptions::default())
}

fn inspect(a: InspectArgs) -> anyhow::Result<()> {
    let backbone = load_backbone(&a.model)?;
    let adapter = load_adapter(&a.file, &backbone)?;
    let m = adapter.meta();
    let total = backbone.bert().parameter_count();
    let pct = 100.0 * adapter.param_count() as f64 / total as f64;
    let pool = adapter.pooling(backbone.pooling());
    if a.json {
        let v = serde_json::json!({
            "kind": m.kind.name(), "task": m.task.name(), "r": m.r, "ar": m.ar,
            "activation": m.activation.name(), "params": adapter.param_count(),
            "params_percent": pct, "backbone_params": total,
            "pooling": pool.pooling.to_string(), "normalize": pool.normalize,
            "lora_targets": m.lora_targets.iter().map(|s| s.name()).collect::<Vec<_>>(),
            "backbone": m.backbone,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("kind:        {}", m.kind);
    println!("task:        {}", m.task);
    if let Some(r) = m.r {
        println!("r:           {r}");
    }
    if let Some(ar) = m.ar {
        println!("ar:          {ar}");
    }
    println!("activation:  {}", m.activation.name());
    if m.kind == aside_adapters::Kind::Lora {
        let t: Vec<&str> = m.lora_targets.iter().map(|s| s.name()).collect();
        println!(
            "lora:        targets {} alpha {} scale {}",
            t.join(","),
            m.lora_alpha.unwrap_or(0.0),
            m.lora_scale()
        );
    }
    println!(
        "pooling:     {} (normalize {})",
        pool.pooling, pool.normalize
    );
    println!(
        "parameters:  {} ({pct:.3}% of the backbone's {total})",
        adapter.param_count()
    );
    println!(
        "backbone:    {}",
        m.backbone.as_deref().unwrap_or("(not recorded)")
    );
    Ok(())
}

fn convert(a: ConvertArgs) -> anyhow::Result<()> {
    let backbone = load_backbone(&a.model)?;
    let adapter = peft::convert_dir(&a.peft, &Dims::of(&backbone))
        .with_context(|| format!("PEFT adapter {}", a.peft.display()))?;
    let mut meta = adapter.meta().clone();
    meta.backbone = Some(backbone.sha256().to_owned());
    let bytes = format::write_tensors(&meta.to_map(), adapter.tensors())?;
    std::fs::write(&a.output, bytes).with_context(|| format!("writing {}", a.output.display()))?;
    eprintln!(
        "wrote {} (lora, r={}, {} parameters)",
        a.output.display(),
        meta.r.unwrap_or(0),
        adapter.param_count()
    );
    Ok(())
}

/// The metadata of a new adapter from command-line settings, checked like a file.
pub fn meta_from(
    kind: aside_adapters::Kind,
    task: aside_adapters::Task,
    a: &ShapeArgs,
    backbone: &Backbone,
) -> anyhow::Result<aside_adapters::Meta> {
    let mut m = aside_adapters::Meta::new(kind, task);
    m.r = a.r;
    m.ar = a.ar;
    m.activation = a.activation;
    m.backbone = Some(backbone.sha256().to_owned());
    if kind == aside_adapters::Kind::Lora {
        m.lora_alpha = a.lora_alpha;
        for t in a.lora_targets.split(',') {
            m.lora_targets.push(
                aside_backbone::Site::from_name(t.trim())
                    .ok_or_else(|| anyhow::anyhow!("unknown LoRA target `{t}`"))?,
            );
        }
    }
    // Round-trip through the strict parser: missing or inapplicable ranks are named.
    Ok(aside_adapters::Meta::parse(&m.to_map())?)
}

fn init(a: InitArgs) -> anyhow::Result<()> {
    let backbone = load_backbone(&a.model)?;
    let meta = meta_from(a.kind, a.task, &a.shape, &backbone)?;
    let dims = Dims::of(&backbone);
    let tensors = Adapter::init_tensors(
        &meta,
        &dims,
        backbone.bert(),
        a.seed,
        backbone.bert().device(),
    )?;
    let adapter = Adapter::from_tensors(meta, tensors, &dims)?;
    std::fs::write(&a.output, format::write_adapter(&adapter)?)
        .with_context(|| format!("writing {}", a.output.display()))?;
    eprintln!(
        "wrote {} ({} {}, {} parameters, {:.3}% of the backbone)",
        a.output.display(),
        adapter.kind(),
        adapter.task(),
        adapter.param_count(),
        100.0 * adapter.param_count() as f64 / backbone.bert().parameter_count() as f64
    );
    Ok(())
}
