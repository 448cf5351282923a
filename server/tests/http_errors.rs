//! Every bad request, on a real loopback socket against the tiny model: its status,
//! its `{error, type}` body, and nothing stored changed. Plus router tests without a
//! socket.

mod common;

use aside_adapters::testing::{random_adapter, test_metas};
use aside_adapters::{format, Dims};
use aside_backbone::testing::TinyBert;
use aside_backbone::{Backbone, LoadOptions};
use common::Server;
use serde_json::json;

fn tiny() -> (tempfile::TempDir, Vec<u8>, Vec<u8>) {
    let d = tempfile::tempdir().unwrap();
    TinyBert::default().write(&d.path().join("model")).unwrap();
    let b = Backbone::load(&d.path().join("model"), &LoadOptions::default()).unwrap();
    let metas = test_metas(b.sha256());
    let find = |l: &str| metas.iter().find(|(x, _)| *x == l).unwrap().1.clone();
    let retrieval =
        format::write_adapter(&random_adapter(&find("iaa-l"), &Dims::of(&b), b.bert(), 1)).unwrap();
    let rerank = format::write_adapter(&random_adapter(
        &find("rerank-iaa-l"),
        &Dims::of(&b),
        b.bert(),
        2,
    ))
    .unwrap();
    (d, retrieval, rerank)
}

fn assert_error(status: u16, body: &serde_json::Value, want_status: u16, want_type: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["type"], want_type, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
}

#[test]
fn bad_requests_get_their_status_and_change_nothing() {
    let (d, retrieval, rerank) = tiny();
    let model = d.path().join("model");
    let s = Server::start(
        &model,
        &d.path().join("data"),
        &[
            "--max-length",
            "64",
            "--body-limit",
            "4096",
            "--max-inputs",
            "8",
        ],
    );
    let put = |name: &str, bytes: &[u8]| {
        s.raw("PUT", &format!("/v1/adapters/{name}"), &[], Some(bytes))
            .0
    };
    assert_eq!(put("ret", &retrieval), 201);
    assert_eq!(put("ret", &retrieval), 200, "identical bytes again");
    assert_eq!(put("rr", &rerank), 201);
    let (st, c) = s.call("PUT", "/v1/collections/c", Some(&json!({"adapter": "ret"})));
    assert_eq!(st, 201, "{c}");
    let (st, _) = s.call(
        "POST",
        "/v1/collections/c/documents",
        Some(&json!({"documents": [{"id": "a", "text": "the cell"}]})),
    );
    assert_eq!(st, 200);

    // A bad adapter file: refused, the stored version untouched.
    let (_, before) = s.call("GET", "/v1/adapters/ret", None);
    let (st, _, body) = s.raw(
        "PUT",
        "/v1/adapters/ret",
        &[],
        Some(&retrieval[..retrieval.len() - 10]),
    );
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_error(st, &body, 400, "invalid_request");
    assert!(
        body["error"].as_str().unwrap().contains("truncated"),
        "{body}"
    );
    assert_eq!(s.call("GET", "/v1/adapters/ret", None).1, before);
    let (st, _, body) = s.raw("PUT", "/v1/adapters/bad%20name", &[], Some(&retrieval));
    assert_eq!(st, 400, "{}", String::from_utf8_lossy(&body));

    let (st, _, body) = s.raw(
        "POST",
        "/v1/embed",
        &[("content-type", "application/json")],
        Some(b"{\"inputs\": [\"x\""),
    );
    assert_error(
        st,
        &serde_json::from_slice(&body).unwrap(),
        400,
        "invalid_request",
    );
    let (st, b) = s.call(
        "POST",
        "/v1/embed",
        Some(&json!({"inputs": ["x"], "adapter": "nope"})),
    );
    assert_error(st, &b, 404, "not_found");
    let (st, b) = s.call(
        "POST",
        "/v1/embed",
        Some(&json!({"inputs": ["x"], "adapter": "rr"})),
    );
    assert_error(st, &b, 422, "unprocessable");
    let (st, b) = s.call(
        "POST",
        "/v1/rerank",
        Some(&json!({"query": "q", "texts": ["x"], "adapter": "ret"})),
    );
    assert_error(st, &b, 422, "unprocessable");
    let (st, b) = s.call("POST", "/v1/embed", Some(&json!({"inputs": []})));
    assert_error(st, &b, 400, "invalid_request");
    let (st, b) = s.call("POST", "/v1/embed", Some(&json!({"inputs": vec!["a"; 9]})));
    assert_error(st, &b, 413, "too_large");
    let big = json!({"inputs": ["x".repeat(5000)]});
    let (st, b) = s.call("POST", "/v1/embed", Some(&big));
    assert_error(st, &b, 413, "too_large");
    let (st, b) = s.call(
        "POST",
        "/v1/collections/none/search",
        Some(&json!({"query": "q"})),
    );
    assert_error(st, &b, 404, "not_found");
    let (st, b) = s.call("PUT", "/v1/collections/c", None);
    assert_error(st, &b, 409, "conflict");
    let (st, b) = s.call(
        "POST",
        "/v1/collections/c/documents",
        Some(&json!({"documents": [{"id": "z", "text": "a"}, {"id": "z", "text": "b"}]})),
    );
    assert_error(st, &b, 400, "invalid_request");
    let (st, b) = s.call(
        "POST",
        "/v1/collections/c/search",
        Some(&json!({"query": "q", "filter": {"a": {"gt": 1}}})),
    );
    assert_error(st, &b, 400, "invalid_request");
    let (st, b) = s.call(
        "POST",
        "/v1/collections/c/search",
        Some(&json!({"query": "q", "rerank": {"adapter": "ret"}})),
    );
    assert_error(st, &b, 422, "unprocessable");
    let (st, b) = s.call("DELETE", "/v1/adapters/ret", None);
    assert_error(st, &b, 409, "conflict");
    let (st, b) = s.call("DELETE", "/v1/collections/c/documents/missing", None);
    assert_error(st, &b, 404, "not_found");
    // Nothing above changed what is stored.
    let (_, c) = s.call("GET", "/v1/collections/c", None);
    assert_eq!(c["count"], 1);
    let (_, l) = s.call("GET", "/v1/adapters", None);
    assert_eq!(l["adapters"].as_array().unwrap().len(), 2);
    s.stop();
}

