//! Faults an operator meets, on the real binary: a full disk (a small tmpfs as the
//! data directory) loses nothing acknowledged, answers 507 for the write that did
//! not fit, keeps serving reads and takes writes again once space returns; a
//! corrupt log record inside a segment is skipped and reported, and the records
//! after it are kept; a collection that cannot be opened is reported, not hidden.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use aside_backbone::testing::TinyBert;
use common::Server;
use serde_json::json;

fn model(dir: &Path) -> PathBuf {
    let m = dir.join("model");
    TinyBert::default().write(&m).unwrap();
    m
}

/// A tmpfs of `size` mounted at `dir`, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(Tmpfs(dir.to_owned()));
        }
        let msg = "SKIPPED: cannot mount a tmpfs here (the test needs root, as CI runs)";
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout == b"0\n");
        if root && std::env::var("ASIDE_REQUIRE_MODEL").as_deref() == Ok("1") {
            panic!("{msg}");
        }
        eprintln!("{msg}");
        None
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn upsert(s: &Server, id: &str, text: &str) -> (u16, serde_json::Value) {
    s.call(
        "POST",
        "/v1/collections/c/documents",
        Some(&json!({"documents": [{"id": id, "text": text}]})),
    )
}

#[test]
fn a_full_disk_loses_nothing_acknowledged() {
    let d = tempfile::tempdir().unwrap();
    let model = model(d.path());
    let data = d.path().join("data");
    let Some(_fs) = Tmpfs::mount(&data, "1536k") else {
        return;
    };
    // Ballast whose deletion later gives the space back.
    let ballast = data.join("ballast");
    std::fs::write(&ballast, vec![7u8; 256 << 10]).unwrap();
    let args = ["--max-length", "64", "--body-limit", "4000000"];
    let s = Server::start(&model, &data, &args);
    assert_eq!(s.call("PUT", "/v1/collections/c", None).0, 201);
    let text = "cell gene protein ".repeat(1000); // ~18 KB a record
    let mut acked = Vec::new();
    let mut refused = None;
    for i in 0..400 {
        let id = format!("d{i}");
        let (st, body) = upsert(&s, &id, &format!("{i} {text}"));
        if st == 200 {
            acked.push(id);
        } else {
            refused = Some((st, body));
            break;
        }
    }
    let (st, body) = refused.expect("the disk never filled");
    assert_eq!(st, 507, "{body}");
    assert_eq!(body["type"], "insufficient_storage", "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("disk is full"),
        "{body}"
    );
    assert!(acked.len() > 10, "only {} writes fit", acked.len());
    // Still full: refused again, for that write only; reads are served.
    assert_eq!(upsert(&s, "again", &text).0, 507);
    assert_eq!(
        s.call(
            "GET",
            &format!("/v1/collections/c/documents/{}", acked[0]),
            None
        )
        .0,
        200
    );
    let (st, r) = s.call(
        "POST",
        "/v1/collections/c/search",
        Some(&json!({"query": "cell", "k": 3})),
    );
    assert_eq!(
        (st, r["hits"].as_array().map(Vec::len)),
        (200, Some(3)),
        "{r}"
    );
    let (_, c) = s.call("GET", "/v1/collections/c", None);
    assert_eq!(c["count"], acked.len(), "{c}");
    // Space returns: writes work again.
    std::fs::remove_file(&ballast).unwrap();
    for i in 0..3 {
        let id = format!("after{i}");
        let (st, b) = upsert(&s, &id, "short text");
        assert_eq!(st, 200, "{b}");
        acked.push(id);
    }
    s.stop();
    // Every acknowledged write is there after a restart, and nothing is damaged.
    let s = Server::start(&model, &data, &args);
    let (_, c) = s.call("GET", "/v1/collections/c", None);
    assert_eq!(c["count"], acked.len(), "{c}");
    assert_eq!(c["damage"], json!([]), "{c}");
    for id in &acked {
        let (st, _) = s.call("GET", &format!("/v1/collections/c/documents/{id}"), None);
        assert_eq!(st, 200, "acknowledged document {id} lost");
    }
    assert_eq!(s.call("GET", "/ready", None).0, 200);
    s.stop();
}

/// The offsets of the records of a log segment (`len u32 | crc u32 | payload`).
fn record_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + 8 <= bytes.len() {
        out.push(pos);
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        pos += 8 + len;
    }
    out
}

fn segment(data: &Path) -> PathBuf {
    let dir = data.join("collections/c");
    std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("wal-"))
        .unwrap()
}

