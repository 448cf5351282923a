//! The tower layer both transports run every request through: API keys, the
//! in-flight limit (shared by HTTP and gRPC), the request timeout, and the
//! request metrics. A transport says only how it names a request's route, which
//! key the route needs, and how it answers a refusal; the rules are here once.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Extensions, HeaderMap, Method, Request, Response, Uri};
use tower::{Layer, Service};

use crate::core::{Error, Shared};

/// Which key a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Health, readiness, metrics, reflection: no key, no limit.
    Open,
    /// Embedding, search, reads: the read key (or the admin key).
    Read,
    /// Writes to adapters, collections and documents: the admin key.
    Admin,
}

/// A request's route as the metrics name it, and the key it needs.
#[derive(Debug, Clone)]
pub struct Route {
    /// A route template (`/v1/adapters/{name}`) or an RPC path, never raw input.
    pub label: String,
    pub access: Access,
}

/// What differs between HTTP and gRPC.
pub trait Transport: Clone + Send + Sync + 'static {
    type ReqBody: http_body::Body<Data = bytes::Bytes> + Send + 'static;
    type Body: Send + 'static;
    fn route(&self, method: &Method, uri: &Uri, ext: &Extensions) -> Route;
    /// The most bytes a request's body may have if the guard reads it whole before
    /// the request takes an in-flight slot (HTTP: a client that never finishes its
    /// body holds no slot); `None`: the body streams to the handler (gRPC).
    fn read_body_first(&self, route: &Route, core: &Shared) -> Option<usize>;
    /// A body of bytes already read.
    fn body_of(&self, bytes: bytes::Bytes) -> Self::ReqBody;
    /// The answer to a request refused before it ran.
    fn reject(&self, e: Error) -> Response<Self::Body>;
    /// The outcome label of a response (an HTTP status, a gRPC code).
    fn outcome(&self, resp: &Response<Self::Body>) -> String;
}

#[derive(Clone)]
pub struct GuardLayer<T> {
    core: Shared,
    transport: T,
}

impl<T> GuardLayer<T> {
    pub fn new(core: Shared, transport: T) -> Self {
        GuardLayer { core, transport }
    }
}

impl<S, T: Clone> Layer<S> for GuardLayer<T> {
    type Service = Guard<S, T>;
    fn layer(&self, inner: S) -> Self::Service {
        Guard {
            inner,
            core: self.core.clone(),
            transport: self.transport.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Guard<S, T> {
    inner: S,
    core: Shared,
    transport: T,
}

type BoxFuture<O> = Pin<Box<dyn Future<Output = O> + Send>>;

impl<S, T> Service<Request<T::ReqBody>> for Guard<S, T>
where
    S: Service<Request<T::ReqBody>, Response = Response<T::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    T: Transport,
    <T::ReqBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<T::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<T::ReqBody>) -> Self::Future {
        // The clone that was polled ready serves this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (core, transport) = (self.core.clone(), self.transport.clone());
        Box::pin(async move {
            let t0 = Instant::now();
            let route = transport.route(req.method(), req.uri(), req.extensions());
            let resp = if route.access == Access::Open {
                inner.call(req).await?
            } else if let Err(e) = authorize(&core, route.access, req.headers()) {
                transport.reject(e)
            } else {
                let req = match transport.read_body_first(&route, &core) {
                    None => Ok(req),
                    Some(limit) => read_body(&core, &transport, req, limit).await,
                };
                match req {
                    Err(e) => transport.reject(e),
                    Ok(req) => match core.in_flight.clone().try_acquire_owned() {
                        Err(_) => transport.reject(Error::Overloaded { retry_after: 1 }),
                        Ok(_permit) => {
                            match tokio::time::timeout(core.limits.request_timeout, inner.call(req))
                                .await
                            {
                                Ok(r) => r?,
                                Err(_) => transport.reject(Error::Timeout),
                            }
                        }
                    },
                }
            };
            let adapter = resp
                .headers()
                .get("x-aside-adapter")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            core.metrics.request(
                &route.label,
                &adapter,
                &transport.outcome(&resp),
                t0.elapsed().as_secs_f64(),
            );
            Ok(resp)
        })
    }
}

/// Reads a request's body whole (at most `limit` bytes, within the body timeout)
/// and hands the request on with the bytes read.
async fn read_body<T: Transport>(
    core: &Shared,
    transport: &T,
    req: Request<T::ReqBody>,
    limit: usize,
) -> Result<Request<T::ReqBody>, Error>
where
    <T::ReqBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use http_body_util::BodyExt;
    let (parts, body) = req.into_parts();
    let secs = core.limits.body_timeout.as_secs();
    let collected = tokio::time::timeout(
        core.limits.body_timeout,
        http_body_util::Limited::new(body, limit).collect(),
    )
    .await
    .map_err(|_| Error::BodyTimeout { secs })?;
    let bytes = match collected {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(Error::too_large(format!(
                "the request body is over the limit of {limit} bytes"
            )))
        }
        Err(e) => return Err(Error::invalid("", format!("reading the request body: {e}"))),
    };
    Ok(Request::from_parts(parts, transport.body_of(bytes)))
}

/// The key a request presents: `x-api-key`, or `authorization: Bearer KEY` (HTTP
/// headers and gRPC metadata alike).
fn presented_key(h: &HeaderMap) -> Option<&str> {
    if let Some(v) = h.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(v);
    }
    h.get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

fn authorize(core: &Shared, access: Access, h: &HeaderMap) -> Result<(), Error> {
    let (admin, read) = (
        core.limits.admin_key.as_deref(),
        core.limits.read_key.as_deref(),
    );
    let key = presented_key(h);
    let is_admin = |k: &str| admin.is_some_and(|a| same_key(a, k));
    let is_read = |k: &str| read.is_some_and(|r| same_key(r, k));
    if access == Access::Admin {
        if admin.is_none() {
            return Ok(());
        }
        return match key {
            None => Err(Error::Unauthorized),
            Some(k) if is_admin(k) => Ok(()),
            Some(k) if is_read(k) => Err(Error::Forbidden),
            Some(_) => Err(Error::Unauthorized),
        };
    }
    if read.is_none() && admin.is_none() {
        return Ok(());
    }
    match key {
        Some(k) if is_admin(k) || is_read(k) => Ok(()),
        None if read.is_none() => Ok(()),
        _ => Err(Error::Unauthorized),
    }
}

/// Compares a configured key with a presented one in time that depends on neither
/// key's content (only on the presented key's length).
fn same_key(configured: &str, presented: &str) -> bool {
    let (a, b) = (configured.as_bytes(), presented.as_bytes());
    let mut diff = (a.len() != b.len()) as u8;
    for (i, &x) in b.iter().enumerate() {
        diff |= x ^ a.get(i % a.len().max(1)).copied().unwrap_or(0);
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::same_key;

    #[test]
    fn keys_compare_exactly() {
        assert!(same_key("secret", "secret"));
        for other in ["", "secre", "secret!", "Secret", "s", "secreu"] {
            assert!(!same_key("secret", other), "{other}");
        }
    }
}
