//! HTTP and gRPC are two encodings of one core: the same scenarios over both give
//! equal results (vectors, rerank scores, search hits and scores, documents,
//! collection and adapter descriptions), and every error maps to its documented
//! HTTP status and gRPC code with the same message. A generic client (Python's
//! grpcio-reflection, v1alpha) finds and calls the services with no proto files,
//! and the OpenAPI document matches real answers of every documented route.

mod common;

use aside_adapters::testing::{random_adapter, test_metas};
use aside_adapters::{format, Dims};
use aside_backbone::testing::TinyBert;
use aside_backbone::{Backbone, LoadOptions};
use aside_server::grpc::pb;
use aside_server::grpc::{json_to_struct, struct_to_json};
use common::Server;
use pb::adapters_client::AdaptersClient;
use pb::collections_client::CollectionsClient;
use pb::inference_client::InferenceClient;
use serde_json::{json, Value};
use tonic::Code;

struct Fx {
    dir: tempfile::TempDir,
    retrieval: Vec<u8>,
    rerank: Vec<u8>,
}

fn fx() -> Fx {
    let dir = tempfile::tempdir().unwrap();
    TinyBert::default()
        .write(&dir.path().join("model"))
        .unwrap();
    let b = Backbone::load(&dir.path().join("model"), &LoadOptions::default()).unwrap();
    let metas = test_metas(b.sha256());
    let find = |l: &str| metas.iter().find(|(x, _)| *x == l).unwrap().1.clone();
    let make = |l: &str, seed| {
        format::write_adapter(&random_adapter(&find(l), &Dims::of(&b), b.bert(), seed)).unwrap()
    };
    Fx {
        retrieval: make("iaa-l", 1),
        rerank: make("rerank-iaa-l", 2),
        dir,
    }
}

