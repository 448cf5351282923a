//! The batching queue: inference worker threads own the backbone's time. Requests
//! for any mix of adapters are gathered into a batch bounded by item count, a token
//! budget and a short wait, run as one forward (shared matmuls once, each adapter on
//! its own rows), and answered over oneshot channels. A request whose client went
//! away is dropped before it costs anything.
//!
//! One worker gathers at a time, the others run forwards meanwhile. A small batch
//! (a few queries) runs on its worker's own single-thread pool, so the workers'
//! forwards go side by side, one per core: a short forward split across cores spends
//! much of its time waiting at its many joins, and on a shared host every pause of
//! either core stalls both. A large batch (documents) splits each matmul across the
//! whole pool.
//!
//! On GPUs (`--device cuda:0,cuda:1`) each device has its own backbone and its own
//! worker(s), all gathering from the one queue. An adapter reaches a device once: the
//! worker keeps device copies ([`Placed`]) under their own byte budget, apart from
//! the registry's CPU budget, and drops the least recently used beyond it (or when
//! the registry replaced the adapter).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use aside_adapters::Adapter;
use aside_backbone::{Backbone, Encoded, Hooks, Input, Item, PoolingConfig};
use tokio::sync::oneshot;

/// One input of a job.
#[derive(Debug, Clone)]
pub enum Text {
    Single(String),
    Pair(String, String),
    /// Token ids of the model's vocabulary, without special tokens.
    Ids(Vec<u32>),
}

/// A unit of work: inputs sharing one adapter (pinned) and output shape.
pub struct Job {
    pub texts: Vec<Text>,
    pub adapter: Option<Arc<Adapter>>,
    pub pooling: PoolingConfig,
    /// Per-job max length (tokens, special tokens included).
    pub max_length: usize,
    /// Truncate long inputs from their start instead of their end.
    pub truncate_left: bool,
    pub reply: oneshot::Sender<Result<Vec<Vec<f32>>, String>>,
}

#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    pub max_items: usize,
    pub max_tokens: usize,
    /// The longest a batch waits for more requests after its first arrived.
    pub max_wait: Duration,
    /// The batch closes early once no request has arrived for this long (zero: it
    /// takes what is queued and runs): a burst is gathered whole, up to `max_wait`.
    pub max_gap: Duration,
    pub forward_batch: usize,
    /// Threads that gather and run batches.
    pub workers: usize,
    /// Batches of more tokens than this split each forward across the whole rayon
    /// pool; smaller ones run on their worker's thread alone.
    pub parallel_tokens: usize,
    /// Bytes of adapter copies each device keeps (GPU memory; on the CPU in f16 or
    /// bf16, the converted copies).
    pub device_adapter_bytes: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_items: 64,
            max_tokens: 16_384,
            max_wait: Duration::from_millis(8),
            max_gap: Duration::ZERO,
            forward_batch: 32,
            workers: rayon::current_num_threads().max(1),
            parallel_tokens: 2048,
            device_adapter_bytes: 1 << 30,
        }
    }
}

/// Observations the metrics endpoint reports.
pub trait BatchObserver: Send + Sync {
    fn batch(&self, items: usize, tokens: usize, seconds: f64);
}

/// The clonable handle; the workers own the queue.
#[derive(Clone)]
pub struct Batcher {
    tx: std::sync::mpsc::Sender<Job>,
    depth: Arc<AtomicUsize>,
}

impl Batcher {
    pub fn start(backbone: Arc<Backbone>, cfg: BatchConfig, obs: Arc<dyn BatchObserver>) -> Self {
        Self::start_on(vec![backbone], cfg, obs)
    }