#[test]
fn keys_guard_reads_and_writes() {
    let (d, retrieval, _) = tiny();
    let s = Server::start(
        &d.path().join("model"),
        &d.path().join("data"),
        &[
            "--max-length",
            "64",
            "--admin-key",
            "adm",
            "--read-key",
            "rd",
        ],
    );
    let embed = br#"{"inputs": ["x"]}"#;
    let json = ("content-type", "application/json");
    assert_eq!(s.raw("POST", "/v1/embed", &[json], Some(embed)).0, 401);
    assert_eq!(
        s.raw(
            "POST",
            "/v1/embed",
            &[json, ("authorization", "Bearer wrong")],
            Some(embed)
        )
        .0,
        401
    );
    assert_eq!(
        s.raw(
            "POST",
            "/v1/embed",
            &[json, ("authorization", "Bearer rd")],
            Some(embed)
        )
        .0,
        200
    );
    assert_eq!(
        s.raw(
            "POST",
            "/v1/embed",
            &[json, ("x-api-key", "adm")],
            Some(embed)
        )
        .0,
        200
    );
    assert_eq!(
        s.raw(
            "PUT",
            "/v1/adapters/a",
            &[("x-api-key", "rd")],
            Some(&retrieval)
        )
        .0,
        403
    );
    assert_eq!(s.raw("PUT", "/v1/adapters/a", &[], Some(&retrieval)).0, 401);
    assert_eq!(
        s.raw(
            "PUT",
            "/v1/adapters/a",
            &[("x-api-key", "adm")],
            Some(&retrieval)
        )
        .0,
        201
    );
    assert_eq!(
        s.raw("GET", "/health", &[], None).0,
        200,
        "health needs no key"
    );
    assert_eq!(s.raw("GET", "/metrics", &[], None).0, 200);
    s.stop();
}

#[test]
fn overload_answers_429_with_retry_after() {
    let (d, _, _) = tiny();
    let s = Server::start(
        &d.path().join("model"),
        &d.path().join("data"),
        &["--max-length", "64", "--max-in-flight", "0"],
    );
    let (st, h, _) = s.raw(
        "POST",
        "/v1/embed",
        &[("content-type", "application/json")],
        Some(br#"{"inputs": ["x"]}"#),
    );
    assert_eq!(st, 429);
    assert!(h.iter().any(|(k, v)| k == "retry-after" && v == "1"));
    s.stop();
}

#[tokio::test]
async fn router_answers_without_a_socket() {
    use tower::ServiceExt;
    let (d, _, _) = tiny();
    let cli = <aside_server::cli::Cli as clap::Parser>::parse_from([
        "aside",
        "serve",
        "--model",
        d.path().join("model").to_str().unwrap(),
        "--data-dir",
        d.path().join("data").to_str().unwrap(),
        "--max-length",
        "64",
    ]);
    let aside_server::cli::Command::Serve(args) = cli.command else {
        unreachable!()
    };
    let state = aside_server::cli::serve::build_state(&args).unwrap();
    let app = aside_server::http::router(state);
    let req = |m: &str, p: &str, b: &str| {
        axum::http::Request::builder()
            .method(m)
            .uri(p)
            .header("content-type", "application/json")
            .body(axum::body::Body::from(b.to_owned()))
            .unwrap()
    };
    let r = app
        .clone()
        .oneshot(req("GET", "/openapi.json", ""))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
    let spec: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(spec["paths"]["/v1/collections/{name}/search"]["post"].is_object());
    let r = app
        .clone()
        .oneshot(req("POST", "/v1/embed", r#"{"inputs": ["hello world"]}"#))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["embeddings"][0].as_array().unwrap().len(), 32);
    let r = app
        .oneshot(req("POST", "/v1/embed", r#"{"texts": []}"#))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

/// `--precision int8` serves the int8 backbone and says so on `/info`.
#[test]
fn serve_in_int8_reports_its_precision() {
    if !aside_backbone::Precision::Int8.supported() {
        eprintln!("SKIPPED: this CPU has no AVX-512 VNNI");
        return;
    }
    let (d, _, _) = tiny();
    let s = Server::start(
        &d.path().join("model"),
        &d.path().join("data"),
        &["--max-length", "64", "--precision", "int8"],
    );
    let (st, _, body) = s.raw("GET", "/info", &[], None);
    assert_eq!(st, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["precision"], "int8");
    let (st, _, body) = s.raw(
        "POST",
        "/v1/embed",
        &[("content-type", "application/json")],
        Some(br#"{"inputs": ["the cell"]}"#),
    );
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    s.stop();
}
