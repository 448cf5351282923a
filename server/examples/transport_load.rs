//! A closed-loop load generator for one running server, the same client machinery
//! for both transports: `CONC` clients each send their next request as soon as the
//! last is answered, for `SECS` seconds, over HTTP/1.1 keep-alive or gRPC (tonic).
//!
//!   cargo run --release -p aside-server --example transport_load -- \
//!       HTTP_ADDR GRPC_ADDR QUERIES.txt COLLECTION ADAPTER CONC SECS
//!
//! QUERIES.txt holds one query per line. Prints one JSON line per (transport,
//! operation): requests/s, p50 and p99 in ms, errors. Operations: `search` (k 10 in
//! COLLECTION) and `embed` (one query with ADAPTER).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aside_server::grpc::pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Clone, Copy, Debug)]
enum Op {
    Search,
    Embed,
}

/// One HTTP/1.1 request on a kept-alive connection; the status.
async fn http_call(
    conn: &mut BufReader<TcpStream>,
    host: &str,
    path: &str,
    body: &[u8],
) -> std::io::Result<u16> {
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let s = conn.get_mut();
    s.write_all(head.as_bytes()).await?;
    s.write_all(body).await?;
    let mut buf = Vec::new();
    loop {
        let b = conn.read_u8().await?;
        buf.push(b);
        if buf.ends_with(b"\r\n\r\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&buf);
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let len: usize = text
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body).await?;
    Ok(status)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

#[allow(clippy::too_many_arguments)]
async fn run(
    grpc: bool,
    op: Op,
    http_addr: String,
    grpc_addr: String,
    queries: Arc<Vec<String>>,
    collection: String,
    adapter: String,
    conc: usize,
    secs: u64,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let channel = tonic::transport::Channel::from_shared(format!("http://{grpc_addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut tasks = Vec::new();
    let t0 = Instant::now();
    for c in 0..conc {
        let (stop, queries, http_addr) = (stop.clone(), queries.clone(), http_addr.clone());
        let (collection, adapter, channel) = (collection.clone(), adapter.clone(), channel.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0usize;
            let mut i = c * 7919;
            let mut conn = BufReader::new(TcpStream::connect(&http_addr).await.unwrap());
            let mut search = pb::collections_client::CollectionsClient::new(channel.clone());
            let mut inference = pb::inference_client::InferenceClient::new(channel);
            while !stop.load(Ordering::Relaxed) {
                let q = &queries[i % queries.len()];
                i += 1;
                let t = Instant::now();
                let ok = match (grpc, op) {
                    (false, Op::Search) => {
                        let body = serde_json::json!({"query": q, "k": 10}).to_string();
                        let path = format!("/v1/collections/{collection}/search");
                        http_call(&mut conn, &http_addr, &path, body.as_bytes())
                            .await
                            .ok()
                            == Some(200)
                    }
                    (false, Op::Embed) => {
                        let body =
                            serde_json::json!({"inputs": [q], "adapter": adapter}).to_string();
                        http_call(&mut conn, &http_addr, "/v1/embed", body.as_bytes())
                            .await
                            .ok()
                            == Some(200)
                    }
                    (true, Op::Search) => search
                        .search(pb::SearchRequest {
                            collection: collection.clone(),
                            query: q.clone(),
                            k: Some(10),
                            ..Default::default()
                        })
                        .await
                        .is_ok(),
                    (true, Op::Embed) => inference
                        .embed(pb::EmbedRequest {
                            inputs: vec![q.clone()],
                            adapter: adapter.clone(),
                        })
                        .await
                        .is_ok(),
                };
                if ok {
                    lat.push(t.elapsed().as_secs_f64() * 1e3);
                } else {
                    errors += 1;
                }
            }
            (lat, errors)
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.unwrap();
        lat.extend(l);
        errors += e;
    }
    let wall = t0.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "transport": if grpc { "grpc" } else { "http" },
            "op": format!("{op:?}").to_lowercase(),
            "concurrency": conc,
            "requests": lat.len(),
            "rps": (lat.len() as f64 / wall * 10.0).round() / 10.0,
            "p50_ms": (pct(&mut lat, 0.5) * 10.0).round() / 10.0,
            "p99_ms": (pct(&mut lat, 0.99) * 10.0).round() / 10.0,
            "errors": errors,
        })
    );
}

#[tokio::main]
async fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let [http_addr, grpc_addr, queries, collection, adapter, conc, secs] = a.as_slice() else {
        eprintln!(
            "usage: transport_load HTTP_ADDR GRPC_ADDR QUERIES.txt COLLECTION ADAPTER CONC SECS"
        );
        std::process::exit(2);
    };
    let queries: Arc<Vec<String>> = Arc::new(
        std::fs::read_to_string(queries)
            .unwrap()
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
    );
    let (conc, secs): (usize, u64) = (conc.parse().unwrap(), secs.parse().unwrap());
    for op in [Op::Search, Op::Embed] {
        for grpc in [false, true] {
            run(
                grpc,
                op,
                http_addr.clone(),
                grpc_addr.clone(),
                queries.clone(),
                collection.clone(),
                adapter.clone(),
                conc,
                secs,
            )
            .await;
        }
    }
}
