//! The batching queue on the real model: jobs for two adapters and the bare backbone,
//! sent at once, are gathered into shared batches (none bigger than an even share
//! per worker) and each is answered with the vector it gets alone.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aside_adapters::testing::{random_adapter, test_metas};
use aside_adapters::{Adapter, Dims};
use aside_backbone::pooling::cosine;
use aside_backbone::{Backbone, EncodeOptions, Hooks, Input, Item, LoadOptions};
use aside_server::core::batcher::{BatchConfig, BatchObserver, Batcher, Text};

struct Sizes(Mutex<Vec<usize>>);

impl BatchObserver for Sizes {
    fn batch(&self, items: usize, _tokens: usize, _seconds: f64) {
        self.0.lock().unwrap().push(items);
    }
}

#[test]
fn concurrent_jobs_share_batches_and_get_their_own_vectors() {
    let Some(dir) = aside_backbone::testing::real_model(env!("CARGO_MANIFEST_DIR")) else {
        return;
    };
    let b = Arc::new(Backbone::load(&dir, &LoadOptions::default()).unwrap());
    let dims = Dims::of(&b);
    let meta = test_metas(b.sha256())
        .into_iter()
        .find(|(name, _)| *name == "iaa-l")
        .unwrap()
        .1;
    let adapters: Vec<Option<Arc<Adapter>>> = vec![
        None,
        Some(Arc::new(random_adapter(&meta, &dims, b.bert(), 1))),
        Some(Arc::new(random_adapter(&meta, &dims, b.bert(), 2))),
    ];
    let sizes = Arc::new(Sizes(Mutex::new(Vec::new())));
    let batcher = Batcher::start(
        b.clone(),
        BatchConfig {
            workers: 2,
            max_gap: Duration::ZERO,
            ..BatchConfig::default()
        },
        sizes.clone(),
    );
    let jobs = 48;
    let text = |i: usize| {
        format!(
            "claim {i}: {} protein binding alters the rate of cell division",
            "slightly ".repeat(i % 7)
        )
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let got: Vec<Vec<f32>> = rt.block_on(async {
        let handles: Vec<_> = (0..jobs)
            .map(|i| {
                let (batcher, adapter) = (batcher.clone(), adapters[i % 3].clone());
                let pooling = b.pooling();
                let t = text(i);
                tokio::spawn(async move {
                    batcher
                        .submit(vec![Text::Single(t)], adapter, pooling, 256)
                        .await
                        .unwrap()
                        .remove(0)
                })
            })
            .collect();
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.unwrap());
        }
        out
    });

    let alone = |i: usize, hooks: Option<&dyn Hooks>| {
        let t = text(i);
        let item = Item {
            input: Input::Single(&t),
            hooks,
            pooling: b.pooling().pooling,
            normalize: b.pooling().normalize,
        };
        let opts = EncodeOptions {
            max_length: 256,
            batch_size: 1,
        };
        b.encode(&[item], &opts).unwrap().remove(0)
    };
    let hooks = |i: usize| adapters[i % 3].as_deref().map(|a| a as &dyn Hooks);
    for (i, v) in got.iter().enumerate() {
        let cos = cosine(v, &alone(i, hooks(i)));
        assert!(
            cos > 0.99999,
            "job {i} (adapter {}) differs from its own forward: cosine {cos}",
            i % 3
        );
    }
    // The adapters change the vectors: the jobs really ran with their own weights.
    for i in [1, 2] {
        let cos = cosine(&got[i], &alone(i, None));
        assert!(
            cos < 0.999,
            "job {i}'s adapter left it as the bare backbone's"
        );
    }

    let sizes = sizes.0.lock().unwrap().clone();
    assert_eq!(sizes.iter().sum::<usize>(), jobs, "batches: {sizes:?}");
    let largest = *sizes.iter().max().unwrap();
    assert!(largest >= 2, "no two jobs shared a batch: {sizes:?}");
    assert!(
        largest <= jobs.div_ceil(2),
        "one worker took more than its share of the queue: {sizes:?}"
    );
}