#[test]
fn a_corrupt_log_record_is_skipped_and_reported_and_later_records_kept() {
    let d = tempfile::tempdir().unwrap();
    let model = model(d.path());
    let data = d.path().join("data");
    let args = ["--max-length", "64"];
    let s = Server::start(&model, &data, &args);
    assert_eq!(s.call("PUT", "/v1/collections/c", None).0, 201);
    for i in 0..8 {
        assert_eq!(
            upsert(&s, &format!("d{i}"), &format!("document number {i}")).0,
            200
        );
    }
    s.stop();

    // One flipped byte inside the third record's payload.
    let seg = segment(&data);
    let mut bytes = std::fs::read(&seg).unwrap();
    let offsets = record_offsets(&bytes);
    assert_eq!(offsets.len(), 8);
    bytes[offsets[2] + 20] ^= 0x5a;
    std::fs::write(&seg, &bytes).unwrap();
    let s = Server::start(&model, &data, &args);
    let (_, c) = s.call("GET", "/v1/collections/c", None);
    assert_eq!(
        c["count"], 7,
        "only the corrupt record's write is lost: {c}"
    );
    let damage = c["damage"].to_string();
    assert!(damage.contains(&format!("byte {}", offsets[2])), "{c}");
    for i in (0..8).filter(|&i| i != 2) {
        let (st, _) = s.call("GET", &format!("/v1/collections/c/documents/d{i}"), None);
        assert_eq!(st, 200, "d{i} after the corrupt record was lost");
    }
    let (st, r) = s.call("GET", "/ready", None);
    assert_eq!(st, 503, "{r}");
    assert_eq!(r["status"], "damaged");
    assert!(
        r["damaged"]["c"].to_string().contains("corrupt record"),
        "{r}"
    );
    // The collection still takes writes.
    assert_eq!(upsert(&s, "new", "written after the damage").0, 200);
    s.stop();

    // A corrupt length frame inside the segment: the reader finds the next record.
    let mut bytes = std::fs::read(&seg).unwrap();
    let offsets = record_offsets(&bytes);
    bytes[offsets[4]..offsets[4] + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    std::fs::write(&seg, &bytes).unwrap();
    let s = Server::start(&model, &data, &args);
    let (_, c) = s.call("GET", "/v1/collections/c", None);
    // d2 and d4 lost (d2's corrupt record is still in the file, so offsets[4] is d4).
    assert_eq!(c["count"], 7, "{c}");
    assert_eq!(c["damage"].as_array().unwrap().len(), 2, "{c}");
    assert_eq!(
        s.call("GET", "/v1/collections/c/documents/new", None).0,
        200
    );
    s.stop();
}

#[test]
fn a_collection_that_cannot_be_opened_is_reported() {
    let d = tempfile::tempdir().unwrap();
    let model = model(d.path());
    let data = d.path().join("data");
    let args = ["--max-length", "64"];
    let s = Server::start(&model, &data, &args);
    assert_eq!(s.call("PUT", "/v1/collections/c", None).0, 201);
    assert_eq!(s.call("PUT", "/v1/collections/ok", None).0, 201);
    assert_eq!(upsert(&s, "a", "text").0, 200);
    s.stop();
    std::fs::write(data.join("collections/c/manifest.json"), b"{not json").unwrap();
    let s = Server::start(&model, &data, &args);
    let (st, r) = s.call("GET", "/ready", None);
    assert_eq!(st, 503, "{r}");
    assert!(r["damaged"]["c"].to_string().contains("not opened"), "{r}");
    let (st, e) = s.call("GET", "/v1/collections/c", None);
    assert_eq!((st, e["type"].as_str()), (503, Some("unavailable")), "{e}");
    assert!(
        e["error"].as_str().unwrap().contains("could not be opened"),
        "{e}"
    );
    assert_eq!(s.call("GET", "/v1/collections/ok", None).0, 200);
    // Its files are left as they were.
    assert!(data.join("collections/c/manifest.json").is_file());
    s.stop();
}

fn adapters(model: &Path) -> (Vec<u8>, Vec<u8>) {
    use aside_adapters::testing::{random_adapter, test_metas};
    use aside_adapters::{format, Dims};
    let b = aside_backbone::Backbone::load(model, &Default::default()).unwrap();
    let metas = test_metas(b.sha256());
    let find = |l: &str| metas.iter().find(|(x, _)| *x == l).unwrap().1.clone();
    let make = |l: &str, seed| {
        format::write_adapter(&random_adapter(&find(l), &Dims::of(&b), b.bert(), seed)).unwrap()
    };
    (make("iaa-l", 1), make("rerank-iaa-l", 2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_upload_without_a_key_is_refused_before_its_stream_is_read() {
    use aside_server::grpc::pb;
    let d = tempfile::tempdir().unwrap();
    let model = model(d.path());
    let s = Server::start(
        &model,
        &d.path().join("data"),
        &["--max-length", "64", "--admin-key", "adm"],
    );
    let ch = common::grpc_channel(&s).await;
    let mut client = pb::adapters_client::AdaptersClient::new(ch);
    // A stream that never ends: only a refusal before reading it can answer.
    let endless = tokio_stream::StreamExt::throttle(
        tokio_stream::iter((0..).map(|i| pb::AdapterChunk {
            name: if i == 0 { "a".into() } else { String::new() },
            data: vec![0u8; 1 << 16],
        })),
        std::time::Duration::from_millis(5),
    );
    let e = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        client.upload_adapter(endless),
    )
    .await
    .expect("the server read the stream instead of refusing it")
    .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    s.stop();
}

#[test]
fn metrics_label_routes_not_raw_paths() {
    let d = tempfile::tempdir().unwrap();
    let model = model(d.path());
    let s = Server::start(&model, &d.path().join("data"), &["--max-length", "64"]);
    let before = s.raw("GET", "/metrics", &[], None).2.len();
    for i in 0..300 {
        s.raw("GET", &format!("/v1/adapters/no-such-{i}"), &[], None);
        s.raw("GET", &format!("/v1/x%22y{i}"), &[], None);
    }
    let text = String::from_utf8(s.raw("GET", "/metrics", &[], None).2).unwrap();
    assert!(
        text.len() < before + 4000,
        "metrics grew by {} bytes",
        text.len() - before
    );
    assert!(!text.contains("no-such"), "a raw name became a label");
    assert!(
        text.contains("route=\"/v1/adapters/{name}\",adapter=\"\",status=\"404\""),
        "{text}"
    );
    assert!(text.contains("route=\"unmatched\""), "{text}");
    // Every sample line parses as `name{labels} value`.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap();
        assert!(value.parse::<f64>().is_ok(), "{line}");
        assert_eq!(series.matches('"').count() % 2, 0, "{line}");
    }
    s.stop();
}

#[test]
fn adapter_names_tasks_and_candidates_are_checked() {
    let d = tempfile::tempdir().unwrap();
    let model = model(d.path());
    let (retrieval, rerank) = adapters(&model);
    let s = Server::start(&model, &d.path().join("data"), &["--max-length", "64"]);
    // A name the store's own layout uses.
    let (st, _, body) = s.raw("PUT", "/v1/adapters/FORMAT", &[], Some(&retrieval));
    assert_eq!(st, 400, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        s.raw("PUT", "/v1/adapters/ret", &[], Some(&retrieval)).0,
        201
    );
    assert_eq!(s.raw("PUT", "/v1/adapters/rr", &[], Some(&rerank)).0, 201);
    // A rerank file as a new version of a retrieval adapter: refused, nothing changes.
    let (_, before) = s.call("GET", "/v1/adapters/ret", None);
    let (st, _, body) = s.raw("PUT", "/v1/adapters/ret", &[], Some(&rerank));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (st, v["type"].as_str()),
        (422, Some("unprocessable")),
        "{v}"
    );
    assert_eq!(s.call("GET", "/v1/adapters/ret", None).1, before);
    // Re-ranking up to 1000 candidates, whatever --max-inputs (256) says.
    assert_eq!(
        s.call("PUT", "/v1/collections/c", Some(&json!({"adapter": "ret"})))
            .0,
        201
    );
    let docs: Vec<serde_json::Value> = (0..300)
        .map(|i| json!({"id": format!("d{i}"), "text": format!("doc {i}")}))
        .collect();
    for chunk in docs.chunks(100) {
        let (st, b) = s.call(
            "POST",
            "/v1/collections/c/documents",
            Some(&json!({"documents": chunk})),
        );
        assert_eq!(st, 200, "{b}");
    }
    let body = json!({"query": "doc", "k": 5, "rerank": {"adapter": "rr", "candidates": 300}});
    let (st, r) = s.call("POST", "/v1/collections/c/search", Some(&body));
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["hits"].as_array().unwrap().len(), 5);
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_adapter_and_creating_a_collection_on_it_never_both_succeed() {
    let d = tempfile::tempdir().unwrap();
    let model = model(d.path());
    let (retrieval, _) = adapters(&model);
    let s = std::sync::Arc::new(Server::start(
        &model,
        &d.path().join("data"),
        &["--max-length", "64"],
    ));
    for round in 0..15 {
        assert_eq!(s.raw("PUT", "/v1/adapters/a", &[], Some(&retrieval)).0, 201);
        let (s1, s2) = (s.clone(), s.clone());
        let name = format!("c{round}");
        let n2 = name.clone();
        let create = tokio::task::spawn_blocking(move || {
            s1.call(
                "PUT",
                &format!("/v1/collections/{n2}"),
                Some(&json!({"adapter": "a"})),
            )
            .0
        });
        let delete =
            tokio::task::spawn_blocking(move || s2.call("DELETE", "/v1/adapters/a", None).0);
        let (c, del) = (create.await.unwrap(), delete.await.unwrap());
        assert!(!(c == 201 && del == 200), "round {round}: both succeeded");
        if c == 201 {
            // The collection works: its adapter is there.
            let (st, b) = s.call(
                "POST",
                &format!("/v1/collections/{name}/documents"),
                Some(&json!({"documents": [{"id": "x", "text": "y"}]})),
            );
            assert_eq!(st, 200, "{b}");
            assert_eq!(
                s.call("DELETE", &format!("/v1/collections/{name}"), None).0,
                200
            );
            assert_eq!(s.call("DELETE", "/v1/adapters/a", None).0, 200);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nan_fuse_over_grpc_is_refused_as_over_http() {
    use aside_server::grpc::pb;
    let d = tempfile::tempdir().unwrap();
    let model = model(d.path());
    let (retrieval, rerank) = adapters(&model);
    let s = Server::start(&model, &d.path().join("data"), &["--max-length", "64"]);
    s.raw("PUT", "/v1/adapters/ret", &[], Some(&retrieval));
    s.raw("PUT", "/v1/adapters/rr", &[], Some(&rerank));
    s.call("PUT", "/v1/collections/c", Some(&json!({"adapter": "ret"})));
    let ch = common::grpc_channel(&s).await;
    let mut client = pb::collections_client::CollectionsClient::new(ch);
    for fuse in [f32::NAN, f32::INFINITY, -1.0] {
        let e = client
            .search(pb::SearchRequest {
                collection: "c".into(),
                query: "q".into(),
                rerank: Some(pb::RerankSpec {
                    adapter: "rr".into(),
                    candidates: None,
                    fuse: Some(fuse),
                }),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{fuse}: {e:?}");
        assert!(e.message().contains("rerank.fuse"), "{e:?}");
    }
    s.stop();
}

#[test]
fn slow_and_idle_clients_hold_no_slot_and_are_cut_off() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;
    let d = tempfile::tempdir().unwrap();
    let model = model(d.path());
    let s = Server::start(
        &model,
        &d.path().join("data"),
        &[
            "--max-length",
            "64",
            "--max-in-flight",
            "2",
            "--header-timeout",
            "2",
            "--body-timeout",
            "3",
        ],
    );
    // Four clients that send headers and never finish their bodies.
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let mut c = TcpStream::connect(&s.addr).unwrap();
        c.write_all(
            b"POST /v1/embed HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"inputs\"",
        )
        .unwrap();
        stalled.push(c);
    }
    std::thread::sleep(Duration::from_millis(300));
    // Everyone else is served: the stalled bodies hold no in-flight slot.
    for _ in 0..3 {
        let (st, b) = s.call("POST", "/v1/embed", Some(&json!({"inputs": ["x"]})));
        assert_eq!(st, 200, "{b}");
    }
    // The stalled ones are answered 408 once the body timeout passes.
    for c in stalled.iter_mut() {
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 512];
        let n = c.read(&mut buf).unwrap();
        let head = String::from_utf8_lossy(&buf[..n]);
        assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    }
    // A client that never finishes its headers, and one idle after a response, are
    // closed after the header timeout.
    let mut partial = TcpStream::connect(&s.addr).unwrap();
    partial
        .write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n")
        .unwrap();
    let mut idle = TcpStream::connect(&s.addr).unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    // The server closes both (end of stream), long before the client's own read
    // timeout would end the read with an error.
    for (name, c) in [("partial headers", &mut partial), ("idle", &mut idle)] {
        c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut all = Vec::new();
        let closed = c.read_to_end(&mut all);
        assert!(
            closed.is_ok(),
            "{name} connection was not closed: {closed:?}"
        );
    }
    s.stop();
}
