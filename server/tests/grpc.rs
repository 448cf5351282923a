//! The gRPC API against a real `aside serve` process: a generated tonic client calls
//! every RPC (a streamed adapter upload included), the standard health service and
//! reflection answer, and bad requests get the mapped status codes.

mod common;

use aside_adapters::testing::{random_adapter, test_metas};
use aside_adapters::{format, Dims, Task};
use aside_backbone::testing::TinyBert;
use aside_backbone::{Backbone, LoadOptions};
use aside_server::grpc::pb;
use aside_server::grpc::{json_to_struct, struct_to_json};
use pb::adapters_client::AdaptersClient;
use pb::collections_client::CollectionsClient;
use pb::inference_client::InferenceClient;
use pb::info_client::InfoClient;
use serde_json::json;
use tonic::Code;

struct Fx {
    dir: tempfile::TempDir,
    backbone: Backbone,
}

fn fx() -> Fx {
    let dir = tempfile::tempdir().unwrap();
    TinyBert::default()
        .write(&dir.path().join("model"))
        .unwrap();
    let backbone = Backbone::load(&dir.path().join("model"), &LoadOptions::default()).unwrap();
    Fx { dir, backbone }
}

fn adapter_bytes(b: &Backbone, label: &str) -> Vec<u8> {
    let meta = test_metas(b.sha256())
        .into_iter()
        .find(|(l, _)| *l == label)
        .unwrap()
        .1;
    format::write_adapter(&random_adapter(&meta, &Dims::of(b), b.bert(), 9)).unwrap()
}

fn chunks(name: &str, bytes: &[u8]) -> Vec<pb::AdapterChunk> {
    bytes
        .chunks(1000)
        .enumerate()
        .map(|(i, c)| pb::AdapterChunk {
            name: if i == 0 {
                name.to_owned()
            } else {
                String::new()
            },
            data: c.to_vec(),
        })
        .collect()
}

fn with_key<T>(key: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    r
}

