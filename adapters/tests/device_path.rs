//! The forward on candle's device ops — what a GPU runs — checked on the CPU in f16
//! and bf16 against the CPU kernels in f32: the bare backbone and every adapter
//! kind (moved to the backbone's type once, as the server does when it loads one),
//! rerank scores, and a batch mixing adapters. The same code runs on a CUDA device:
//! with `ASIDE_TEST_DEVICE=cuda` (a `--features cuda` build, as `scripts/gpu-check.sh`
//! runs it) f32, f16 and bf16 on the GPU are each compared with f32 on the CPU
//! (f32 to 0.9999 cosine).

mod common;

use aside_adapters::testing::{random_adapter, test_metas};
use aside_adapters::{Adapter, Task};
use aside_backbone::candle_core::Device;
use aside_backbone::testing::real_model;
use aside_backbone::{Backbone, Hooks, Input, Item, LoadOptions, Precision};
use common::*;

const TEXTS: [&str; 5] = [
    "The weather is lovely today.",
    "It's so sunny outside!",
    "He drove to the stadium.",
    "Vitamin D deficiency is associated with an increased risk of tuberculosis in HIV-infected adults, and with a higher mortality among them.",
    "a",
];

/// The device under test: the CPU, or `ASIDE_TEST_DEVICE=cuda`'s GPU.
fn device() -> Device {
    match std::env::var("ASIDE_TEST_DEVICE").as_deref() {
        Ok("cuda") => Device::new_cuda(0).expect("ASIDE_TEST_DEVICE=cuda: a CUDA device"),
        _ => Device::Cpu,
    }
}

fn load_on(precision: Precision, device: Device) -> Option<Backbone> {
    let dir = real_model(env!("CARGO_MANIFEST_DIR"))?;
    Some(Backbone::load(&dir, &LoadOptions { device, precision }).unwrap())
}

/// The reference: f32 on the CPU's kernels.
fn load(precision: Precision) -> Option<Backbone> {
    load_on(precision, Device::Cpu)
}

/// The precisions under test and the cosine each must keep to the reference.
fn cases() -> Vec<(Precision, f64)> {
    let mut v = vec![(Precision::F16, 0.999), (Precision::Bf16, 0.999)];
    if !device().is_cpu() {
        v.insert(0, (Precision::F32, 0.9999));
    }
    v
}

/// The worst cosine between two sets of vectors.
fn worst(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    a.iter().zip(b).map(|(x, y)| cos(x, y)).fold(1.0, f64::min)
}

#[test]
fn f16_and_bf16_on_device_ops_stay_within_0999_of_f32_for_every_adapter_kind() {
    let Some(f32b) = load(Precision::F32) else {
        return;
    };
    let dims = dims(&f32b);
    let pairs = [
        ("what is vitamin d good for", TEXTS[3]),
        ("weather", TEXTS[0]),
    ];
    let adapters: Vec<(&str, Adapter)> = test_metas(f32b.sha256())
        .into_iter()
        .enumerate()
        .map(|(i, (label, m))| {
            (
                label,
                random_adapter(&m, &dims, f32b.bert(), 300 + i as u64),
            )
        })
        .collect();
    let dev = device();
    for (precision, bound) in cases() {
        let b = load_on(precision, dev.clone()).unwrap();
        assert_eq!(b.bert().precision(), precision);
        assert_eq!(b.bert().dtype(), precision.dtype());
        let bare = worst(&embed(&b, None, &TEXTS), &embed(&f32b, None, &TEXTS));
        eprintln!("{precision} bare backbone: worst cosine {bare:.6}");
        assert!(bare >= bound, "{precision} bare backbone: cosine {bare}");
        for (label, a) in &adapters {
            let moved = a
                .to_device(b.bert().device(), precision.dtype(), &dims)
                .unwrap();
            let (on, dtype) = moved.placement();
            assert!(on.same_device(&dev) && dtype == precision.dtype());
            if a.task() == Task::Rerank {
                let (want, got) = (scores(&f32b, a, &pairs), scores(&b, &moved, &pairs));
                for (w, g) in want.iter().zip(&got) {
                    assert!(
                        (w - g).abs() <= 0.02 * w.abs().max(1.0),
                        "{precision} {label}: score {g} vs {w}"
                    );
                }
                continue;
            }
            let want = embed(&f32b, Some(a), &TEXTS);
            let got = embed(&b, Some(&moved), &TEXTS);
            let c = worst(&got, &want);
            eprintln!("{precision} {label}: worst cosine {c:.6}");
            assert!(c >= bound, "{precision} {label}: cosine {c}");
            // The adapter did something in this type too.
            let bare = embed(&b, None, &TEXTS);
            assert!(
                worst(&got, &bare) < 0.9999,
                "{precision} {label}: no effect"
            );
        }
    }
}

#[test]
fn a_mixed_adapter_batch_on_device_ops_equals_each_adapter_alone() {
    let Some(f32b) = load(Precision::F32) else {
        return;
    };
    let b = load_on(Precision::Bf16, device()).unwrap();
    let dims = dims(&b);
    let adapters: Vec<Adapter> = test_metas(b.sha256())
        .into_iter()
        .filter(|(_, m)| m.task == Task::Retrieval)
        .enumerate()
        .map(|(i, (_, m))| {
            random_adapter(&m, &dims, f32b.bert(), 40 + i as u64)
                .for_backbone(&b)
                .unwrap()
        })
        .collect();
    let n = adapters.len();
    let mut items = Vec::new();
    let mut expect = Vec::new();
    for r in 0..16 {
        let t = TEXTS[r % TEXTS.len()];
        let a = (r % 5 != 4).then(|| &adapters[r % n]);
        let pool = a.map_or(b.pooling(), |a| a.pooling(b.pooling()));
        items.push(Item {
            input: Input::Single(t),
            hooks: a.map(|a| a as &dyn Hooks),
            pooling: pool.pooling,
            normalize: pool.normalize,
        });
        expect.push(embed(&b, a, &[t]).remove(0));
    }
    let got = b.encode(&items, &opts(&b)).unwrap();
    for (r, (g, w)) in got.iter().zip(&expect).enumerate() {
        // Alone the rows pad differently: bf16 rounding differs, not the adapter.
        assert!(cos(g, w) >= 0.999, "row {r}: cosine {}", cos(g, w));
    }
}

#[test]
fn int8_is_refused_off_the_cpu_kernels_and_f16_is_named() {
    assert_eq!("f16".parse::<Precision>().unwrap(), Precision::F16);
    assert_eq!("bf16".parse::<Precision>().unwrap(), Precision::Bf16);
    assert!(!Precision::F16.supported() && !Precision::Bf16.supported());
}
