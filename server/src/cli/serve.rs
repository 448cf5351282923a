//! `aside serve`: the HTTP server on one backbone, with state under `--data-dir`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use aside_adapters::{Dims, Registry, RegistryOptions};
use aside_backbone::LoadOptions;
use aside_index::milvus::{MilvusOptions, MilvusStore};
use aside_index::{Index, StoreKind};
use clap::Args;

use crate::core::batcher::{BatchConfig, Batcher};
use crate::core::{Core, Limits, Shared, Stores};
use crate::metrics::Metrics;

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: super::ModelArgs,
    /// Where adapters and collections are stored.
    #[arg(long, env = "ASIDE_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    #[arg(long, env = "ASIDE_HOST", default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, env = "ASIDE_PORT", default_value_t = 8080)]
    pub port: u16,
    /// Arithmetic of the backbone's linears: f32; int8 (AVX-512 VNNI; faster,
    /// embeddings within 0.999 cosine of f32); int8-fast (one int8 weight plane:
    /// faster again, within 0.995); f16 or bf16 (a GPU's types: candle's ops,
    /// LayerNorm in f32; on the CPU slower than f32).
    #[arg(long, env = "ASIDE_PRECISION", default_value = "f32")]
    pub precision: aside_backbone::Precision,
    /// gRPC port (same host); 0 picks a free one.
    #[arg(long, env = "ASIDE_GRPC_PORT", default_value_t = 50051)]
    pub grpc_port: u16,
    /// Serve HTTP only.
    #[arg(long, env = "ASIDE_NO_GRPC")]
    pub no_grpc: bool,
    /// Tokens per input, special tokens included.
    #[arg(long, env = "ASIDE_MAX_LENGTH", default_value_t = aside_backbone::DEFAULT_MAX_LENGTH)]
    pub max_length: usize,
    /// Answer 413 for inputs longer than --max-length instead of truncating them.
    #[arg(long, env = "ASIDE_REJECT_LONG_INPUTS")]
    pub reject_long_inputs: bool,
    /// Inputs per request.
    #[arg(long, env = "ASIDE_MAX_INPUTS", default_value_t = 256)]
    pub max_inputs: usize,
    /// Documents in one upsert request (embedded in batches of --max-inputs; the
    /// whole request is one durable write).
    #[arg(long, env = "ASIDE_MAX_DOCUMENTS", default_value_t = 10_000)]
    pub max_documents: usize,
    /// Request body limit in bytes (all routes but adapter upload).
    #[arg(long, env = "ASIDE_BODY_LIMIT", default_value_t = 32 << 20)]
    pub body_limit: usize,
    /// Adapter upload body limit in bytes.
    #[arg(long, env = "ASIDE_ADAPTER_BODY_LIMIT", default_value_t = 256 << 20)]
    pub adapter_body_limit: usize,
    /// Requests in flight before 429.
    #[arg(long, env = "ASIDE_MAX_IN_FLIGHT", default_value_t = 512)]
    pub max_in_flight: usize,
    /// Seconds before a request is answered 504.
    #[arg(long, env = "ASIDE_REQUEST_TIMEOUT", default_value_t = 120)]
    pub request_timeout: u64,
    /// Seconds a client has to send a request's headers; also the longest an HTTP
    /// connection stays open idle between requests.
    #[arg(long, env = "ASIDE_HEADER_TIMEOUT", default_value_t = 30)]
    pub header_timeout: u64,
    /// Seconds a client has to send a request's body (408 after that); the body is
    /// read before the request counts against --max-in-flight.
    #[arg(long, env = "ASIDE_BODY_TIMEOUT", default_value_t = 120)]
    pub body_timeout: u64,
    /// Key for writes (adapters, collections, documents); unset: writes are open.
    #[arg(long, env = "ASIDE_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    /// Key for embed, search and rerank; unset: reads are open.
    #[arg(long, env = "ASIDE_READ_KEY", hide_env_values = true)]
    pub read_key: Option<String>,
    /// Where collections go when their creation names no store: local (this
    /// server's --data-dir) or milvus (the cluster at --milvus-url, shared by every
    /// replica started with it).
    #[arg(long, env = "ASIDE_STORE", default_value = "local")]
    pub store: aside_index::StoreKind,
    /// The Milvus cluster's address, `http://host:19530`; enables the Milvus store.
    #[arg(long, env = "ASIDE_MILVUS_URL")]
    pub milvus_url: Option<String>,
    /// Milvus credentials: `user:password` or an API key.
    #[arg(long, env = "ASIDE_MILVUS_TOKEN", hide_env_values = true)]
    pub milvus_token: Option<String>,
    /// Milvus database (its `default` when unset).
    #[arg(long, env = "ASIDE_MILVUS_DB")]
    pub milvus_db: Option<String>,
    /// Bytes of adapter tensors kept resident (LRU beyond that).
    #[arg(long, env = "ASIDE_ADAPTER_MEMORY", default_value_t = 1 << 30)]
    pub adapter_memory: usize,
    /// Bytes of adapter copies each GPU keeps (or, on the CPU in f16/bf16, the
    /// converted copies): counted apart from --adapter-memory, least recently used
    /// dropped beyond it.
    #[arg(long, env = "ASIDE_ADAPTER_DEVICE_MEMORY", default_value_t = 1 << 30)]
    pub adapter_device_memory: usize,
    /// Largest batch the queue gathers (inputs).
    #[arg(long, env = "ASIDE_MAX_BATCH", default_value_t = 64)]
    pub max_batch: usize,
    /// Token budget of one gathered batch.
    #[arg(long, env = "ASIDE_MAX_BATCH_TOKENS", default_value_t = 16384)]
    pub max_batch_tokens: usize,
    /// The most microseconds a batch waits for more requests after its first (with
    /// a --batch-gap-us above 0).
    #[arg(long, env = "ASIDE_MAX_WAIT_US", default_value_t = 8000)]
    pub max_wait_us: u64,
    /// A batch runs once no request has arrived for this many microseconds (a burst
    /// is gathered up to --max-wait-us). 0: a free worker takes what is queued (up to
    /// an even share per worker) and runs it at once; under load the queue fills
    /// while the workers compute, so batches grow by themselves.
    #[arg(long, env = "ASIDE_BATCH_GAP_US", default_value_t = 0)]
    pub batch_gap_us: u64,
    /// Inference workers per device: one gathers a batch while the others run
    /// theirs (0: one per thread of the compute pool on the CPU, one per GPU).
    #[arg(long, env = "ASIDE_INFERENCE_WORKERS", default_value_t = 0)]
    pub inference_workers: usize,
    /// A batch of more tokens than this splits each forward across every core;
    /// a smaller one (a few queries) runs on one core, beside the other workers'.
    #[arg(long, env = "ASIDE_PARALLEL_BATCH_TOKENS", default_value_t = 2048)]
    pub parallel_batch_tokens: usize,
}

