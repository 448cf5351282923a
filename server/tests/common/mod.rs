//! Test helpers: the real `aside serve` process on a loopback port 0, and a minimal
//! HTTP/1.1 client over a TcpStream.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub struct Server {
    pub child: Child,
    pub addr: String,
    /// The gRPC address (host:port).
    pub grpc_addr: String,
}

impl Server {
    /// Starts `aside serve` with `--port 0` and waits for its address.
    pub fn start(model: &Path, data: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_aside"))
            .args(["serve", "--port", "0", "--grpc-port", "0", "--model"])
            .arg(model)
            .arg("--data-dir")
            .arg(data)
            .args(extra)
            .env("ASIDE_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn aside serve");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            let mut grpc = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(a) = line.split("grpc listening on ").nth(1) {
                    grpc = a.trim().to_owned();
                }
                if !sent {
                    if let Some(a) = line.split("listening on http://").nth(1) {
                        tx.send((a.trim().to_owned(), grpc.clone())).unwrap();
                        sent = true;
                    }
                }
                eprintln!("[server] {line}");
            }
        });
        let (addr, grpc_addr) = rx
            .recv_timeout(Duration::from_secs(180))
            .expect("server did not report its address");
        Server {
            child,
            addr,
            grpc_addr,
        }
    }

    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let b = body.map(|b| serde_json::to_vec(b).unwrap());
        let (status, _, bytes) = http(
            &self.addr,
            method,
            path,
            &[("content-type", "application/json")],
            b.as_deref(),
        );
        let v = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (status, v)
    }

    pub fn raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> (u16, Vec<(String, String)>, Vec<u8>) {
        http(&self.addr, method, path, headers, body)
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) {
        unsafe_kill(self.child.id(), 15);
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                assert!(st.success(), "server exited with {st}");
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "server did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unsafe_kill(pid: u32, sig: i32) {
    Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .expect("kill");
}

/// One request on a fresh connection; returns status, headers and body.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(600))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    let body = body.unwrap_or(&[]);
    req.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header end");
    let head = String::from_utf8_lossy(&resp[..split]).into_owned();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let hdrs: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut payload = resp[split + 4..].to_vec();
    if hdrs
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        payload = dechunk(&payload);
    }
    (status, hdrs, payload)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let end = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&b[..end]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[end + 2..end + 2 + n]);
        b = &b[end + 4 + n..];
    }
}

/// A gRPC channel to the server's gRPC port.
pub async fn grpc_channel(s: &Server) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://{}", s.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Polls until `f` holds or the time runs out.
pub fn wait_for(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(secs) {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// The SciFact folder (`ASIDE_SCIFACT`, or the shared copy beside the project);
/// `None` with a SKIPPED line when absent, a panic under `ASIDE_REQUIRE_MODEL=1`.
pub fn scifact() -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("ASIDE_SCIFACT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/scifact").into()
        });
    if dir.join("corpus.jsonl").is_file() {
        return Some(dir);
    }
    let msg = format!("SciFact not found at {} (set ASIDE_SCIFACT)", dir.display());
    if std::env::var("ASIDE_REQUIRE_MODEL").as_deref() == Ok("1") {
        panic!("{msg}");
    }
    eprintln!("SKIPPED: {msg}");
    None
}

/// The test virtualenv's Python (`ASIDE_PYTHON`, or `.venv/` made by
/// `scripts/pyenv.sh`); `None` with a SKIPPED line when absent, a panic under
/// `ASIDE_REQUIRE_MODEL=1` (as `scripts/test.sh` runs the suite).
pub fn python() -> Option<std::path::PathBuf> {
    let p = std::env::var_os("ASIDE_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/python").into());
    if p.is_file() {
        return Some(p);
    }
    let msg = format!(
        "the test Python is not at {} (run scripts/pyenv.sh or set ASIDE_PYTHON)",
        p.display()
    );
    if std::env::var("ASIDE_REQUIRE_MODEL").as_deref() == Ok("1") {
        panic!("{msg}");
    }
    eprintln!("SKIPPED: {msg}");
    None
}

/// Runs one of `tests/py/*.py` with the test Python; its stdout, or a panic with
/// its stderr.
pub fn run_python(python: &Path, script: &str, args: &[&str]) -> String {
    let out = Command::new(python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/").to_owned() + script)
        .args(args)
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

// ---------------------------------------------------------------- SciFact helpers

/// The first `n` SciFact documents (title + text), with metadata `part` (i % 5),
/// `even` and `title`.
pub fn corpus(data: &Path, n: usize) -> Vec<Value> {
    std::fs::read_to_string(data.join("corpus.jsonl"))
        .unwrap()
        .lines()
        .take(n)
        .enumerate()
        .map(|(i, l)| {
            let d: Value = serde_json::from_str(l).unwrap();
            json!({"id": d["_id"],
                   "text": format!("{} {}", d["title"].as_str().unwrap(), d["text"].as_str().unwrap()),
                   "metadata": {"part": i % 5, "even": i % 2 == 0, "title": d["title"]}})
        })
        .collect()
}

/// The first `n` SciFact queries.
pub fn queries(data: &Path, n: usize) -> Vec<String> {
    std::fs::read_to_string(data.join("queries.jsonl"))
        .unwrap()
        .lines()
        .take(n)
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// Upserts documents 100 a request.
pub fn put_docs(s: &Server, coll: &str, docs: &[Value]) {
    for chunk in docs.chunks(100) {
        let (st, r) = s.call(
            "POST",
            &format!("/v1/collections/{coll}/documents"),
            Some(&json!({"documents": chunk})),
        );
        assert_eq!(st, 200, "{r}");
    }
}

/// The hit ids of a search answer.
pub fn ids(r: &Value) -> Vec<String> {
    r["hits"]
        .as_array()
        .unwrap_or_else(|| panic!("no hits in {r}"))
        .iter()
        .map(|h| h["id"].as_str().unwrap().to_owned())
        .collect()
}

/// A search over HTTP that must answer 200.
pub fn search(s: &Server, coll: &str, body: Value) -> Value {
    let (st, r) = s.call(
        "POST",
        &format!("/v1/collections/{coll}/search"),
        Some(&body),
    );
    assert_eq!(st, 200, "{r}");
    r
}
