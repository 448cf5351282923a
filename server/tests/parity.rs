//! The two APIs cannot drift: every field of an HTTP request body (the OpenAPI
//! document, generated from the core's types) has its proto counterpart and the
//! other way round, and request types refuse unknown fields.

use std::collections::{BTreeMap, BTreeSet};

use aside_server::grpc::pb;
use aside_server::http::openapi::document;
use prost::Message;

fn proto_fields() -> BTreeMap<String, BTreeSet<String>> {
    let fds = prost_types::FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET).unwrap();
    fds.file
        .iter()
        .filter(|f| f.package() == "aside.v1")
        .flat_map(|f| f.message_type.iter())
        .map(|m| {
            (
                m.name().to_owned(),
                m.field.iter().map(|f| f.name().to_owned()).collect(),
            )
        })
        .collect()
}

fn http_fields(doc: &serde_json::Value, schema: &str) -> BTreeSet<String> {
    doc["components"]["schemas"][schema]["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("no schema {schema}"))
        .keys()
        .cloned()
        .collect()
}

/// (HTTP schema, proto message, fields the HTTP API takes from the path)
const PAIRS: [(&str, &str, &[&str]); 8] = [
    ("EmbedRequest", "EmbedRequest", &[]),
    ("RerankRequest", "RerankRequest", &[]),
    ("SearchRequest", "SearchRequest", &["collection"]),
    ("RerankSpec", "RerankSpec", &[]),
    ("UpsertRequest", "UpsertDocumentsRequest", &["collection"]),
    ("NewDocument", "NewDocument", &[]),
    (
        "CreateCollectionRequest",
        "CreateCollectionRequest",
        &["name"],
    ),
    ("HnswSpec", "Hnsw", &[]),
];

#[test]
fn every_http_request_field_has_its_proto_counterpart() {
    let doc = document();
    let proto = proto_fields();
    for (schema, message, from_path) in PAIRS {
        let mut http = http_fields(&doc, schema);
        http.extend(from_path.iter().map(|s| s.to_string()));
        let grpc = proto
            .get(message)
            .unwrap_or_else(|| panic!("no proto message {message}"));
        let only_http: Vec<_> = http.difference(grpc).collect();
        let only_grpc: Vec<_> = grpc.difference(&http).collect();
        assert!(
            only_http.is_empty() && only_grpc.is_empty(),
            "{schema} / {message}: only over HTTP {only_http:?}, only over gRPC {only_grpc:?}"
        );
    }
}

#[test]
fn routes_take_the_checked_request_types() {
    let doc = document();
    // The route's request schema, with a reference to a union followed once.
    let body = |path: &str, method: &str| {
        let s = &doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"];
        let inner = s["$ref"]
            .as_str()
            .and_then(|r| r.strip_prefix("#/components/schemas/"))
            .map(|name| doc["components"]["schemas"][name].to_string())
            .unwrap_or_default();
        format!("{s}{inner}")
    };
    for (path, method, schema) in [
        ("/v1/embed", "post", "EmbedRequest"),
        ("/v1/rerank", "post", "RerankRequest"),
        ("/v1/collections/{name}/search", "post", "SearchRequest"),
        ("/v1/collections/{name}/documents", "post", "UpsertRequest"),
        ("/v1/collections/{name}", "put", "CreateCollectionRequest"),
    ] {
        assert!(
            body(path, method).contains(&format!("#/components/schemas/{schema}")),
            "{method} {path} does not take {schema}: {}",
            body(path, method)
        );
    }
}

#[test]
fn request_types_refuse_unknown_fields() {
    let doc = document();
    for (schema, _, _) in PAIRS {
        assert_eq!(
            doc["components"]["schemas"][schema]["additionalProperties"], false,
            "{schema}"
        );
    }
}

#[test]
fn optional_proto_scalars_are_optional() {
    // An unset k, ef, threshold, exact, candidates or fuse must be told apart from 0.
    let fds = prost_types::FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET).unwrap();
    let msgs: BTreeMap<_, _> = fds
        .file
        .iter()
        .flat_map(|f| f.message_type.iter())
        .map(|m| (m.name().to_owned(), m.clone()))
        .collect();
    for (message, field) in [
        ("SearchRequest", "k"),
        ("SearchRequest", "ef"),
        ("SearchRequest", "threshold"),
        ("SearchRequest", "exact"),
        ("RerankSpec", "candidates"),
        ("RerankSpec", "fuse"),
        ("Hnsw", "m"),
        ("Hnsw", "ef_construction"),
        ("Hnsw", "ef"),
    ] {
        let f = msgs[message]
            .field
            .iter()
            .find(|f| f.name() == field)
            .unwrap();
        assert!(f.proto3_optional(), "{message}.{field} is not optional");
    }
}