/// Everything `serve` builds before listening (tests build the same).
pub fn build_state(a: &ServeArgs) -> anyhow::Result<Shared> {
    let t0 = Instant::now();
    // One backbone per device: its own copy of the weights, its own worker.
    let backbones = a
        .model
        .devices()?
        .into_iter()
        .map(|device| {
            Ok(Arc::new(a.model.load_on(&LoadOptions {
                device,
                precision: a.precision,
            })?))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let backbone = backbones[0].clone();
    let registry = Registry::open(
        &a.data_dir.join("adapters"),
        Dims::of(&backbone),
        RegistryOptions {
            memory_budget_bytes: a.adapter_memory,
            max_file_bytes: a.adapter_body_limit as u64,
            // Replicas on a Milvus store share --data-dir: adapters written by one
            // are picked up by the others.
            shared: a.milvus_url.is_some(),
        },
    )
    .context("opening the adapter store")?;
    for w in registry.warnings() {
        tracing::warn!("{w}");
    }
    let index = Index::open(&a.data_dir.join("collections")).context("opening collections")?;
    for w in index.warnings() {
        tracing::warn!("{w}");
    }
    for c in index.list() {
        for d in c.damage() {
            tracing::error!(collection = %c.config().name, "data lost: {d}");
        }
    }
    let milvus = match (&a.milvus_url, a.store) {
        (Some(url), _) => Some(Arc::new(MilvusStore::new(MilvusOptions {
            url: url.clone(),
            token: a.milvus_token.clone().filter(|t| !t.is_empty()),
            database: a.milvus_db.clone().filter(|d| !d.is_empty()),
        }))),
        (None, StoreKind::Milvus) => {
            anyhow::bail!("--store milvus needs --milvus-url (the Milvus cluster's address)")
        }
        (None, StoreKind::Local) => None,
    };
    let stores = Stores::new(Arc::new(index), milvus, a.store, a.data_dir.join("leases"));
    let metrics = Arc::new(Metrics::default());
    let batcher = Batcher::start_on(
        backbones,
        BatchConfig {
            max_items: a.max_batch,
            max_tokens: a.max_batch_tokens,
            max_wait: Duration::from_micros(a.max_wait_us),
            max_gap: Duration::from_micros(a.batch_gap_us.min(a.max_wait_us)),
            forward_batch: 32,
            workers: match a.inference_workers {
                0 if backbone.bert().device().is_cpu() => BatchConfig::default().workers,
                0 => 1,
                n => n,
            },
            parallel_tokens: a.parallel_batch_tokens,
            device_adapter_bytes: a.adapter_device_memory,
        },
        metrics.clone(),
    );
    let cfg = Limits {
        max_length: a.max_length,
        reject_long_inputs: a.reject_long_inputs,
        max_inputs: a.max_inputs,
        max_documents: a.max_documents.max(1),
        max_batch_tokens: a.max_batch_tokens,
        body_limit: a.body_limit,
        adapter_body_limit: a.adapter_body_limit,
        max_in_flight: a.max_in_flight,
        request_timeout: Duration::from_secs(a.request_timeout),
        header_timeout: Duration::from_secs(a.header_timeout.max(1)),
        body_timeout: Duration::from_secs(a.body_timeout.max(1)),
        admin_key: a.admin_key.clone().filter(|k| !k.is_empty()),
        read_key: a.read_key.clone().filter(|k| !k.is_empty()),
    };
    backbone.check_options(&aside_backbone::EncodeOptions {
        max_length: cfg.max_length,
        batch_size: 1,
    })?;
    tracing::info!(
        model = %a.model.dir.display(),
        adapters = registry.list().len(),
        collections = stores.local.list().len(),
        store = %a.store,
        seconds = t0.elapsed().as_secs_f64(),
        "loaded"
    );
    Ok(Core::new(
        backbone,
        Arc::new(registry),
        stores,
        batcher,
        metrics,
        cfg,
    ))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: no new connections, finishing requests in flight");
}

pub fn run(a: ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ASIDE_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let state = build_state(&a)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        state.resume_reembeds().await;
        if state.stores.milvus.is_some() {
            state.watch_shared(Duration::from_secs(2));
        }
        let addr: SocketAddr = format!("{}:{}", a.host, a.port)
            .parse()
            .with_context(|| format!("invalid address {}:{}", a.host, a.port))?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let router = crate::http::router(state.clone());
        // One shutdown signal for both transports.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = stop_tx.send(true);
        });
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let grpc = if a.no_grpc {
            None
        } else {
            let gaddr: SocketAddr = format!("{}:{}", a.host, a.grpc_port)
                .parse()
                .with_context(|| format!("invalid address {}:{}", a.host, a.grpc_port))?;
            let gl = tokio::net::TcpListener::bind(gaddr)
                .await
                .with_context(|| format!("binding {gaddr} for gRPC"))?;
            tracing::info!("grpc listening on {}", gl.local_addr()?);
            Some(tokio::spawn(crate::grpc::serve(
                state.clone(),
                gl,
                stopped(stop_rx.clone()),
            )))
        };
        tracing::info!("listening on http://{}", listener.local_addr()?);
        crate::http::serve::serve(
            listener,
            router,
            state.limits.header_timeout,
            stopped(stop_rx),
        )
        .await?;
        if let Some(g) = grpc {
            g.await??;
        }
        tracing::info!("stopped");
        Ok(())
    })
}
