//! The HTTP transport: axum routes over the core. Each handler decodes, calls one
//! core method and encodes; `error.rs` maps every core error to a status and a
//! `{error, type}` body; the guard layer (`crate::guard`) holds keys, limits and
//! metrics; `openapi.rs` is generated from the same types.

pub mod compat;
pub mod error;
pub mod handlers;
pub mod json;
pub mod openapi;
pub mod serve;

use axum::extract::{DefaultBodyLimit, MatchedPath};
use axum::http::{Extensions, Method, Response, Uri};
use axum::routing::{delete, get, post, put};
use axum::Router;

use crate::core::{Error, Shared};
use crate::guard::{Access, GuardLayer, Route, Transport};

/// How HTTP names routes and answers refusals.
#[derive(Clone, Copy)]
pub struct Http;

impl Transport for Http {
    type ReqBody = axum::body::Body;
    type Body = axum::body::Body;

    fn read_body_first(&self, route: &Route, core: &Shared) -> Option<usize> {
        Some(match route.label.as_str() {
            "/v1/adapters/{name}" => core.limits.adapter_body_limit,
            _ => core.limits.body_limit,
        })
    }

    fn body_of(&self, bytes: bytes::Bytes) -> Self::ReqBody {
        axum::body::Body::from(bytes)
    }

    fn route(&self, method: &Method, _uri: &Uri, ext: &Extensions) -> Route {
        let label = ext
            .get::<MatchedPath>()
            .map(|m| m.as_str().to_owned())
            .unwrap_or_else(|| "unmatched".into());
        let access = match label.as_str() {
            "/health" | "/ready" | "/metrics" => Access::Open,
            l if needs_admin(method, l) => Access::Admin,
            _ => Access::Read,
        };
        Route { label, access }
    }

    fn reject(&self, e: Error) -> Response<Self::Body> {
        axum::response::IntoResponse::into_response(e)
    }

    fn outcome(&self, resp: &Response<Self::Body>) -> String {
        resp.status().as_u16().to_string()
    }
}

/// Writes to adapters, collections and documents need the admin key.
fn needs_admin(method: &Method, route: &str) -> bool {
    let write = matches!(*method, Method::PUT | Method::DELETE)
        || (*method == Method::POST && route.ends_with("/documents"));
    write && (route.starts_with("/v1/adapters") || route.starts_with("/v1/collections"))
}

async fn not_found(uri: Uri) -> Error {
    Error::not_found("route", uri.path())
}

async fn method_not_allowed(method: Method, uri: Uri) -> Error {
    Error::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_owned(),
    }
}

/// The whole API (tests call this without a socket).
pub fn router(core: Shared) -> Router {
    use handlers as h;
    let upload = Router::new()
        .route("/v1/adapters/{name}", put(h::put_adapter))
        .layer(DefaultBodyLimit::max(core.limits.adapter_body_limit));
    Router::new()
        .route("/v1/adapters", get(h::list_adapters))
        .route(
            "/v1/adapters/{name}",
            get(h::get_adapter).delete(h::delete_adapter),
        )
        .merge(upload)
        .route("/v1/embed", post(h::embed))
        .route("/v1/rerank", post(h::rerank))
        .route("/v2/rerank", post(compat::rerank_v2))
        .route("/", post(compat::tei_root))
        .route("/embed", post(compat::tei_embed))
        .route("/embed_all", post(compat::tei_embed_all))
        .route("/rerank", post(compat::tei_rerank))
        .route("/similarity", post(compat::tei_similarity))
        .route("/tokenize", post(compat::tei_tokenize))
        .route("/decode", post(compat::tei_decode))
        .route("/v1/embeddings", post(compat::openai_embeddings))
        .route("/v1/models", get(compat::openai_models))
        .route("/v1/collections", get(h::list_collections))
        .route(
            "/v1/collections/{name}",
            put(h::create_collection)
                .get(h::get_collection)
                .delete(h::delete_collection),
        )
        .route("/v1/collections/{name}/documents", post(h::upsert))
        .route(
            "/v1/collections/{name}/documents/{id}",
            delete(h::delete_document).get(h::get_document),
        )
        .route("/v1/collections/{name}/search", post(h::search))
        .route("/health", get(h::health))
        .route("/ready", get(h::ready))
        .route("/metrics", get(h::metrics))
        .route("/info", get(h::info))
        .route("/openapi.json", get(openapi::spec))
        .route("/docs", get(openapi::docs))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(core.limits.body_limit))
        .layer(GuardLayer::new(core.clone(), Http))
        .with_state(core)
}
