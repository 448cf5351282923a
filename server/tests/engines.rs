//! The `engine` option of a local collection over HTTP and gRPC: hnsw_rs
//! collections are created, filled past the exact-search size, searched through
//! their graph with the recall of exact search, and found again after a restart;
//! settings hnsw_rs cannot take are refused with a 400 naming them.

mod common;

use aside_backbone::testing::TinyBert;
use aside_server::grpc::pb;
use common::{ids, Server};
use serde_json::{json, Value};

/// The ten best documents with `even: true`, through the graph or exactly.
fn search(s: &Server, name: &str, q: &str, exact: bool) -> Value {
    let (st, r) = s.call(
        "POST",
        &format!("/v1/collections/{name}/search"),
        Some(&json!({"query": q, "k": 10, "ef": 128, "exact": exact, "filter": {"even": true}})),
    );
    assert_eq!(st, 200, "{r}");
    r
}

#[test]
fn hnsw_rs_collections_search_like_exact_search_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    TinyBert::default()
        .write(&dir.path().join("model"))
        .unwrap();
    let (model, data) = (dir.path().join("model"), dir.path().join("data"));
    let s = Server::start(&model, &data, &["--max-length", "32"]);

    let (st, c) = s.call(
        "PUT",
        "/v1/collections/h",
        Some(&json!({"engine": "hnsw_rs"})),
    );
    assert_eq!((st, c["engine"].as_str()), (201, Some("hnsw_rs")), "{c}");
    let (st, c) = s.call("PUT", "/v1/collections/g", None);
    assert_eq!((st, c["engine"].as_str()), (201, Some("graph")), "{c}");
    // What hnsw_rs cannot take, refused before it sees it.
    let (st, r) = s.call(
        "PUT",
        "/v1/collections/d",
        Some(&json!({"engine": "hnsw_rs", "metric": "dot"})),
    );
    assert_eq!(st, 400, "{r}");
    assert!(r["error"].as_str().unwrap().contains("hnsw_rs"), "{r}");
    let (st, r) = s.call(
        "PUT",
        "/v1/collections/m",
        Some(&json!({"engine": "hnsw_rs", "hnsw": {"m": 300}})),
    );
    assert_eq!(st, 400, "{r}");
    let (st, r) = s.call(
        "PUT",
        "/v1/collections/x",
        Some(&json!({"engine": "annoy"})),
    );
    assert_eq!(st, 400, "{r}");
    let (st, r) = s.call(
        "PUT",
        "/v1/collections/y",
        Some(&json!({"store": "milvus"})),
    );
    assert_eq!(st, 400, "{r}");
    assert!(r["error"].as_str().unwrap().contains("--milvus-url"), "{r}");

    // Past the exact-search size (2,000), so searches walk the graph.
    let docs: Vec<Value> = (0..2600)
        .map(|i| json!({"id": format!("d{i}"), "text": format!("document {i} about topic {} and {}", i % 37, i % 11),
                        "metadata": {"even": i % 2 == 0}}))
        .collect();
    for name in ["h", "g"] {
        for chunk in docs.chunks(500) {
            let (st, r) = s.call(
                "POST",
                &format!("/v1/collections/{name}/documents"),
                Some(&json!({"documents": chunk})),
            );
            assert_eq!(st, 200, "{r}");
        }
    }
    let queries: Vec<String> = (0..30)
        .map(|i| format!("topic {i} and {}", i % 11))
        .collect();
    let mut before = Vec::new();
    for name in ["h", "g"] {
        let (mut found, mut total) = (0, 0);
        for q in &queries {
            let exact = ids(&search(&s, name, q, true));
            let approx = search(&s, name, q, false);
            assert!(approx["hits"]
                .as_array()
                .unwrap()
                .iter()
                .all(|h| h["metadata"]["even"] == true));
            let approx = ids(&approx);
            found += approx.iter().filter(|i| exact.contains(i)).count();
            total += exact.len();
            if name == "h" {
                before.push(approx);
            }
        }
        let recall = found as f64 / total as f64;
        eprintln!("{name}: recall@10 against exact search {recall:.3}");
        assert!(recall >= 0.9, "{name}: recall {recall}");
    }
    // Deleted documents are skipped by hnsw_rs's filtered search.
    let gone = before[0][0].clone();
    let (st, _) = s.call(
        "DELETE",
        &format!("/v1/collections/h/documents/{gone}"),
        None,
    );
    assert_eq!(st, 200);
    assert!(!ids(&search(&s, "h", &queries[0], false)).contains(&gone));
    s.stop();

    // After a restart (log replay; the graph rebuilt behind it): every document,
    // the delete, and the recall of exact search again.
    let s = Server::start(&model, &data, &["--max-length", "32"]);
    let (_, c) = s.call("GET", "/v1/collections/h", None);
    assert_eq!(
        (c["engine"].as_str(), c["count"].as_u64()),
        (Some("hnsw_rs"), Some(2599)),
        "{c}"
    );
    let (mut found, mut total) = (0, 0);
    for q in &queries {
        let exact = ids(&search(&s, "h", q, true));
        let approx = ids(&search(&s, "h", q, false));
        assert!(!approx.contains(&gone));
        found += approx.iter().filter(|i| exact.contains(i)).count();
        total += exact.len();
    }
    assert!(
        found as f64 / total as f64 >= 0.9,
        "after restart: {found}/{total}"
    );

    // gRPC takes and reports the engine too.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut cc =
            pb::collections_client::CollectionsClient::connect(format!("http://{}", s.grpc_addr))
                .await
                .unwrap();
        let c = cc
            .create_collection(pb::CreateCollectionRequest {
                name: "via-grpc".into(),
                engine: "hnsw_rs".into(),
                metric: "l2".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((c.engine.as_str(), c.metric.as_str()), ("hnsw_rs", "l2"));
        let e = cc
            .create_collection(pb::CreateCollectionRequest {
                name: "bad".into(),
                engine: "hnsw_rs".into(),
                metric: "dot".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    });
    s.stop();
}