    /// [`Batcher::start`] over one backbone per device: `cfg.workers` workers for each,
    /// all taking batches from the one queue.
    pub fn start_on(
        backbones: Vec<Arc<Backbone>>,
        cfg: BatchConfig,
        obs: Arc<dyn BatchObserver>,
    ) -> Self {
        assert!(!backbones.is_empty(), "a batcher needs a backbone");
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let depth = Arc::new(AtomicUsize::new(0));
        let queue = Arc::new(Mutex::new(Queue { rx, carry: None }));
        let per_device = cfg.workers.max(1);
        // Every worker counts in the even split of the queue.
        let cfg = BatchConfig {
            workers: per_device * backbones.len(),
            ..cfg
        };
        for (dev, backbone) in backbones.iter().enumerate() {
            for i in 0..per_device {
                let w = dev * per_device + i;
                let (b, queue, d, obs) =
                    (backbone.clone(), queue.clone(), depth.clone(), obs.clone());
                let own = rayon::ThreadPoolBuilder::new()
                    .num_threads(1)
                    .thread_name(move |_| format!("aside-forward-{w}"))
                    .build()
                    .expect("build a worker's thread pool");
                let placed = Placed::new(&b, cfg.device_adapter_bytes);
                std::thread::Builder::new()
                    .name(format!("aside-inference-{w}"))
                    .spawn(move || run(b, cfg, queue, d, obs, own, placed))
                    .expect("spawn inference thread");
            }
        }
        Batcher { tx, depth }
    }

    /// Inputs waiting or running.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    /// Queues a job and awaits its vectors.
    pub async fn submit(
        &self,
        texts: Vec<Text>,
        adapter: Option<Arc<Adapter>>,
        pooling: PoolingConfig,
        max_length: usize,
    ) -> Result<Vec<Vec<f32>>, String> {
        self.submit_from(texts, adapter, pooling, max_length, false)
            .await
    }

    /// [`Batcher::submit`], truncating long inputs from their start when
    /// `truncate_left`.
    pub async fn submit_from(
        &self,
        texts: Vec<Text>,
        adapter: Option<Arc<Adapter>>,
        pooling: PoolingConfig,
        max_length: usize,
        truncate_left: bool,
    ) -> Result<Vec<Vec<f32>>, String> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, rx) = oneshot::channel();
        self.depth.fetch_add(texts.len(), Ordering::Relaxed);
        let n = texts.len();
        let job = Job {
            texts,
            adapter,
            pooling,
            max_length,
            truncate_left,
            reply,
        };
        if self.tx.send(job).is_err() {
            self.depth.fetch_sub(n, Ordering::Relaxed);
            return Err("the inference threads have stopped".into());
        }
        rx.await
            .map_err(|_| "the inference worker dropped the request".to_string())?
    }
}

/// The queue's receiving end and a job taken from it (already tokenised) that did
/// not fit the last batch (it opens the next): held by the gathering worker.
struct Queue {
    rx: std::sync::mpsc::Receiver<Job>,
    carry: Option<Pending>,
}

struct Pending {
    job: Job,
    encoded: Vec<Encoded>,
}

fn tokenize(b: &Backbone, job: &Job) -> Result<Vec<Encoded>, String> {
    let inputs: Vec<Input<'_>> = job
        .texts
        .iter()
        .filter_map(|t| match t {
            Text::Single(a) => Some(Input::Single(a)),
            Text::Pair(a, c) => Some(Input::Pair(a, c)),
            Text::Ids(_) => None,
        })
        .collect();
    let mut texts = b
        .tokens()
        .encode_from(&inputs, job.max_length, job.truncate_left)
        .map_err(|e| e.to_string())?
        .into_iter();
    job.texts
        .iter()
        .map(|t| match t {
            Text::Ids(ids) => b
                .tokens()
                .wrap_ids(ids, job.max_length, job.truncate_left)
                .map_err(|e| e.to_string()),
            _ => Ok(texts.next().expect("one encoding per text")),
        })
        .collect()
}

