//! The HTTP application: shared state, the router, and the middleware for keys,
//! limits and metrics. Handlers live in `adapters.rs`, `collections.rs` and
//! `inference.rs`; every error goes through `error.rs`.

pub mod adapters;
pub mod batcher;
pub mod collections;
pub mod error;
pub mod inference;
pub mod metrics;
pub mod openapi;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aside_adapters::{Adapter, Registry};
use aside_backbone::Backbone;
use aside_index::Index;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Request, State};
use axum::http::{HeaderMap, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::Router;
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;

use self::batcher::{Batcher, Text};
use self::error::ApiError;
use self::metrics::Metrics;

/// Limits and keys of a running server.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Tokens per input (special tokens included).
    pub max_length: usize,
    /// Answer 413 for longer inputs instead of truncating them.
    pub reject_long_inputs: bool,
    pub max_inputs: usize,
    pub body_limit: usize,
    pub adapter_body_limit: usize,
    pub max_in_flight: usize,
    pub request_timeout: Duration,
    pub admin_key: Option<String>,
    pub read_key: Option<String>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            max_length: aside_backbone::DEFAULT_MAX_LENGTH,
            reject_long_inputs: false,
            max_inputs: 256,
            body_limit: 2 << 20,
            adapter_body_limit: 256 << 20,
            max_in_flight: 512,
            request_timeout: Duration::from_secs(120),
            admin_key: None,
            read_key: None,
        }
    }
}

/// Progress of a collection's background re-embedding.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Reembed {
    pub target_version: String,
    pub done: usize,
    pub total: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub struct AppState {
    pub backbone: Arc<Backbone>,
    pub registry: Arc<Registry>,
    pub index: Arc<Index>,
    pub batcher: Batcher,
    pub metrics: Arc<Metrics>,
    pub cfg: ServeConfig,
    pub in_flight: Arc<Semaphore>,
    pub reembeds: Mutex<HashMap<String, Reembed>>,
    pub started: Instant,
}

pub type Shared = Arc<AppState>;

impl AppState {
    /// Embeds texts through the batcher with an adapter (or the bare backbone).
    pub async fn embed(
        &self,
        texts: Vec<Text>,
        adapter: Option<Arc<Adapter>>,
    ) -> Result<Vec<Vec<f32>>, ApiError> {
        self.check_lengths(&texts)?;
        let pooling = match &adapter {
            Some(a) => a.pooling(self.backbone.pooling()),
            None => self.backbone.pooling(),
        };
        self.batcher
            .submit(texts, adapter, pooling, self.cfg.max_length)
            .await
            .map_err(ApiError::Internal)
    }

    fn check_lengths(&self, texts: &[Text]) -> Result<(), ApiError> {
        if texts.len() > self.cfg.max_inputs {
            return Err(ApiError::TooLarge(format!(
                "{} inputs in one request; the limit is {}",
                texts.len(),
                self.cfg.max_inputs
            )));
        }
        if !self.cfg.reject_long_inputs {
            return Ok(());
        }
        let inputs: Vec<aside_backbone::Input<'_>> = texts
            .iter()
            .map(|t| match t {
                Text::Single(a) => aside_backbone::Input::Single(a),
                Text::Pair(a, b) => aside_backbone::Input::Pair(a, b),
            })
            .collect();
        let limit = self.cfg.max_length;
        let enc = self.backbone.tokens().encode(&inputs, 100_000)?;
        if let Some((i, e)) = enc.iter().enumerate().find(|(_, e)| e.ids.len() > limit) {
            return Err(ApiError::TooLarge(format!(
                "input {i} has {} tokens; the limit is {limit}",
                e.ids.len()
            )));
        }
        Ok(())
    }
}

/// Runs blocking work (fsync, index writes, adapter parsing) off the async workers.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
}

/// JSON extractor whose rejections use the API's error body.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(r) => {
                let status = r.status();
                let msg = r.body_text();
                if status == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    Err(ApiError::TooLarge(msg))
                } else {
                    Err(ApiError::BadRequest(msg))
                }
            }
        }
    }
}

