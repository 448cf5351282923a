//! The gRPC transport (`proto/aside/v1/aside.proto`): tonic services over the
//! core, called directly (no HTTP, no JSON). `services.rs` converts and calls,
//! `status.rs` maps core errors to codes, `convert.rs` holds the message
//! conversions; the guard layer (`crate::guard`) checks keys, limits and records
//! metrics before a service reads any message. Health (`grpc.health.v1`) and
//! reflection (`grpc.reflection.v1` and `v1alpha`) are served beside them.

pub mod convert;
pub mod services;
pub mod status;

use http::{Extensions, Method, Response, Uri};

pub use self::convert::{json_to_struct, struct_to_json};
pub use self::services::Services;
use crate::core::{Error, Shared};
use crate::guard::{Access, GuardLayer, Route, Transport};

pub mod pb {
    tonic::include_proto!("aside.v1");
    /// The compiled descriptors, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("aside_descriptor");
}

use pb::*;

/// The RPCs that write: they need the admin key.
const ADMIN_RPCS: [&str; 6] = [
    "/aside.v1.Adapters/UploadAdapter",
    "/aside.v1.Adapters/DeleteAdapter",
    "/aside.v1.Collections/CreateCollection",
    "/aside.v1.Collections/DeleteCollection",
    "/aside.v1.Collections/UpsertDocuments",
    "/aside.v1.Collections/DeleteDocument",
];

const READ_RPCS: [&str; 10] = [
    "/aside.v1.Inference/Embed",
    "/aside.v1.Inference/Rerank",
    "/aside.v1.Collections/GetCollection",
    "/aside.v1.Collections/ListCollections",
    "/aside.v1.Collections/GetDocument",
    "/aside.v1.Collections/Search",
    "/aside.v1.Adapters/ListAdapters",
    "/aside.v1.Adapters/GetAdapter",
    "/aside.v1.Info/GetInfo",
    // Unknown paths are read-guarded and answered UNIMPLEMENTED by tonic.
    "unmatched",
];

/// How gRPC names routes and answers refusals.
#[derive(Clone, Copy)]
pub struct Grpc;

impl Transport for Grpc {
    type ReqBody = tonic::body::Body;
    type Body = tonic::body::Body;

    fn read_body_first(&self, _route: &Route, _core: &Shared) -> Option<usize> {
        None // messages stream to the service, which bounds them
    }

    fn body_of(&self, bytes: bytes::Bytes) -> Self::ReqBody {
        tonic::body::Body::new(http_body_util::Full::new(bytes))
    }

    fn route(&self, _method: &Method, uri: &Uri, _ext: &Extensions) -> Route {
        let path = uri.path();
        if path.starts_with("/grpc.health.v1.") || path.starts_with("/grpc.reflection.") {
            let service = path.split('/').nth(1).unwrap_or_default();
            return Route {
                label: format!("/{service}"),
                access: Access::Open,
            };
        }
        if let Some(p) = ADMIN_RPCS.iter().find(|p| **p == path) {
            return Route {
                label: (*p).to_owned(),
                access: Access::Admin,
            };
        }
        let label = READ_RPCS
            .iter()
            .find(|p| **p == path)
            .copied()
            .unwrap_or("unmatched");
        Route {
            label: label.to_owned(),
            access: Access::Read,
        }
    }

    fn reject(&self, e: Error) -> Response<Self::Body> {
        status::status(e).into_http()
    }

    fn outcome(&self, resp: &Response<Self::Body>) -> String {
        let code = resp
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i32>().ok())
            .unwrap_or(0);
        format!("{:?}", tonic::Code::from_i32(code))
    }
}

/// Serves the gRPC API (with health and reflection) until `shutdown` completes.
pub async fn serve(
    core: Shared,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<inference_server::InferenceServer<Services>>()
        .await;
    reporter
        .set_serving::<collections_server::CollectionsServer<Services>>()
        .await;
    reporter
        .set_serving::<adapters_server::AdaptersServer<Services>>()
        .await;
    reporter
        .set_serving::<info_server::InfoServer<Services>>()
        .await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let services = Services::new(core.clone());
    let max_upload = core.limits.adapter_body_limit.max(4 << 20);
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder()
        .layer(GuardLayer::new(core, Grpc))
        .add_service(health)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(inference_server::InferenceServer::new(services.clone()))
        .add_service(collections_server::CollectionsServer::new(services.clone()))
        .add_service(
            adapters_server::AdaptersServer::new(services.clone())
                .max_decoding_message_size(max_upload.min(64 << 20)),
        )
        .add_service(info_server::InfoServer::new(services))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}