fn start(f: &Fx, extra: &[&str]) -> Server {
    let mut args = vec!["--max-length", "64"];
    args.extend_from_slice(extra);
    Server::start(
        &f.dir.path().join("model"),
        &f.dir.path().join("data"),
        &args,
    )
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// (id, score, text, metadata) of HTTP hits.
fn http_hits(v: &Value) -> Vec<(String, f32, String, Value)> {
    v["hits"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(|h| {
            (
                h["id"].as_str().unwrap().to_owned(),
                h["score"].as_f64().unwrap() as f32,
                h["text"].as_str().unwrap().to_owned(),
                h["metadata"].clone(),
            )
        })
        .collect()
}

fn grpc_hits(r: &pb::SearchResponse) -> Vec<(String, f32, String, Value)> {
    r.hits
        .iter()
        .map(|h| {
            (
                h.id.clone(),
                h.score,
                h.text.clone(),
                struct_to_json(h.metadata.as_ref().unwrap()),
            )
        })
        .collect()
}

/// The HTTP search body of a gRPC search request (unset fields left out).
fn http_search(r: &pb::SearchRequest) -> Value {
    let mut b = json!({"query": r.query});
    if let Some(k) = r.k {
        b["k"] = json!(k);
    }
    if let Some(ef) = r.ef {
        b["ef"] = json!(ef);
    }
    if let Some(f) = &r.filter {
        b["filter"] = struct_to_json(f);
    }
    if let Some(t) = r.threshold {
        b["threshold"] = json!(t);
    }
    if let Some(e) = r.exact {
        b["exact"] = json!(e);
    }
    if let Some(rr) = &r.rerank {
        let mut o = json!({"adapter": rr.adapter});
        if let Some(c) = rr.candidates {
            o["candidates"] = json!(c);
        }
        if let Some(x) = rr.fuse {
            o["fuse"] = json!(x);
        }
        b["rerank"] = o;
    }
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_scenarios_give_equal_results_over_both() {
    let f = fx();
    let s = start(&f, &[]);
    let ch = common::grpc_channel(&s).await;
    let mut inference = InferenceClient::new(ch.clone());
    let mut collections = CollectionsClient::new(ch.clone());
    let mut adapters = AdaptersClient::new(ch.clone());
    assert_eq!(
        s.raw("PUT", "/v1/adapters/ret", &[], Some(&f.retrieval)).0,
        201
    );
    assert_eq!(s.raw("PUT", "/v1/adapters/rr", &[], Some(&f.rerank)).0, 201);

    // Adapters: the same descriptions.
    let (_, http_list) = s.call("GET", "/v1/adapters", None);
    let grpc_list = adapters
        .list_adapters(pb::ListAdaptersRequest {})
        .await
        .unwrap()
        .into_inner();
    for a in &grpc_list.adapters {
        let h = http_list["adapters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == a.name.as_str())
            .unwrap();
        assert_eq!(struct_to_json(a.details.as_ref().unwrap()), *h);
        assert_eq!(
            (a.version.as_str(), a.params, a.size_bytes),
            (
                h["version"].as_str().unwrap(),
                h["params"].as_u64().unwrap(),
                h["size_bytes"].as_u64().unwrap()
            )
        );
    }
    let (_, h) = s.call("GET", "/v1/adapters/ret", None);
    let g = adapters
        .get_adapter(pb::AdapterRef { name: "ret".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(json!(g.versions), h["versions"]);

    // Embeddings: bare and adapted, bit for bit.
    let texts = vec!["the cell".to_owned(), "a gene of cancer".to_owned()];
    for adapter in ["", "ret"] {
        let mut body = json!({"inputs": texts});
        if !adapter.is_empty() {
            body["adapter"] = json!(adapter);
        }
        let (st, h) = s.call("POST", "/v1/embed", Some(&body));
        assert_eq!(st, 200, "{h}");
        let g = inference
            .embed(pb::EmbedRequest {
                inputs: texts.clone(),
                adapter: adapter.into(),
            })
            .await
            .unwrap()
            .into_inner();
        for (i, e) in g.embeddings.iter().enumerate() {
            assert_eq!(e.values, floats(&h["embeddings"][i]), "adapter {adapter:?}");
        }
        assert_eq!(
            g.adapter_version,
            h["adapter_version"].as_str().unwrap_or_default()
        );
    }

    // Re-ranking: same order, same scores.
    let rr_texts = vec![
        "a cell divides".to_owned(),
        "stock markets".to_owned(),
        "cells".to_owned(),
    ];
    let (_, h) = s.call(
        "POST",
        "/v1/rerank",
        Some(&json!({"query": "cell", "texts": rr_texts, "adapter": "rr"})),
    );
    let g = inference
        .rerank(pb::RerankRequest {
            query: "cell".into(),
            texts: rr_texts.clone(),
            adapter: "rr".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let hr: Vec<(u64, f32)> = h["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["index"].as_u64().unwrap(),
                x["score"].as_f64().unwrap() as f32,
            )
        })
        .collect();
    let gr: Vec<(u64, f32)> = g
        .results
        .iter()
        .map(|x| (x.index as u64, x.score))
        .collect();
    assert_eq!(hr, gr);
    assert_eq!(g.adapter_version, h["adapter_version"].as_str().unwrap());

    // One collection made over each transport, with the same settings and documents.
    let hnsw = json!({"m": 8, "ef_construction": 64});
    let (st, hc) = s.call(
        "PUT",
        "/v1/collections/h",
        Some(&json!({"adapter": "ret", "metric": "cosine", "hnsw": hnsw})),
    );
    assert_eq!(st, 201, "{hc}");
    let gc = collections
        .create_collection(pb::CreateCollectionRequest {
            name: "g".into(),
            adapter: "ret".into(),
            metric: "cosine".into(),
            hnsw: Some(pb::Hnsw {
                m: Some(8),
                ef_construction: Some(64),
                ef: None,
            }),
            store: String::new(),
            engine: String::new(),
            lexical: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut gd = struct_to_json(gc.details.as_ref().unwrap());
    gd["name"] = json!("h");
    assert_eq!(gd, hc, "the same description but the name");
    assert_eq!(gc.hnsw.unwrap().ef, Some(64), "unset ef takes the default");
    let words = [
        "cell", "gene", "cancer", "protein", "virus", "market", "stock", "river",
    ];
    let docs: Vec<(String, String, Value)> = (0..40)
        .map(|i| {
            (
                format!("d{i}"),
                format!("{} {} {}", words[i % 8], words[(i / 8) % 8], i),
                json!({"year": 2000 + (i % 5), "lang": if i % 2 == 0 {"en"} else {"de"}}),
            )
        })
        .collect();
    for chunk in docs.chunks(8) {
        let body: Vec<Value> = chunk
            .iter()
            .map(|(id, text, m)| json!({"id": id, "text": text, "metadata": m}))
            .collect();
        let (st, r) = s.call(
            "POST",
            "/v1/collections/h/documents",
            Some(&json!({"documents": body})),
        );
        assert_eq!((st, r["upserted"].as_u64()), (200, Some(8)), "{r}");
        let g = collections
            .upsert_documents(pb::UpsertDocumentsRequest {
                collection: "g".into(),
                documents: chunk
                    .iter()
                    .map(|(id, text, m)| pb::NewDocument {
                        id: id.clone(),
                        text: text.clone(),
                        metadata: Some(json_to_struct(m)),
                    })
                    .collect(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(g.upserted, 8);
    }

    // Search: every option, over both transports and both collections.
    let rerank = |candidates, fuse| {
        Some(pb::RerankSpec {
            adapter: "rr".into(),
            candidates,
            fuse,
        })
    };
    let searches = [
        pb::SearchRequest {
            query: "cell gene".into(),
            ..Default::default()
        },
        pb::SearchRequest {
            query: "virus".into(),
            k: Some(3),
            ef: Some(16),
            ..Default::default()
        },
        pb::SearchRequest {
            query: "cancer".into(),
            k: Some(20),
            filter: Some(json_to_struct(
                &json!({"and": [{"lang": "en"}, {"year": {"in": [2000, 2002]}}]}),
            )),
            ..Default::default()
        },
        pb::SearchRequest {
            query: "stock".into(),
            k: Some(40),
            threshold: Some(0.2),
            exact: Some(true),
            ..Default::default()
        },
        pb::SearchRequest {
            query: "protein".into(),
            k: Some(5),
            rerank: rerank(Some(12), None),
            ..Default::default()
        },
        pb::SearchRequest {
            query: "river".into(),
            k: Some(4),
            rerank: rerank(None, Some(2.5)),
            ..Default::default()
        },
    ];
    for req in searches {
        let body = http_search(&req);
        let mut results = Vec::new();
        for name in ["h", "g"] {
            let (st, h) = s.call(
                "POST",
                &format!("/v1/collections/{name}/search"),
                Some(&body),
            );
            assert_eq!(st, 200, "{h}");
            let mut r = req.clone();
            r.collection = name.into();
            let g = collections.search(r).await.unwrap().into_inner();
            assert_eq!(grpc_hits(&g), http_hits(&h), "{body}");
            assert_eq!(g.adapter_version, h["adapter_version"].as_str().unwrap());
            results.push(http_hits(&h));
        }
        assert_eq!(results[0], results[1], "both collections hold the same");
        assert!(!results[0].is_empty(), "{body}");
        let want = req.k.unwrap_or(10) as usize;
        if req.threshold.is_none() && req.filter.is_none() {
            assert_eq!(results[0].len(), want.min(40), "{body}");
        }
    }

    // Documents and descriptions.
    let (_, h) = s.call("GET", "/v1/collections/g/documents/d7", None);
    let g = collections
        .get_document(pb::DocumentRef {
            collection: "h".into(),
            id: "d7".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        json!({"id": g.id, "text": g.text, "metadata": struct_to_json(g.metadata.as_ref().unwrap())}),
        h
    );
    collections
        .delete_document(pb::DocumentRef {
            collection: "g".into(),
            id: "d7".into(),
        })
        .await
        .unwrap();
    let (st, _) = s.call("DELETE", "/v1/collections/h/documents/d7", None);
    assert_eq!(st, 200);
    let (_, h) = s.call("GET", "/v1/collections/g", None);
    let g = collections
        .get_collection(pb::CollectionRef { name: "g".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(struct_to_json(g.details.as_ref().unwrap()), h);
    assert_eq!((g.count, h["count"].as_u64().unwrap()), (39, 39));
    let (_, hl) = s.call("GET", "/v1/collections", None);
    let gl = collections
        .list_collections(pb::ListCollectionsRequest {})
        .await
        .unwrap()
        .into_inner();
    let gl: Vec<Value> = gl
        .collections
        .iter()
        .map(|c| struct_to_json(c.details.as_ref().unwrap()))
        .collect();
    assert_eq!(json!(gl), hl["collections"]);
    s.stop();
}

/// One bad request over both transports: the HTTP status and type, the gRPC code
/// and `error-type`, and the same message.
struct Case {
    what: &'static str,
    http: (u16, &'static str),
    grpc: Code,
}

fn check(case: &Case, http: (u16, Value), grpc: tonic::Status, same_message: bool) {
    assert_eq!(
        (http.0, http.1["type"].as_str().unwrap_or_default()),
        case.http,
        "{}: {}",
        case.what,
        http.1
    );
    assert_eq!(grpc.code(), case.grpc, "{}: {grpc:?}", case.what);
    assert_eq!(
        grpc.metadata()
            .get("error-type")
            .and_then(|v| v.to_str().ok()),
        Some(case.http.1),
        "{}",
        case.what
    );
    if same_message {
        assert_eq!(
            grpc.message(),
            http.1["error"].as_str().unwrap(),
            "{}",
            case.what
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_map_to_the_documented_status_and_code() {
    let f = fx();
    let s = start(&f, &["--max-inputs", "8"]);
    let ch = common::grpc_channel(&s).await;
    let mut inference = InferenceClient::new(ch.clone());
    let mut collections = CollectionsClient::new(ch.clone());
    let mut adapters = AdaptersClient::new(ch.clone());
    s.raw("PUT", "/v1/adapters/ret", &[], Some(&f.retrieval));
    s.raw("PUT", "/v1/adapters/rr", &[], Some(&f.rerank));
    s.call("PUT", "/v1/collections/c", Some(&json!({"adapter": "ret"})));
    s.call(
        "POST",
        "/v1/collections/c/documents",
        Some(&json!({"documents": [{"id": "a", "text": "the cell"}]})),
    );

    let embed = |inputs: Vec<&str>, adapter: &str| pb::EmbedRequest {
        inputs: inputs.into_iter().map(str::to_owned).collect(),
        adapter: adapter.into(),
    };
    let http_embed = |inputs: Vec<&str>, adapter: &str| {
        let mut b = json!({"inputs": inputs});
        if !adapter.is_empty() {
            b["adapter"] = json!(adapter);
        }
        s.call("POST", "/v1/embed", Some(&b))
    };
    let invalid = (400, "invalid_request");
    for (case, inputs, adapter) in [
        (
            Case {
                what: "unknown adapter",
                http: (404, "not_found"),
                grpc: Code::NotFound,
            },
            vec!["x"],
            "nope",
        ),
        (
            Case {
                what: "wrong task",
                http: (422, "unprocessable"),
                grpc: Code::InvalidArgument,
            },
            vec!["x"],
            "rr",
        ),
        (
            Case {
                what: "no inputs",
                http: invalid,
                grpc: Code::InvalidArgument,
            },
            vec![],
            "",
        ),
        (
            Case {
                what: "too many inputs",
                http: (413, "too_large"),
                grpc: Code::InvalidArgument,
            },
            vec!["x"; 9],
            "",
        ),
    ] {
        let g = inference
            .embed(embed(inputs.clone(), adapter))
            .await
            .unwrap_err();
        check(&case, http_embed(inputs, adapter), g, true);
    }

    let search = |collection: &str| pb::SearchRequest {
        collection: collection.into(),
        query: "q".into(),
        ..Default::default()
    };
    let cases: Vec<(Case, pb::SearchRequest)> = vec![
        (
            Case {
                what: "unknown collection",
                http: (404, "not_found"),
                grpc: Code::NotFound,
            },
            search("none"),
        ),
        (
            Case {
                what: "k 0 given",
                http: invalid,
                grpc: Code::InvalidArgument,
            },
            pb::SearchRequest {
                k: Some(0),
                ..search("c")
            },
        ),
        (
            Case {
                what: "k too large",
                http: invalid,
                grpc: Code::InvalidArgument,
            },
            pb::SearchRequest {
                k: Some(5000),
                ..search("c")
            },
        ),
        (
            Case {
                what: "bad filter",
                http: invalid,
                grpc: Code::InvalidArgument,
            },
            pb::SearchRequest {
                filter: Some(json_to_struct(&json!({"year": {"between": [1, 2]}}))),
                ..search("c")
            },
        ),
        (
            Case {
                what: "negative fuse",
                http: invalid,
                grpc: Code::InvalidArgument,
            },
            pb::SearchRequest {
                rerank: Some(pb::RerankSpec {
                    adapter: "rr".into(),
                    candidates: None,
                    fuse: Some(-1.0),
                }),
                ..search("c")
            },
        ),
        (
            Case {
                what: "rerank with a retrieval adapter",
                http: (422, "unprocessable"),
                grpc: Code::InvalidArgument,
            },
            pb::SearchRequest {
                rerank: Some(pb::RerankSpec {
                    adapter: "ret".into(),
                    ..Default::default()
                }),
                ..search("c")
            },
        ),
        (
            Case {
                what: "unknown rerank adapter",
                http: (404, "not_found"),
                grpc: Code::NotFound,
            },
            pb::SearchRequest {
                rerank: Some(pb::RerankSpec {
                    adapter: "missing".into(),
                    ..Default::default()
                }),
                ..search("c")
            },
        ),
    ];
    for (case, req) in cases {
        let path = format!("/v1/collections/{}/search", req.collection);
        let h = s.call("POST", &path, Some(&http_search(&req)));
        let g = collections.search(req).await.unwrap_err();
        check(&case, h, g, true);
    }

    // Collections: a duplicate, bad settings.
    let h = s.call("PUT", "/v1/collections/c", None);
    let g = collections
        .create_collection(pb::CreateCollectionRequest {
            name: "c".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    check(
        &Case {
            what: "duplicate collection",
            http: (409, "conflict"),
            grpc: Code::AlreadyExists,
        },
        h,
        g,
        true,
    );
    let h = s.call("PUT", "/v1/collections/d", Some(&json!({"hnsw": {"m": 1}})));
    let g = collections
        .create_collection(pb::CreateCollectionRequest {
            name: "d".into(),
            hnsw: Some(pb::Hnsw {
                m: Some(1),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    check(
        &Case {
            what: "hnsw.m 1",
            http: invalid,
            grpc: Code::InvalidArgument,
        },
        h,
        g,
        true,
    );
    let h = s.call(
        "PUT",
        "/v1/collections/d",
        Some(&json!({"metric": "manhattan"})),
    );
    let g = collections
        .create_collection(pb::CreateCollectionRequest {
            name: "d".into(),
            metric: "manhattan".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    // HTTP's message is the JSON parser's; both name the value.
    check(
        &Case {
            what: "unknown metric",
            http: invalid,
            grpc: Code::InvalidArgument,
        },
        h.clone(),
        g.clone(),
        false,
    );
    assert!(
        h.1["error"].as_str().unwrap().contains("manhattan") && g.message().contains("manhattan")
    );
    let h = s.call("PUT", "/v1/collections/bad%20name", None);
    let g = collections
        .create_collection(pb::CreateCollectionRequest {
            name: "bad name".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    check(
        &Case {
            what: "bad collection name",
            http: invalid,
            grpc: Code::InvalidArgument,
        },
        h,
        g,
        true,
    );

    // Documents and adapters.
    let h = s.call("GET", "/v1/collections/c/documents/missing", None);
    let g = collections
        .get_document(pb::DocumentRef {
            collection: "c".into(),
            id: "missing".into(),
        })
        .await
        .unwrap_err();
    check(
        &Case {
            what: "missing document",
            http: (404, "not_found"),
            grpc: Code::NotFound,
        },
        h,
        g,
        true,
    );
    let h = s.call(
        "POST",
        "/v1/collections/c/documents",
        Some(&json!({"documents": [{"id": "z", "text": "a"}, {"id": "z", "text": "b"}]})),
    );
    let two = |id: &str| pb::NewDocument {
        id: id.into(),
        text: "a".into(),
        metadata: None,
    };
    let g = collections
        .upsert_documents(pb::UpsertDocumentsRequest {
            collection: "c".into(),
            documents: vec![two("z"), two("z")],
        })
        .await
        .unwrap_err();
    check(
        &Case {
            what: "duplicate id",
            http: invalid,
            grpc: Code::InvalidArgument,
        },
        h,
        g,
        true,
    );
    let h = s.call("DELETE", "/v1/adapters/ret", None);
    let g = adapters
        .delete_adapter(pb::AdapterRef { name: "ret".into() })
        .await
        .unwrap_err();
    check(
        &Case {
            what: "adapter in use",
            http: (409, "conflict"),
            grpc: Code::FailedPrecondition,
        },
        h,
        g,
        true,
    );
    let h = s.call("GET", "/v1/adapters/none", None);
    let g = adapters
        .get_adapter(pb::AdapterRef {
            name: "none".into(),
        })
        .await
        .unwrap_err();
    check(
        &Case {
            what: "unknown adapter",
            http: (404, "not_found"),
            grpc: Code::NotFound,
        },
        h,
        g,
        true,
    );
    let (st, _, body) = s.raw("PUT", "/v1/adapters/half", &[], Some(&f.retrieval[..100]));
    let g = adapters
        .upload_adapter(tokio_stream::iter(vec![pb::AdapterChunk {
            name: "half".into(),
            data: f.retrieval[..100].to_vec(),
        }]))
        .await
        .unwrap_err();
    check(
        &Case {
            what: "truncated adapter file",
            http: invalid,
            grpc: Code::InvalidArgument,
        },
        (st, serde_json::from_slice(&body).unwrap()),
        g,
        true,
    );

    // Nothing above changed what is stored.
    let (_, c) = s.call("GET", "/v1/collections/c", None);
    assert_eq!(c["count"], 1);
    let (_, l) = s.call("GET", "/v1/adapters", None);
    assert_eq!(l["adapters"].as_array().unwrap().len(), 2);
    // Unknown routes and methods answer JSON too.
    for (method, path, status, kind) in [
        ("GET", "/v1/nothing", 404, "not_found"),
        ("DELETE", "/v1/embed", 405, "method_not_allowed"),
    ] {
        let (st, _, body) = s.raw(method, path, &[], None);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!((st, v["type"].as_str().unwrap()), (status, kind), "{v}");
        assert!(v["error"].as_str().unwrap().contains(path), "{v}");
    }
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generic_reflection_client_lists_and_calls_the_services() {
    let Some(python) = common::python() else {
        return;
    };
    let f = fx();
    let s = start(&f, &[]);
    let out = common::run_python(
        &python,
        "reflection_client.py",
        &[&s.grpc_addr, "the cell", "hello world"],
    );
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    for want in [
        "aside.v1.Inference",
        "aside.v1.Collections",
        "aside.v1.Adapters",
        "aside.v1.Info",
        "grpc.health.v1.Health",
    ] {
        assert!(
            v["services"].as_array().unwrap().iter().any(|x| x == want),
            "{want} missing: {v}"
        );
    }
    assert_eq!(v["embed_request_fields"], json!(["adapter", "inputs"]));
    let (_, h) = s.call(
        "POST",
        "/v1/embed",
        Some(&json!({"inputs": ["the cell", "hello world"]})),
    );
    for i in 0..2 {
        let a = floats(&v["embeddings"][i]);
        let b = floats(&h["embeddings"][i]);
        assert_eq!(a.len(), 32);
        assert_eq!(a, b, "the generic client's vectors are the server's");
    }
    s.stop();
}

#[test]
fn the_openapi_document_matches_real_answers_of_every_route() {
    let Some(python) = common::python() else {
        return;
    };
    let f = fx();
    let s = start(&f, &[]);
    let mut samples: Vec<Value> = Vec::new();
    let mut call =
        |method: &str, path: &str, route: &str, body: Option<Value>, raw: Option<&[u8]>| {
            let bytes = match (&body, raw) {
                (Some(b), _) => Some(serde_json::to_vec(b).unwrap()),
                (None, Some(r)) => Some(r.to_vec()),
                _ => None,
            };
            let headers: &[(&str, &str)] = if body.is_some() {
                &[("content-type", "application/json")]
            } else {
                &[]
            };
            let (st, hdrs, resp) = s.raw(method, path, headers, bytes.as_deref());
            let ctype = hdrs
                .iter()
                .find(|(k, _)| k == "content-type")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            let response = if ctype.starts_with("application/json") {
                serde_json::from_slice(&resp).unwrap()
            } else {
                Value::String(String::from_utf8_lossy(&resp).into_owned())
            };
            samples.push(json!({"method": method, "route": route, "status": st,
                            "content_type": ctype, "request": body, "response": response}));
            st
        };
    assert_eq!(
        call(
            "PUT",
            "/v1/adapters/ret",
            "/v1/adapters/{name}",
            None,
            Some(&f.retrieval)
        ),
        201
    );
    assert_eq!(
        call(
            "PUT",
            "/v1/adapters/ret",
            "/v1/adapters/{name}",
            None,
            Some(&f.retrieval)
        ),
        200
    );
    assert_eq!(
        call(
            "PUT",
            "/v1/adapters/rr",
            "/v1/adapters/{name}",
            None,
            Some(&f.rerank)
        ),
        201
    );
    assert_eq!(
        call(
            "PUT",
            "/v1/adapters/x",
            "/v1/adapters/{name}",
            None,
            Some(b"not a file")
        ),
        400
    );
    assert_eq!(call("GET", "/v1/adapters", "/v1/adapters", None, None), 200);
    assert_eq!(
        call("GET", "/v1/adapters/ret", "/v1/adapters/{name}", None, None),
        200
    );
    assert_eq!(
        call(
            "GET",
            "/v1/adapters/none",
            "/v1/adapters/{name}",
            None,
            None
        ),
        404
    );
    let embed = json!({"inputs": ["the cell", "a gene"], "adapter": "ret"});
    assert_eq!(
        call("POST", "/v1/embed", "/v1/embed", Some(embed), None),
        200
    );
    assert_eq!(
        call(
            "POST",
            "/v1/embed",
            "/v1/embed",
            Some(json!({"inputs": ["x"]})),
            None
        ),
        200
    );
    assert_eq!(
        call(
            "POST",
            "/v1/embed",
            "/v1/embed",
            Some(json!({"inputs": []})),
            None
        ),
        400
    );
    let rerank = json!({"query": "cell", "texts": ["a cell", "stocks"], "adapter": "rr"});
    assert_eq!(
        call("POST", "/v1/rerank", "/v1/rerank", Some(rerank), None),
        200
    );
    assert_eq!(
        call(
            "POST",
            "/embed",
            "/embed",
            Some(json!({"inputs": "x", "normalize": true})),
            None
        ),
        200
    );
    let tei = json!({"query": "cell", "texts": ["a cell", "stocks"], "return_text": true});
    assert_eq!(call("POST", "/rerank", "/rerank", Some(tei), None), 200);
    let oa = json!({"input": ["x", "y"], "model": "ret"});
    assert_eq!(
        call("POST", "/v1/embeddings", "/v1/embeddings", Some(oa), None),
        200
    );
    let oa = json!({"input": [[5, 6, 7]], "encoding_format": "base64"});
    assert_eq!(
        call("POST", "/v1/embeddings", "/v1/embeddings", Some(oa), None),
        200
    );
    assert_eq!(call("GET", "/v1/models", "/v1/models", None, None), 200);
    assert_eq!(
        call("POST", "/", "/", Some(json!({"inputs": ["x"]})), None),
        200
    );
    let sim = json!({"inputs": {"source_sentence": "a cell", "sentences": ["cells", "stocks"]}});
    assert_eq!(call("POST", "/", "/", Some(sim.clone()), None), 200);
    assert_eq!(
        call("POST", "/similarity", "/similarity", Some(sim), None),
        200
    );
    assert_eq!(
        call(
            "POST",
            "/embed_all",
            "/embed_all",
            Some(json!({"inputs": "a cell"})),
            None
        ),
        200
    );
    assert_eq!(
        call(
            "POST",
            "/tokenize",
            "/tokenize",
            Some(json!({"inputs": ["a cell"]})),
            None
        ),
        200
    );
    assert_eq!(
        call(
            "POST",
            "/decode",
            "/decode",
            Some(json!({"ids": [5, 6]})),
            None
        ),
        200
    );
    let co = json!({"model": "rr", "query": "cell", "documents": ["a cell", {"text": "stocks"}], "top_n": 1, "return_documents": true});
    assert_eq!(
        call("POST", "/v1/rerank", "/v1/rerank", Some(co.clone()), None),
        200
    );
    assert_eq!(
        call("POST", "/v2/rerank", "/v2/rerank", Some(co), None),
        200
    );
    assert_eq!(
        call(
            "POST",
            "/v1/embeddings",
            "/v1/embeddings",
            Some(json!({"input": "x", "model": "nope"})),
            None
        ),
        404
    );
    let create = json!({"adapter": "ret", "metric": "dot", "hnsw": {"m": 8}});
    assert_eq!(
        call(
            "PUT",
            "/v1/collections/c",
            "/v1/collections/{name}",
            Some(create),
            None
        ),
        201
    );
    assert_eq!(
        call(
            "PUT",
            "/v1/collections/e",
            "/v1/collections/{name}",
            None,
            None
        ),
        201
    );
    assert_eq!(
        call(
            "PUT",
            "/v1/collections/c",
            "/v1/collections/{name}",
            Some(json!({})),
            None
        ),
        409
    );
    let docs = json!({"documents": [{"id": "a", "text": "the cell", "metadata": {"y": 1}}, {"id": "b", "text": "stocks"}]});
    assert_eq!(
        call(
            "POST",
            "/v1/collections/c/documents",
            "/v1/collections/{name}/documents",
            Some(docs),
            None
        ),
        200
    );
    assert_eq!(
        call("GET", "/v1/collections", "/v1/collections", None, None),
        200
    );
    assert_eq!(
        call(
            "GET",
            "/v1/collections/c",
            "/v1/collections/{name}",
            None,
            None
        ),
        200
    );
    assert_eq!(
        call(
            "GET",
            "/v1/collections/c/documents/a",
            "/v1/collections/{name}/documents/{id}",
            None,
            None
        ),
        200
    );
    let search =
        json!({"query": "cell", "k": 2, "filter": {"y": 1}, "threshold": -1.0, "exact": false});
    assert_eq!(
        call(
            "POST",
            "/v1/collections/c/search",
            "/v1/collections/{name}/search",
            Some(search),
            None
        ),
        200
    );
    let rr = json!({"query": "cell", "rerank": {"adapter": "rr", "candidates": 5, "fuse": 1.0}});
    assert_eq!(
        call(
            "POST",
            "/v1/collections/c/search",
            "/v1/collections/{name}/search",
            Some(rr),
            None
        ),
        200
    );
    assert_eq!(
        call(
            "POST",
            "/v1/collections/c/search",
            "/v1/collections/{name}/search",
            Some(json!({"query": "x", "k": 0})),
            None
        ),
        400
    );
    assert_eq!(
        call(
            "DELETE",
            "/v1/collections/c/documents/b",
            "/v1/collections/{name}/documents/{id}",
            None,
            None
        ),
        200
    );
    assert_eq!(
        call(
            "DELETE",
            "/v1/collections/c/documents/b",
            "/v1/collections/{name}/documents/{id}",
            None,
            None
        ),
        404
    );
    assert_eq!(
        call(
            "DELETE",
            "/v1/adapters/ret",
            "/v1/adapters/{name}",
            None,
            None
        ),
        409
    );
    assert_eq!(
        call(
            "DELETE",
            "/v1/collections/c",
            "/v1/collections/{name}",
            None,
            None
        ),
        200
    );
    assert_eq!(
        call(
            "DELETE",
            "/v1/adapters/ret",
            "/v1/adapters/{name}",
            None,
            None
        ),
        200
    );
    for route in ["/health", "/ready", "/info", "/metrics"] {
        assert_eq!(call("GET", route, route, None, None), 200);
    }
    let (st, _, spec) = s.raw("GET", "/openapi.json", &[], None);
    assert_eq!(st, 200);
    let dir = tempfile::tempdir().unwrap();
    let (spec_path, samples_path) = (
        dir.path().join("spec.json"),
        dir.path().join("samples.json"),
    );
    std::fs::write(&spec_path, spec).unwrap();
    std::fs::write(&samples_path, serde_json::to_vec(&samples).unwrap()).unwrap();
    let out = common::run_python(
        &python,
        "openapi_check.py",
        &[spec_path.to_str().unwrap(), samples_path.to_str().unwrap()],
    );
    eprintln!("{out}");
    assert!(out.contains("operations covered"), "{out}");
    s.stop();
}