/// The whole API (tests call this without a socket).
pub fn router(state: Shared) -> Router {
    let upload = Router::new()
        .route("/v1/adapters/{name}", put(adapters::put_adapter))
        .layer(DefaultBodyLimit::max(state.cfg.adapter_body_limit));
    Router::new()
        .route("/v1/adapters", get(adapters::list))
        .route(
            "/v1/adapters/{name}",
            get(adapters::get_one).delete(adapters::delete_adapter),
        )
        .merge(upload)
        .route("/v1/embed", post(inference::embed))
        .route("/v1/rerank", post(inference::rerank))
        .route("/embed", post(inference::tei_embed))
        .route("/rerank", post(inference::tei_rerank))
        .route("/v1/embeddings", post(inference::openai_embeddings))
        .route("/v1/collections", get(collections::list))
        .route(
            "/v1/collections/{name}",
            put(collections::create)
                .get(collections::get_one)
                .delete(collections::delete_one),
        )
        .route(
            "/v1/collections/{name}/documents",
            post(collections::upsert),
        )
        .route(
            "/v1/collections/{name}/documents/{id}",
            delete(collections::delete_document).get(collections::get_document),
        )
        .route("/v1/collections/{name}/search", post(collections::search))
        .route(
            "/health",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .route(
            "/ready",
            get(|| async { axum::Json(serde_json::json!({"status": "ready"})) }),
        )
        .route("/metrics", get(metrics_route))
        .route("/info", get(info))
        .route("/openapi.json", get(openapi::spec))
        .route("/docs", get(openapi::docs))
        .layer(DefaultBodyLimit::max(state.cfg.body_limit))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

async fn metrics_route(State(s): State<Shared>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        s.metrics.render(s.batcher.depth(), &s.registry.stats()),
    )
        .into_response()
}

async fn info(State(s): State<Shared>) -> axum::Json<serde_json::Value> {
    let c = s.backbone.config();
    axum::Json(serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "model": s.backbone.files().dir.display().to_string(),
        "backbone_sha256": s.backbone.sha256(),
        "precision": s.backbone.bert().precision().name(),
        "hidden_size": c.hidden_size,
        "layers": c.num_hidden_layers,
        "backbone_params": s.backbone.bert().parameter_count(),
        "pooling": s.backbone.pooling().pooling.to_string(),
        "normalize": s.backbone.pooling().normalize,
        "max_length": s.cfg.max_length,
        "max_inputs": s.cfg.max_inputs,
        "adapters": s.registry.list().len(),
        "collections": s.index.list().len(),
        "uptime_seconds": s.started.elapsed().as_secs(),
    }))
}

/// Which key a route needs.
fn needs_admin(method: &Method, path: &str) -> bool {
    let write = matches!(*method, Method::PUT | Method::DELETE)
        || (*method == Method::POST && path.ends_with("/documents"));
    write && (path.starts_with("/v1/adapters") || path.starts_with("/v1/collections"))
}

fn presented_key(h: &HeaderMap) -> Option<&str> {
    if let Some(v) = h.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(v);
    }
    h.get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// Keys, the in-flight limit, the request timeout, and metrics, for every route.
async fn guard(State(s): State<Shared>, req: Request<Body>, next: Next) -> Response {
    let t0 = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let open = matches!(route.as_str(), "/health" | "/ready" | "/metrics");
    let adapter = req
        .uri()
        .path()
        .strip_prefix("/v1/adapters/")
        .unwrap_or("")
        .to_owned();
    let resp = if open {
        next.run(req).await
    } else {
        match authorize(&s, req.method(), &route, req.headers()) {
            Err(e) => e.into_response(),
            Ok(()) => match s.in_flight.clone().try_acquire_owned() {
                Err(_) => ApiError::Overloaded(1).into_response(),
                Ok(_permit) => {
                    match tokio::time::timeout(s.cfg.request_timeout, next.run(req)).await {
                        Ok(r) => r,
                        Err(_) => ApiError::Timeout.into_response(),
                    }
                }
            },
        }
    };
    let label = resp
        .headers()
        .get("x-aside-adapter")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .unwrap_or(adapter);
    s.metrics.request(
        &route,
        &label,
        resp.status().as_u16(),
        t0.elapsed().as_secs_f64(),
    );
    resp
}

fn authorize(s: &AppState, method: &Method, route: &str, h: &HeaderMap) -> Result<(), ApiError> {
    let key = presented_key(h);
    let is_admin = |k: &str| s.cfg.admin_key.as_deref() == Some(k);
    let is_read = |k: &str| s.cfg.read_key.as_deref() == Some(k);
    if needs_admin(method, route) {
        if s.cfg.admin_key.is_none() {
            return Ok(());
        }
        return match key {
            None => Err(ApiError::Unauthorized),
            Some(k) if is_admin(k) => Ok(()),
            Some(k) if is_read(k) => Err(ApiError::Forbidden),
            Some(_) => Err(ApiError::Unauthorized),
        };
    }
    if s.cfg.read_key.is_none() && s.cfg.admin_key.is_none() {
        return Ok(());
    }
    match key {
        Some(k) if is_admin(k) || is_read(k) => Ok(()),
        None if s.cfg.read_key.is_none() => Ok(()),
        _ => Err(ApiError::Unauthorized),
    }
}
