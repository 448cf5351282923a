//! The Milvus store against a real Milvus (milvus-lite's gRPC server, started here
//! from the test virtualenv): the local engine's collection scenarios again with
//! `--store milvus` (same hits on 500 SciFact documents, filters, delete, count,
//! threshold, over HTTP and gRPC); filter injection; two replicas on one Milvus
//! and one shared data directory (adapters and collections seen by both, one
//! re-embedding on an adapter update, a SIGKILLed replica losing nothing
//! acknowledged).

mod common;

use std::collections::HashSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aside_adapters::testing::{random_adapter, test_metas};
use aside_adapters::{format, Dims, Kind, Task};
use aside_backbone::testing::real_model;
use aside_backbone::{Backbone, LoadOptions};
use aside_server::grpc::pb;
use common::{corpus, ids, put_docs, queries, scifact, search, wait_for, Server};
use serde_json::{json, Value};

/// A milvus-lite server on a free loopback port, stopped on drop.
struct Milvus {
    child: Child,
    url: String,
    bin: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
}

fn spawn_milvus(bin: &Path, dir: &Path, port: u16) -> Child {
    let child = Command::new(bin)
        .args(["server", "--data-dir"])
        .arg(dir)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start milvus-lite");
    let addr = format!("127.0.0.1:{port}");
    let up = wait_for(60, || std::net::TcpStream::connect(&addr).is_ok());
    assert!(up, "milvus-lite did not listen on {addr} within 60 s");
    child
}

impl Milvus {
    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Started again on the same port and data.
    fn restart(&mut self) {
        self.stop();
        self.child = spawn_milvus(&self.bin, self.dir.path(), self.port);
    }
}

impl Drop for Milvus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn required() -> bool {
    std::env::var("ASIDE_REQUIRE_MODEL").as_deref() == Ok("1")
}

