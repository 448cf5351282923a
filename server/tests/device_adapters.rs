//! Adapters on a backbone that does not compute in f32 on the CPU — a GPU, or here
//! the same code path in bf16 on the CPU: each worker moves an adapter to its
//! backbone once, keeps the copies within their own byte budget (least recently
//! used dropped, copies of replaced adapters let go), and answers with the vectors
//! an f32 backbone gives within 0.999 cosine. Two backbones (as two GPUs would be)
//! serve one queue.

use std::sync::Arc;
use std::time::Duration;

use aside_adapters::testing::{random_adapter, test_metas};
use aside_adapters::{Adapter, Dims};
use aside_backbone::candle_core::DType;
use aside_backbone::pooling::cosine;
use aside_backbone::{Backbone, LoadOptions, Precision};
use aside_server::core::batcher::{BatchConfig, BatchObserver, Batcher, Placed, Text};

struct Quiet;

impl BatchObserver for Quiet {
    fn batch(&self, _items: usize, _tokens: usize, _seconds: f64) {}
}

fn load(precision: Precision) -> Option<Backbone> {
    let dir = aside_backbone::testing::real_model(env!("CARGO_MANIFEST_DIR"))?;
    Some(
        Backbone::load(
            &dir,
            &LoadOptions {
                precision,
                ..LoadOptions::default()
            },
        )
        .unwrap(),
    )
}

fn iaa_l(b: &Backbone, seed: u64) -> Arc<Adapter> {
    let meta = test_metas(b.sha256())
        .into_iter()
        .find(|(name, _)| *name == "iaa-l")
        .unwrap()
        .1;
    Arc::new(random_adapter(&meta, &Dims::of(b), b.bert(), seed))
}

#[test]
fn copies_are_made_once_kept_within_their_budget_and_dropped_with_their_adapter() {
    let Some(b) = load(Precision::Bf16) else {
        return;
    };
    let (a1, a2) = (iaa_l(&b, 1), iaa_l(&b, 2));
    // f32 on the CPU: the registry's adapters serve as they are.
    let f32b = load(Precision::F32).unwrap();
    let mut same = Placed::new(&f32b, 1 << 30);
    assert!(Arc::ptr_eq(&same.get(Some(&a1)).unwrap().unwrap(), &a1));
    assert!(same.is_empty());

    let copy_bytes = a1.size_bytes() / 2; // bf16: half of f32's bytes
    let mut placed = Placed::new(&b, copy_bytes + copy_bytes / 2);
    let c1 = placed.get(Some(&a1)).unwrap().unwrap();
    assert_eq!(c1.placement().1, DType::BF16);
    assert_eq!(placed.bytes(), c1.size_bytes());
    assert_eq!(c1.size_bytes(), copy_bytes);
    // The second request for it gets the same copy: moved once.
    assert!(Arc::ptr_eq(&placed.get(Some(&a1)).unwrap().unwrap(), &c1));
    // A second adapter does not fit beside it: the least recently used goes.
    let c2 = placed.get(Some(&a2)).unwrap().unwrap();
    assert_eq!((placed.len(), placed.bytes()), (1, c2.size_bytes()));
    let c1_again = placed.get(Some(&a1)).unwrap().unwrap();
    assert!(!Arc::ptr_eq(&c1_again, &c1), "evicted, so copied anew");
    // No adapter, no copy.
    assert!(placed.get(None).unwrap().is_none());

    // The registry replaces a1: its copy is let go at the next placement.
    let mut roomy = Placed::new(&b, 1 << 30);
    roomy.get(Some(&a1)).unwrap();
    roomy.get(Some(&a2)).unwrap();
    assert_eq!(roomy.len(), 2);
    drop((a1, c1, c1_again));
    let a3 = iaa_l(&b, 3);
    roomy.get(Some(&a3)).unwrap();
    assert_eq!(roomy.len(), 2, "a1's copy went with a1");
}

#[test]
fn two_bf16_backbones_serve_one_queue_within_0999_of_f32() {
    let Some(b) = load(Precision::Bf16) else {
        return;
    };
    let f32b = load(Precision::F32).unwrap();
    let adapters: Vec<Option<Arc<Adapter>>> = vec![None, Some(iaa_l(&b, 7)), Some(iaa_l(&b, 8))];
    let (b, b2) = (Arc::new(b), Arc::new(load(Precision::Bf16).unwrap()));
    let batcher = Batcher::start_on(
        vec![b.clone(), b2],
        BatchConfig {
            workers: 1,
            max_gap: Duration::ZERO,
            ..BatchConfig::default()
        },
        Arc::new(Quiet),
    );
    let text = |i: usize| format!("claim {i}: vitamin D lowers the risk of tuberculosis");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let got: Vec<Vec<f32>> = rt.block_on(async {
        let handles: Vec<_> = (0..24)
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
    for (i, g) in got.iter().enumerate() {
        let t = text(i);
        let item = match &adapters[i % 3] {
            None => f32b.item(&t),
            Some(a) => aside_backbone::Item {
                hooks: Some(a.as_ref() as &dyn aside_backbone::Hooks),
                ..f32b.item(&t)
            },
        };
        let want = f32b
            .encode(&[item], &aside_backbone::EncodeOptions::default())
            .unwrap()
            .remove(0);
        let c = cosine(g, &want);
        assert!(c >= 0.999, "job {i}: cosine {c} to f32");
    }
}