fn run(
    b: Arc<Backbone>,
    cfg: BatchConfig,
    queue: Arc<Mutex<Queue>>,
    depth: Arc<AtomicUsize>,
    obs: Arc<dyn BatchObserver>,
    own: rayon::ThreadPool,
    mut placed: Placed,
) {
    loop {
        let Some((batch, items, tokens)) = gather(&b, &cfg, &queue, &depth) else {
            return;
        };
        if batch.is_empty() {
            continue;
        }
        let t0 = Instant::now();
        let adapters = batch
            .iter()
            .map(|p| placed.get(p.job.adapter.as_ref()))
            .collect::<Result<Vec<_>, String>>();
        let result = adapters.and_then(|adapters| {
            if tokens > cfg.parallel_tokens || !b.bert().device().is_cpu() {
                encode(&b, &batch, &adapters, cfg.forward_batch)
            } else {
                own.install(|| encode(&b, &batch, &adapters, cfg.forward_batch))
            }
        });
        obs.batch(items, tokens, t0.elapsed().as_secs_f64());
        depth.fetch_sub(items, Ordering::Relaxed);
        match result {
            Ok(mut vecs) => {
                for p in batch {
                    let rest = vecs.split_off(p.encoded.len());
                    let mine = std::mem::replace(&mut vecs, rest);
                    let _ = p.job.reply.send(Ok(mine));
                }
            }
            Err(e) => {
                for p in batch {
                    let _ = p.job.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// The most inputs one batch takes: `max_items`, and no more than an even split of
/// everything waiting or running between the workers, so that one worker does not
/// take the whole queue while another finds it empty (the latency of the requests in
/// the big batch would be twice everyone else's).
fn share(cfg: &BatchConfig, depth: &AtomicUsize) -> usize {
    let even = depth.load(Ordering::Relaxed).div_ceil(cfg.workers.max(1));
    cfg.max_items.min(even).max(1)
}

/// A job ready to join a batch: tokenised, its client still waiting. A job whose
/// client left is dropped, one whose text cannot be tokenised is answered with the
/// error; both leave the queue's depth.
fn admit(b: &Backbone, job: Job, depth: &AtomicUsize) -> Option<Pending> {
    if job.reply.is_closed() {
        depth.fetch_sub(job.texts.len(), Ordering::Relaxed);
        return None;
    }
    match tokenize(b, &job) {
        Ok(encoded) => Some(Pending { job, encoded }),
        Err(e) => {
            depth.fetch_sub(job.texts.len(), Ordering::Relaxed);
            let _ = job.reply.send(Err(e));
            None
        }
    }
}

/// Gathers one batch, holding the queue meanwhile: `(batch, items, tokens)`, or
/// None once every sender is gone.
fn gather(
    b: &Backbone,
    cfg: &BatchConfig,
    queue: &Mutex<Queue>,
    depth: &AtomicUsize,
) -> Option<(Vec<Pending>, usize, usize)> {
    // A worker that panicked while gathering left the queue as it was: go on with it.
    let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
    let mut next = match q.carry.take() {
        // Carried over already tokenised; its client may have left since.
        Some(p) if p.job.reply.is_closed() => {
            depth.fetch_sub(p.job.texts.len(), Ordering::Relaxed);
            None
        }
        Some(p) => Some(p),
        None => admit(b, q.rx.recv().ok()?, depth),
    };
    let deadline = Instant::now() + cfg.max_wait;
    let mut last_arrival = Instant::now();
    let mut batch: Vec<Pending> = Vec::new();
    let (mut items, mut tokens) = (0usize, 0usize);
    loop {
        if let Some(p) = next.take() {
            let t: usize = p.encoded.iter().map(|e| e.ids.len()).sum();
            let n = p.encoded.len();
            if !batch.is_empty() && (items + n > share(cfg, depth) || tokens + t > cfg.max_tokens) {
                q.carry = Some(p);
                break;
            }
            items += n;
            tokens += t;
            batch.push(p);
        }
        if items >= share(cfg, depth) || tokens >= cfg.max_tokens {
            break;
        }
        let now = Instant::now();
        let until = deadline.min(last_arrival + cfg.max_gap);
        let job = if now >= until {
            q.rx.try_recv().ok()
        } else {
            q.rx.recv_timeout(until - now).ok()
        };
        let Some(job) = job else {
            break;
        };
        last_arrival = Instant::now();
        next = admit(b, job, depth);
    }
    Some((batch, items, tokens))
}

/// Adapters placed for one worker's backbone: the registry's own where the backbone
/// computes in f32 on the CPU, else copies on its device in its type, made on first
/// use and kept within a byte budget (least recently used dropped beyond it).
pub struct Placed {
    /// None: the registry's adapters serve as they are.
    target: Option<(
        aside_backbone::candle_core::Device,
        aside_backbone::candle_core::DType,
        aside_adapters::Dims,
    )>,
    budget: usize,
    clock: u64,
    /// By the registry adapter's address: (that adapter, its copy, bytes, last use).
    copies: HashMap<usize, (Weak<Adapter>, Arc<Adapter>, usize, u64)>,
}

impl Placed {
    pub fn new(b: &Backbone, budget: usize) -> Self {
        let bert = b.bert();
        let target = (!bert.cpu_f32()).then(|| {
            (
                bert.device().clone(),
                bert.dtype(),
                aside_adapters::Dims::of(b),
            )
        });
        Placed {
            target,
            budget,
            clock: 0,
            copies: HashMap::new(),
        }
    }

    /// Bytes of copies held.
    pub fn bytes(&self) -> usize {
        self.copies.values().map(|c| c.2).sum()
    }

    /// Copies held.
    pub fn len(&self) -> usize {
        self.copies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.copies.is_empty()
    }

    /// The adapter to run on this worker's backbone.
    pub fn get(&mut self, a: Option<&Arc<Adapter>>) -> Result<Option<Arc<Adapter>>, String> {
        let (Some(a), Some((device, dtype, dims))) = (a, &self.target) else {
            return Ok(a.cloned());
        };
        self.clock += 1;
        let key = Arc::as_ptr(a) as usize;
        if let Some((orig, copy, _, used)) = self.copies.get_mut(&key) {
            if orig.upgrade().is_some_and(|o| Arc::ptr_eq(&o, a)) {
                *used = self.clock;
                return Ok(Some(copy.clone()));
            }
        }
        // Copies of adapters the registry has let go of (replaced, deleted, evicted).
        self.copies.retain(|_, (orig, ..)| orig.strong_count() > 0);
        let copy = Arc::new(
            a.to_device(device, *dtype, dims)
                .map_err(|e| format!("moving the adapter to the device: {e}"))?,
        );
        let size = copy.size_bytes();
        self.copies
            .insert(key, (Arc::downgrade(a), copy.clone(), size, self.clock));
        let mut bytes = self.bytes();
        while bytes > self.budget && self.copies.len() > 1 {
            let Some(oldest) = self
                .copies
                .iter()
                .filter(|(k, _)| **k != key)
                .min_by_key(|(_, c)| c.3)
                .map(|(k, _)| *k)
            else {
                break;
            };
            if let Some(c) = self.copies.remove(&oldest) {
                bytes -= c.2;
            }
        }
        Ok(Some(copy))
    }
}

fn encode(
    b: &Backbone,
    batch: &[Pending],
    adapters: &[Option<Arc<Adapter>>],
    forward_batch: usize,
) -> Result<Vec<Vec<f32>>, String> {
    let mut items = Vec::new();
    let mut encoded = Vec::new();
    for (p, a) in batch.iter().zip(adapters) {
        let hooks = a.as_deref().map(|a| a as &dyn Hooks);
        for (t, e) in p.job.texts.iter().zip(&p.encoded) {
            items.push(Item {
                input: match t {
                    Text::Single(a) => Input::Single(a),
                    Text::Pair(a, c) => Input::Pair(a, c),
                    // Tokenised already: the forward reads `encoded` alone.
                    Text::Ids(_) => Input::Single(""),
                },
                hooks,
                pooling: p.job.pooling.pooling,
                normalize: p.job.pooling.normalize,
            });
            encoded.push(e.clone());
        }
    }
    b.encode_tokens(&items, &encoded, forward_batch)
        .map_err(|e| e.to_string())
}
