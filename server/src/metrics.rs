//! Prometheus metrics, rendered by hand: request counts and latency histograms by
//! route and adapter, queue depth, batch sizes, adapter cache counters.

use std::collections::BTreeMap;
use std::fmt::Write;

use parking_lot::Mutex;

const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];
const SIZE_BUCKETS: [f64; 8] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

#[derive(Default, Clone)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, bounds: &[f64], v: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; bounds.len()];
        }
        for (c, b) in self.counts.iter_mut().zip(bounds) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str, bounds: &[f64]) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (c, b) in self.counts.iter().zip(bounds) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {c}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

#[derive(Default)]
struct Inner {
    requests: BTreeMap<(String, String, String), u64>,
    latency: BTreeMap<(String, String), Histogram>,
    batch_items: Histogram,
    batch_tokens: u64,
    batch_seconds: Histogram,
}

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    pub fn request(&self, route: &str, adapter: &str, status: &str, seconds: f64) {
        let mut m = self.inner.lock();
        *m.requests
            .entry((route.to_owned(), adapter.to_owned(), status.to_owned()))
            .or_default() += 1;
        m.latency
            .entry((route.to_owned(), adapter.to_owned()))
            .or_default()
            .observe(&BUCKETS, seconds);
    }

    pub fn render(&self, queue_depth: usize, cache: &aside_adapters::RegistryStats) -> String {
        let m = self.inner.lock();
        let mut out = String::new();
        out.push_str("# TYPE aside_requests_total counter\n");
        for ((route, adapter, status), n) in &m.requests {
            let _ = writeln!(
                out,
                "aside_requests_total{{route=\"{route}\",adapter=\"{adapter}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str("# TYPE aside_request_duration_seconds histogram\n");
        for ((route, adapter), h) in &m.latency {
            h.render(
                &mut out,
                "aside_request_duration_seconds",
                &format!("route=\"{route}\",adapter=\"{adapter}\""),
                &BUCKETS,
            );
        }
        out.push_str("# TYPE aside_queue_depth gauge\n");
        let _ = writeln!(out, "aside_queue_depth {queue_depth}");
        out.push_str("# TYPE aside_batch_size histogram\n");
        m.batch_items
            .render(&mut out, "aside_batch_size", "", &SIZE_BUCKETS);
        out.push_str("# TYPE aside_batch_seconds histogram\n");
        m.batch_seconds
            .render(&mut out, "aside_batch_seconds", "", &BUCKETS);
        out.push_str("# TYPE aside_batch_tokens_total counter\n");
        let _ = writeln!(out, "aside_batch_tokens_total {}", m.batch_tokens);
        for (name, v) in [
            ("aside_adapter_cache_hits_total", cache.hits),
            ("aside_adapter_cache_misses_total", cache.misses),
            ("aside_adapter_loads_total", cache.loads),
            ("aside_adapter_evictions_total", cache.evictions),
        ] {
            let _ = writeln!(out, "# TYPE {name} counter\n{name} {v}");
        }
        let _ = writeln!(
            out,
            "# TYPE aside_adapters_resident gauge\naside_adapters_resident {}",
            cache.resident
        );
        out
    }
}

impl crate::core::batcher::BatchObserver for Metrics {
    fn batch(&self, items: usize, tokens: usize, seconds: f64) {
        let mut m = self.inner.lock();
        m.batch_items.observe(&SIZE_BUCKETS, items as f64);
        m.batch_seconds.observe(&BUCKETS, seconds);
        m.batch_tokens += tokens as u64;
    }
}