/// Starts milvus-lite from the test virtualenv; `None` (SKIPPED) when it is not
/// installed, a panic under `ASIDE_REQUIRE_MODEL=1`.
fn milvus() -> Option<Milvus> {
    let python = common::python()?;
    let bin = python.parent().unwrap().join("milvus-lite");
    if !bin.is_file() {
        let msg = format!(
            "milvus-lite is not at {} (run scripts/pyenv.sh)",
            bin.display()
        );
        assert!(!required(), "{msg}");
        eprintln!("SKIPPED: {msg}");
        return None;
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let child = spawn_milvus(&bin, dir.path(), port);
    Some(Milvus {
        child,
        url: format!("http://127.0.0.1:{port}"),
        bin,
        port,
        dir,
    })
}

fn adapter(b: &Backbone, kind: Kind, task: Task, seed: u64) -> Vec<u8> {
    let metas = test_metas(b.sha256());
    let label = match (kind, task) {
        (Kind::IaaL, Task::Retrieval) => "iaa-l",
        (Kind::IaaL, Task::Rerank) => "rerank-iaa-l",
        _ => unreachable!(),
    };
    let meta = metas.iter().find(|(l, _)| *l == label).unwrap().1.clone();
    format::write_adapter(&random_adapter(&meta, &Dims::of(b), b.bert(), seed)).unwrap()
}

struct Env {
    model: PathBuf,
    data: PathBuf,
    milvus: Milvus,
}

impl Env {
    /// One replica whose default store is this Milvus.
    fn server(&self, data_dir: &Path) -> Server {
        Server::start(
            &self.model,
            data_dir,
            &["--store", "milvus", "--milvus-url", &self.milvus.url],
        )
    }
}

fn env() -> Option<Env> {
    let model = real_model(env!("CARGO_MANIFEST_DIR"))?;
    let data = scifact()?;
    let milvus = milvus()?;
    Some(Env {
        model,
        data,
        milvus,
    })
}

#[test]
fn the_local_scenarios_hold_on_milvus() {
    let Some(e) = env() else { return };
    let dir = tempfile::tempdir().unwrap();
    let s = e.server(dir.path());
    // The same documents in both stores: the default store (milvus), and local.
    let (st, c) = s.call("PUT", "/v1/collections/sci", None);
    assert_eq!((st, c["store"].as_str()), (201, Some("milvus")), "{c}");
    let (st, c) = s.call(
        "PUT",
        "/v1/collections/sci-local",
        Some(&json!({"store": "local"})),
    );
    assert_eq!((st, c["store"].as_str()), (201, Some("local")), "{c}");
    // One name across both stores.
    let (st, r) = s.call(
        "PUT",
        "/v1/collections/sci",
        Some(&json!({"store": "local"})),
    );
    assert_eq!(st, 409, "{r}");

    let docs = corpus(&e.data, 500);
    put_docs(&s, "sci", &docs);
    put_docs(&s, "sci-local", &docs);
    let (_, c) = s.call("GET", "/v1/collections/sci", None);
    assert_eq!(c["count"], 500, "{c}");

    // Top-10 overlap ≥ 0.9 (both approximate), same scores for shared hits.
    let qs = queries(&e.data, 30);
    let (mut shared, mut total) = (0usize, 0usize);
    for q in &qs {
        let m = search(&s, "sci", json!({"query": q, "k": 10}));
        let l = search(&s, "sci-local", json!({"query": q, "k": 10, "exact": true}));
        let (mi, li) = (ids(&m), ids(&l));
        let lset: HashSet<&String> = li.iter().collect();
        shared += mi.iter().filter(|i| lset.contains(i)).count();
        total += li.len();
        let (ms, ls) = (&m["hits"][0]["score"], &l["hits"][0]["score"]);
        if mi[0] == li[0] {
            assert!(
                (ms.as_f64().unwrap() - ls.as_f64().unwrap()).abs() < 1e-4,
                "{ms} vs {ls}"
            );
        }
    }
    let overlap = shared as f64 / total as f64;
    eprintln!("top-10 overlap, Milvus vs exact local search: {overlap:.3}");
    assert!(overlap >= 0.9, "overlap {overlap}");

    // Filters (equality, `in`, and/or), threshold, get, delete, count.
    let q = &qs[0];
    let f = search(
        &s,
        "sci",
        json!({"query": q, "k": 20, "filter": {"part": {"in": [1, 3]}, "even": false}}),
    );
    let hits = f["hits"].as_array().unwrap();
    assert!(!hits.is_empty());
    for h in hits {
        let p = h["metadata"]["part"].as_u64().unwrap();
        assert!((p == 1 || p == 3) && h["metadata"]["even"] == false, "{h}");
    }
    let lf = search(
        &s,
        "sci-local",
        json!({"query": q, "k": 20, "exact": true, "filter": {"part": {"in": [1, 3]}, "even": false}}),
    );
    assert_eq!(ids(&f).len(), ids(&lf).len());
    let o = search(
        &s,
        "sci",
        json!({"query": q, "k": 50, "filter": {"or": [{"part": 0}, {"part": 4}]}}),
    );
    for h in o["hits"].as_array().unwrap() {
        let p = h["metadata"]["part"].as_u64().unwrap();
        assert!(p == 0 || p == 4, "{h}");
    }
    let all = search(&s, "sci", json!({"query": q, "k": 10}));
    let t = all["hits"][4]["score"].as_f64().unwrap();
    let th = search(&s, "sci", json!({"query": q, "k": 10, "threshold": t}));
    assert_eq!(ids(&th), ids(&all)[..ids(&th).len()].to_vec());
    assert!(th["hits"]
        .as_array()
        .unwrap()
        .iter()
        .all(|h| h["score"].as_f64().unwrap() >= t));
    assert!(ids(&th).len() >= 5);

    let first = ids(&all)[0].clone();
    let (st, d) = s.call(
        "GET",
        &format!("/v1/collections/sci/documents/{first}"),
        None,
    );
    assert_eq!(st, 200, "{d}");
    assert_eq!(d["id"], first.as_str());
    let (st, _) = s.call(
        "DELETE",
        &format!("/v1/collections/sci/documents/{first}"),
        None,
    );
    assert_eq!(st, 200);
    let (st, _) = s.call(
        "DELETE",
        &format!("/v1/collections/sci/documents/{first}"),
        None,
    );
    assert_eq!(st, 404);
    let again = search(&s, "sci", json!({"query": q, "k": 10}));
    assert!(!ids(&again).contains(&first));
    let (_, c) = s.call("GET", "/v1/collections/sci", None);
    assert_eq!(c["count"], 499, "{c}");
    let (st, _) = s.call(
        "GET",
        &format!("/v1/collections/sci/documents/{first}"),
        None,
    );
    assert_eq!(st, 404);

    // Limits Milvus imposes are refused up front, naming the limit; `exact` too.
    let long = "word ".repeat(14_000);
    let (st, r) = s.call(
        "POST",
        "/v1/collections/sci/documents",
        Some(&json!({"documents": [{"id": "long", "text": long}]})),
    );
    assert_eq!(st, 413, "{r}");
    assert!(r["error"].as_str().unwrap().contains("65535"), "{r}");
    let (st, r) = s.call(
        "POST",
        "/v1/collections/sci/search",
        Some(&json!({"query": "x", "exact": true})),
    );
    assert_eq!(st, 400, "{r}");
    let (st, r) = s.call(
        "POST",
        "/v1/collections/sci/search",
        Some(&json!({"query": "x", "filter": {"k": [1, 2]}})),
    );
    assert_eq!(st, 400, "{r}");
    assert!(r["error"].as_str().unwrap().contains("Milvus"), "{r}");

    // The same over gRPC.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut cc =
            pb::collections_client::CollectionsClient::connect(format!("http://{}", s.grpc_addr))
                .await
                .unwrap();
        let g = cc
            .search(pb::SearchRequest {
                collection: "sci".into(),
                query: q.clone(),
                k: Some(10),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let gi: Vec<String> = g.hits.iter().map(|h| h.id.clone()).collect();
        assert_eq!(gi, ids(&again));
        let c = cc
            .get_collection(pb::CollectionRef { name: "sci".into() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((c.count, c.store.as_str()), (499, "milvus"));
        let c = cc
            .create_collection(pb::CreateCollectionRequest {
                name: "grpc-made".into(),
                store: "milvus".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(c.store, "milvus");
    });

    // Filter injection: quotes, backslashes and `or 1==1` stay inside the string.
    let evil = [
        r#"x" or 1==1 or meta["a"] == ""#,
        r#"x\" or 1==1 or ""=="#,
        r#"\"#,
        "x' or '1'=='1",
        r#"x") or (id != ""#,
    ];
    let evil_docs: Vec<Value> = evil
        .iter()
        .enumerate()
        .map(|(i, v)| json!({"id": format!("e{i}"), "text": format!("evil {i}"), "metadata": {"tag": v}}))
        .chain([json!({"id": "plain", "text": "evil plain", "metadata": {"tag": "x"}})])
        .collect();
    put_docs(&s, "grpc-made", &evil_docs);
    for (i, v) in evil.iter().enumerate() {
        let r = search(
            &s,
            "grpc-made",
            json!({"query": "evil", "k": 10, "filter": {"tag": v}}),
        );
        assert_eq!(ids(&r), vec![format!("e{i}")], "filter {v:?} matched {r}");
        let r = search(
            &s,
            "grpc-made",
            json!({"query": "evil", "k": 10, "filter": {"tag": {"in": [v, "nothing"]}}}),
        );
        assert_eq!(
            ids(&r),
            vec![format!("e{i}")],
            "filter in [{v:?}] matched {r}"
        );
        // As a field name, too.
        let r = search(
            &s,
            "grpc-made",
            json!({"query": "evil", "k": 10, "filter": {*v: "x"}}),
        );
        assert!(ids(&r).is_empty(), "field {v:?} matched {r}");
    }
    let (st, r) = s.call("GET", "/v1/collections", None);
    assert_eq!(st, 200);
    let names: Vec<&str> = r["collections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["grpc-made", "sci", "sci-local"]);
    let (st, _) = s.call("DELETE", "/v1/collections/grpc-made", None);
    assert_eq!(st, 200);
    let (st, _) = s.call("GET", "/v1/collections/grpc-made", None);
    assert_eq!(st, 404);

    // dot → IP and l2 → L2 (Milvus's squared distance becomes minus the distance):
    // the same hits and scores as the embedded engine's exact search.
    for metric in ["dot", "l2"] {
        for store in ["milvus", "local"] {
            let (st, r) = s.call(
                "PUT",
                &format!("/v1/collections/{metric}-{store}"),
                Some(&json!({"metric": metric, "store": store})),
            );
            assert_eq!(st, 201, "{r}");
            put_docs(&s, &format!("{metric}-{store}"), &docs[..100]);
        }
        let m = search(
            &s,
            &format!("{metric}-milvus"),
            json!({"query": q, "k": 5, "ef": 200}),
        );
        let l = search(
            &s,
            &format!("{metric}-local"),
            json!({"query": q, "k": 5, "exact": true}),
        );
        assert_eq!(ids(&m), ids(&l), "{metric}");
        for (a, b) in m["hits"]
            .as_array()
            .unwrap()
            .iter()
            .zip(l["hits"].as_array().unwrap())
        {
            let (a, b) = (a["score"].as_f64().unwrap(), b["score"].as_f64().unwrap());
            assert!((a - b).abs() < 1e-3, "{metric}: {a} vs {b}");
        }
    }

    // Milvus gone: its collections answer 503 and /ready says why; local ones serve.
    // Back: served again without a restart, nothing lost.
    let Env { mut milvus, .. } = e;
    milvus.stop();
    let (st, r) = s.call(
        "POST",
        "/v1/collections/sci/search",
        Some(&json!({"query": q})),
    );
    assert_eq!(st, 503, "{r}");
    let (st, r) = s.call("GET", "/ready", None);
    assert_eq!(
        (st, r["status"].as_str()),
        (503, Some("store_unavailable")),
        "{r}"
    );
    let l = search(&s, "sci-local", json!({"query": q, "k": 3}));
    assert_eq!(l["hits"].as_array().unwrap().len(), 3);
    milvus.restart();
    let back = wait_for(60, || s.call("GET", "/ready", None).0 == 200);
    assert!(back, "not ready again after Milvus came back");
    let r = search(&s, "sci", json!({"query": q, "k": 10}));
    assert_eq!(ids(&r), ids(&again));
    let (_, c) = s.call("GET", "/v1/collections/sci", None);
    assert_eq!(c["count"], 499, "{c}");
    s.stop();
}

#[test]
fn two_replicas_share_collections_adapters_and_one_reembedding() {
    let Some(e) = env() else { return };
    let b = Backbone::load(&e.model, &LoadOptions::default()).unwrap();
    let (v1, v2) = (
        adapter(&b, Kind::IaaL, Task::Retrieval, 1),
        adapter(&b, Kind::IaaL, Task::Retrieval, 2),
    );
    let shared = tempfile::tempdir().unwrap();
    let args = ["--store", "milvus", "--milvus-url", e.milvus.url.as_str()];
    let a = Server::start(&e.model, shared.path(), &args);
    let bsrv = Server::start(&e.model, shared.path(), &args);

    // An adapter uploaded and a collection written through A: searched through B.
    assert_eq!(a.raw("PUT", "/v1/adapters/task", &[], Some(&v1)).0, 201);
    let (st, c) = a.call(
        "PUT",
        "/v1/collections/shared",
        Some(&json!({"adapter": "task"})),
    );
    assert_eq!(st, 201, "{c}");
    let version1 = c["adapter_version"].as_str().unwrap().to_owned();
    let docs = corpus(&e.data, 200);
    put_docs(&a, "shared", &docs);
    let q = docs[17]["metadata"]["title"].as_str().unwrap();
    let ra = search(&a, "shared", json!({"query": q, "k": 5}));
    let rb = search(&bsrv, "shared", json!({"query": q, "k": 5}));
    assert_eq!(ids(&ra), ids(&rb));
    assert_eq!(ids(&rb)[0], docs[17]["id"].as_str().unwrap());
    assert_eq!(rb["adapter_version"], version1.as_str());
    let (st, r) = bsrv.call("GET", "/v1/adapters/task", None);
    assert_eq!(st, 200, "{r}");

    // An update through B re-embeds once; both replicas switch to the new version.
    let (st, r) = {
        let (st, _, body) = bsrv.raw("PUT", "/v1/adapters/task", &[], Some(&v2));
        (st, serde_json::from_slice::<Value>(&body).unwrap())
    };
    assert_eq!(st, 201, "{r}");
    let version2 = r["version"].as_str().unwrap().to_owned();
    assert_ne!(version1, version2);
    for s in [&a, &bsrv] {
        let switched = wait_for(120, || {
            let (_, c) = s.call("GET", "/v1/collections/shared", None);
            c["adapter_version"] == version2.as_str() && c["status"] == "ready"
        });
        assert!(switched, "a replica did not switch to {version2}");
    }
    let ra = search(&a, "shared", json!({"query": q, "k": 5}));
    let rb = search(&bsrv, "shared", json!({"query": q, "k": 5}));
    assert_eq!(ra["adapter_version"], version2.as_str());
    assert_eq!(ids(&ra), ids(&rb));
    let (_, c) = a.call("GET", "/v1/collections/shared", None);
    assert_eq!(c["count"], 200, "{c}");
    drop(a);
    drop(bsrv);

    // A replica SIGKILLed mid-write loses no acknowledged document.
    let a = Server::start(&e.model, shared.path(), &args);
    let addr = a.addr.clone();
    let writer = std::thread::spawn(move || {
        let mut acked = Vec::new();
        for i in 0..10_000 {
            let body = json!({"documents": [{"id": format!("k{i}"), "text": format!("kill test document {i}")}]});
            let b = serde_json::to_vec(&body).unwrap();
            // The connection cut by the kill ends the loop: that write is not acknowledged.
            let r = std::panic::catch_unwind(|| {
                common::http(
                    &addr,
                    "POST",
                    "/v1/collections/shared/documents",
                    &[("content-type", "application/json")],
                    Some(&b),
                )
                .0
            });
            if r.ok() != Some(200) {
                break;
            }
            acked.push(format!("k{i}"));
        }
        acked
    });
    std::thread::sleep(Duration::from_secs(3));
    Command::new("kill")
        .args(["-9", &a.child.id().to_string()])
        .status()
        .unwrap();
    let acked = writer.join().unwrap();
    assert!(
        !acked.is_empty(),
        "no write was acknowledged before the kill"
    );
    let b2 = Server::start(&e.model, shared.path(), &args);
    for id in &acked {
        let (st, d) = b2.call(
            "GET",
            &format!("/v1/collections/shared/documents/{id}"),
            None,
        );
        assert_eq!(st, 200, "acknowledged {id} lost: {d}");
    }
    let (_, c) = b2.call("GET", "/v1/collections/shared", None);
    assert!(
        c["count"].as_u64().unwrap() >= 200 + acked.len() as u64,
        "{c}"
    );
    eprintln!(
        "{} writes acknowledged before SIGKILL, all found",
        acked.len()
    );
    drop(a);
    b2.stop();
}

#[test]
fn lexical_and_hybrid_search_on_milvus() {
    let Some(e) = env() else { return };
    let dir = tempfile::tempdir().unwrap();
    let s = e.server(dir.path());
    let (st, c) = s.call("PUT", "/v1/collections/lex", None);
    assert_eq!((st, c["store"].as_str()), (201, Some("milvus")), "{c}");
    assert_eq!(c["lexical"], json!({"language": "en"}), "{c}");
    let (st, _) = s.call(
        "PUT",
        "/v1/collections/lex-local",
        Some(&json!({"store": "local"})),
    );
    assert_eq!(st, 201);
    let docs = corpus(&e.data, 500);
    put_docs(&s, "lex", &docs);
    put_docs(&s, "lex-local", &docs);

    // A title finds its document first through Milvus's BM25 function, as locally.
    for d in docs.iter().step_by(50) {
        let title = d["metadata"]["title"].as_str().unwrap();
        for coll in ["lex", "lex-local"] {
            let r = search(&s, coll, json!({"query": title, "k": 5, "mode": "lexical"}));
            assert_eq!(ids(&r)[0], d["id"].as_str().unwrap(), "{coll} {title}: {r}");
            assert_eq!(r["hits"][0]["found_by"]["lexical"]["rank"], 1);
        }
    }
    // Two BM25 implementations (Milvus's analyzer and statistics, tantivy's) agree
    // on most of the top 10.
    let qs = queries(&e.data, 30);
    let (mut shared, mut total) = (0usize, 0usize);
    for q in &qs {
        let m = ids(&search(
            &s,
            "lex",
            json!({"query": q, "k": 10, "mode": "lexical"}),
        ));
        let l = ids(&search(
            &s,
            "lex-local",
            json!({"query": q, "k": 10, "mode": "lexical"}),
        ));
        let lset: HashSet<&String> = l.iter().collect();
        shared += m.iter().filter(|i| lset.contains(i)).count();
        total += l.len();
    }
    let overlap = shared as f64 / total as f64;
    eprintln!("lexical top-10 overlap, Milvus BM25 vs tantivy: {overlap:.3}");
    assert!(overlap >= 0.6, "overlap {overlap}");
    // Filters on the lexical side; hybrid with both sides named.
    let f = search(
        &s,
        "lex",
        json!({"query": qs[0], "k": 20, "mode": "lexical", "filter": {"part": {"in": [1, 3]}}}),
    );
    assert!(!ids(&f).is_empty());
    for h in f["hits"].as_array().unwrap() {
        let p = h["metadata"]["part"].as_u64().unwrap();
        assert!(p == 1 || p == 3, "{h}");
    }
    let h = search(
        &s,
        "lex",
        json!({"query": qs[1], "k": 10, "mode": "hybrid"}),
    );
    let hits = h["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 10);
    assert!(hits.iter().any(|x| x["found_by"].get("dense").is_some()
        && x["found_by"].get("lexical").is_some()), "{h}");
    // A write is found lexically at once (Strong consistency), a deleted one not.
    let (st, _) = s.call(
        "POST",
        "/v1/collections/lex/documents",
        Some(&json!({"documents": [{"id": "z", "text": "quasicrystalline zeolite lattices"}]})),
    );
    assert_eq!(st, 200);
    let r = search(
        &s,
        "lex",
        json!({"query": "zeolite", "k": 3, "mode": "lexical"}),
    );
    assert_eq!(ids(&r), vec!["z"]);
    let (st, _) = s.call("DELETE", "/v1/collections/lex/documents/z", None);
    assert_eq!(st, 200);
    let r = search(
        &s,
        "lex",
        json!({"query": "zeolite", "k": 3, "mode": "lexical"}),
    );
    assert!(ids(&r).is_empty(), "{r}");
    // gRPC, the same hits.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let g = rt.block_on(async {
        let mut cc = pb::collections_client::CollectionsClient::new(common::grpc_channel(&s).await);
        cc.search(pb::SearchRequest {
            collection: "lex".into(),
            query: qs[2].clone(),
            k: Some(10),
            mode: "hybrid".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
    });
    let gi: Vec<String> = g.hits.iter().map(|h| h.id.clone()).collect();
    assert_eq!(
        gi,
        ids(&search(
            &s,
            "lex",
            json!({"query": qs[2], "k": 10, "mode": "hybrid"})
        ))
    );
    // Without a lexical index: a 400 that says so.
    let (st, _) = s.call(
        "PUT",
        "/v1/collections/lex-none",
        Some(&json!({"lexical": "none"})),
    );
    assert_eq!(st, 201);
    let (st, r) = s.call(
        "POST",
        "/v1/collections/lex-none/search",
        Some(&json!({"query": "x", "mode": "lexical"})),
    );
    assert_eq!(st, 400, "{r}");
    assert!(
        r["error"].as_str().unwrap().contains("lexical index"),
        "{r}"
    );
}
