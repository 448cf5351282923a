//! `aside healthcheck`: exits 0 when the server answers `GET /health` with 200, for
//! container HEALTHCHECKs (the runtime image has no curl).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;

#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    #[arg(long, env = "ASIDE_HEALTHCHECK_HOST", default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, env = "ASIDE_PORT", default_value_t = 8080)]
    pub port: u16,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 5)]
    pub timeout: u64,
}

pub fn run(a: HealthcheckArgs) -> anyhow::Result<()> {
    let t = Duration::from_secs(a.timeout.max(1));
    let addr = (a.host.as_str(), a.port)
        .to_socket_addrs()
        .with_context(|| format!("resolving {}:{}", a.host, a.port))?
        .next()
        .context("no address")?;
    let mut s =
        TcpStream::connect_timeout(&addr, t).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(t))?;
    s.set_write_timeout(Some(t))?;
    write!(
        s,
        "GET /health HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        a.host
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let head = String::from_utf8_lossy(&buf);
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        bail!(
            "GET /health answered {}",
            head.lines().next().unwrap_or("nothing")
        );
    }
    println!("ok");
    Ok(())
}