fn start(f: &Fx, extra: &[&str]) -> common::Server {
    let mut args = vec!["--max-length", "64"];
    args.extend_from_slice(extra);
    common::Server::start(
        &f.dir.path().join("model"),
        &f.dir.path().join("state"),
        &args,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_round_trips() {
    let f = fx();
    let server = start(&f, &[]);
    let ch = common::grpc_channel(&server).await;
    let mut adapters = AdaptersClient::new(ch.clone());
    let mut inference = InferenceClient::new(ch.clone());
    let mut collections = CollectionsClient::new(ch.clone());
    let mut info = InfoClient::new(ch.clone());

    // Streamed upload in 1000-byte chunks; the same bytes again are not a new version.
    let bytes = adapter_bytes(&f.backbone, "iaa-l");
    assert!(bytes.len() > 3000);
    let up = adapters
        .upload_adapter(tokio_stream::iter(chunks("task-a", &bytes)))
        .await
        .unwrap()
        .into_inner();
    assert!(up.created);
    let a = up.adapter.unwrap();
    assert_eq!(
        (a.name.as_str(), a.kind.as_str(), a.task.as_str()),
        ("task-a", "iaa-l", "retrieval")
    );
    assert!(a.params > 0 && !a.version.is_empty());
    let again = adapters
        .upload_adapter(tokio_stream::iter(chunks("task-a", &bytes)))
        .await
        .unwrap()
        .into_inner();
    assert!(!again.created);
    let rr = adapter_bytes(&f.backbone, "rerank-iaa-l");
    adapters
        .upload_adapter(tokio_stream::iter(chunks("judge", &rr)))
        .await
        .unwrap();
    let list = adapters
        .list_adapters(pb::ListAdaptersRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut names: Vec<String> = list.adapters.iter().map(|a| a.name.clone()).collect();
    names.sort();
    assert_eq!(names, ["judge", "task-a"]);
    let got = adapters
        .get_adapter(pb::AdapterRef {
            name: "task-a".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.version, a.version);

    // Embed: bare and with the adapter (which changes the vectors).
    let bare = inference
        .embed(pb::EmbedRequest {
            inputs: vec!["the cell".into(), "hello world".into()],
            adapter: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bare.embeddings.len(), 2);
    assert_eq!(bare.embeddings[0].values.len(), 32);
    let adapted = inference
        .embed(pb::EmbedRequest {
            inputs: vec!["the cell".into()],
            adapter: "task-a".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(adapted.adapter_version, a.version);
    assert_ne!(adapted.embeddings[0].values, bare.embeddings[0].values);
    let ranked = inference
        .rerank(pb::RerankRequest {
            query: "cell".into(),
            texts: vec!["the cell".into(), "gene".into(), "hello".into()],
            adapter: "judge".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ranked.results.len(), 3);
    assert!(ranked.results.windows(2).all(|w| w[0].score >= w[1].score));

    // Collections and documents.
    let c = collections
        .create_collection(pb::CreateCollectionRequest {
            name: "docs".into(),
            adapter: "task-a".into(),
            metric: "cosine".into(),
            hnsw: Some(pb::Hnsw {
                m: Some(8),
                ef_construction: Some(64),
                ef: Some(32),
            }),
            store: String::new(),
            engine: String::new(),
            lexical: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (c.name.as_str(), c.adapter.as_str(), c.dim),
        ("docs", "task-a", 32)
    );
    let docs = [
        ("1", "the cell", 2020),
        ("2", "cancer gene", 2021),
        ("3", "hello world", 2022),
    ];
    let up = collections
        .upsert_documents(pb::UpsertDocumentsRequest {
            collection: "docs".into(),
            documents: docs
                .iter()
                .map(|(id, text, year)| pb::NewDocument {
                    id: (*id).into(),
                    text: (*text).into(),
                    metadata: Some(json_to_struct(&json!({"year": year, "lang": "en"}))),
                })
                .collect(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(up.upserted, 3);
    let d = collections
        .get_document(pb::DocumentRef {
            collection: "docs".into(),
            id: "2".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.text, "cancer gene");
    assert_eq!(struct_to_json(&d.metadata.unwrap())["year"], 2021);
    let hits = collections
        .search(pb::SearchRequest {
            collection: "docs".into(),
            query: "the cell".into(),
            k: Some(3),
            filter: Some(json_to_struct(&json!({"year": {"in": [2020, 2022]}}))),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = hits.hits.iter().map(|h| h.id.as_str()).collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(!ids.contains(&"2"));
    assert_eq!(hits.adapter_version, a.version);
    assert!(hits.timings.is_some());
    let reranked = collections
        .search(pb::SearchRequest {
            collection: "docs".into(),
            query: "the cell".into(),
            k: Some(2),
            rerank: Some(pb::RerankSpec {
                adapter: "judge".into(),
                candidates: Some(3),
                fuse: None,
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reranked.hits.len(), 2);
    let got = collections
        .get_collection(pb::CollectionRef {
            name: "docs".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((got.count, got.status.as_str()), (3, "ready"));
    let listed = collections
        .list_collections(pb::ListCollectionsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.collections.len(), 1);
    collections
        .delete_document(pb::DocumentRef {
            collection: "docs".into(),
            id: "3".into(),
        })
        .await
        .unwrap();
    let got = collections
        .get_collection(pb::CollectionRef {
            name: "docs".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.count, 2);
    collections
        .delete_collection(pb::CollectionRef {
            name: "docs".into(),
        })
        .await
        .unwrap();
    adapters
        .delete_adapter(pb::AdapterRef {
            name: "judge".into(),
        })
        .await
        .unwrap();

    let i = info
        .get_info(pb::InfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let i = struct_to_json(&i.info.unwrap());
    assert!(i.to_string().contains(f.backbone.sha256()), "{i}");

    // The standard health service.
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    for service in ["", "aside.v1.Inference", "aside.v1.Collections"] {
        let h = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            h.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
    }

    // Reflection lists every service, as grpcurl asks.
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let mut refl = ServerReflectionClient::new(ch);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = refl
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let first = resp.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(l)) = first.message_response else {
        panic!("unexpected reflection answer");
    };
    let services: Vec<String> = l.service.into_iter().map(|s| s.name).collect();
    for want in [
        "aside.v1.Inference",
        "aside.v1.Collections",
        "aside.v1.Adapters",
        "aside.v1.Info",
        "grpc.health.v1.Health",
    ] {
        assert!(
            services.iter().any(|s| s == want),
            "{want} missing from {services:?}"
        );
    }
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_mapped_status_codes() {
    let f = fx();
    let server = start(&f, &["--admin-key", "adm", "--read-key", "rd"]);
    let ch = common::grpc_channel(&server).await;
    let mut adapters = AdaptersClient::new(ch.clone());
    let mut inference = InferenceClient::new(ch.clone());
    let mut collections = CollectionsClient::new(ch.clone());

    let embed = |adapter: &str, inputs: Vec<String>| pb::EmbedRequest {
        inputs,
        adapter: adapter.into(),
    };
    // Keys: none → Unauthenticated; the read key for a write → PermissionDenied.
    let e = inference
        .embed(embed("", vec!["x".into()]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let bytes = adapter_bytes(&f.backbone, "iaa-l");
    let mut up = tonic::Request::new(tokio_stream::iter(chunks("a", &bytes)));
    up.metadata_mut().insert("x-api-key", "rd".parse().unwrap());
    let e = adapters.upload_adapter(up).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // The read key reads.
    inference
        .embed(with_key("rd", embed("", vec!["x".into()])))
        .await
        .unwrap();
    // Unknown adapter, empty input.
    let e = inference
        .embed(with_key("rd", embed("nope", vec!["x".into()])))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("nope"));
    let e = inference
        .embed(with_key("rd", embed("", vec![])))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    // A corrupt adapter file names its fault and stores nothing.
    let mut bad = bytes.clone();
    bad.truncate(bytes.len() / 2);
    let mut up = tonic::Request::new(tokio_stream::iter(chunks("half", &bad)));
    up.metadata_mut()
        .insert("x-api-key", "adm".parse().unwrap());
    let e = adapters.upload_adapter(up).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let list = adapters
        .list_adapters(with_key("adm", pb::ListAdaptersRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert!(list.adapters.is_empty());
    // A stream without a name.
    let mut up = tonic::Request::new(tokio_stream::iter(chunks("", &bytes)));
    up.metadata_mut()
        .insert("x-api-key", "adm".parse().unwrap());
    let e = adapters.upload_adapter(up).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    // Collections: unknown, duplicate, wrong search.
    let e = collections
        .get_collection(with_key(
            "rd",
            pb::CollectionRef {
                name: "none".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let create = || pb::CreateCollectionRequest {
        name: "c".into(),
        adapter: String::new(),
        metric: String::new(),
        hnsw: None,
        store: String::new(),
        engine: String::new(),
        lexical: String::new(),
    };
    collections
        .create_collection(with_key("adm", create()))
        .await
        .unwrap();
    let e = collections
        .create_collection(with_key("adm", create()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    let e = collections
        .create_collection(with_key(
            "adm",
            pb::CreateCollectionRequest {
                name: "d".into(),
                adapter: String::new(),
                metric: "manhattan".into(),
                hnsw: None,
                store: String::new(),
                engine: String::new(),
                lexical: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = collections
        .search(with_key(
            "rd",
            pb::SearchRequest {
                collection: "c".into(),
                query: "x".into(),
                filter: Some(json_to_struct(&json!({"year": {"between": [1, 2]}}))),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = collections
        .search(with_key(
            "rd",
            pb::SearchRequest {
                collection: "c".into(),
                query: "x".into(),
                k: Some(1),
                rerank: Some(pb::RerankSpec {
                    adapter: "missing".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let _ = Task::Rerank;
    server.stop();
}
