//! Seeded random adapters of every kind, for tests and for the fixtures that
//! `tools/make_fixtures.sh` computes with the independent NumPy reference.

use std::collections::BTreeMap;

use aside_backbone::candle_core::{Device, Tensor};
use aside_backbone::testing::Rng;
use aside_backbone::{Bert, Pooling, Site};

use crate::layout::{expected, Dims};
use crate::spec::{Activation, Kind, Meta, Task};
use crate::Adapter;

/// An adapter of `meta`'s kind whose every tensor is random (none zero), so each
/// hook point changes the output.
pub fn random_adapter(meta: &Meta, dims: &Dims, bert: &Bert, seed: u64) -> Adapter {
    let mut rng = Rng::new(seed);
    let mut tensors = BTreeMap::new();
    for (name, shape) in expected(meta, dims) {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = if let Some(target) = name.strip_prefix("bitfit.") {
            let base = bert
                .tensor(target)
                .expect("backbone tensor")
                .flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .expect("f32 tensor");
            base.iter().map(|v| v + 0.05 * rng.normal()).collect()
        } else if name.ends_with(".bias") {
            rng.normals(n, 0.05, 0.0)
        } else {
            rng.normals(n, 0.1, 0.0)
        };
        tensors.insert(
            name,
            Tensor::from_vec(data, shape, &Device::Cpu).expect("tensor"),
        );
    }
    Adapter::from_tensors(meta.clone(), tensors, dims).expect("valid random adapter")
}

/// The adapter configurations the parity tests cover: every kind, every activation,
/// LoRA with and without rsLoRA and layer subsets, both tasks.
pub fn test_metas(backbone_sha256: &str) -> Vec<(&'static str, Meta)> {
    let m = |kind: Kind, r: Option<usize>, ar: Option<usize>, act: Activation| {
        let mut meta = Meta::new(kind, Task::Retrieval);
        meta.r = r;
        meta.ar = ar;
        meta.activation = act;
        meta.backbone = Some(backbone_sha256.to_owned());
        meta
    };
    let mut lora = m(Kind::Lora, Some(4), None, Activation::Relu);
    lora.lora_alpha = Some(8.0);
    lora.lora_targets = Site::ALL.to_vec();
    let mut lora_rs = m(Kind::Lora, Some(4), None, Activation::Relu);
    lora_rs.lora_alpha = Some(6.0);
    lora_rs.lora_rslora = true;
    lora_rs.lora_targets = vec![Site::Query, Site::Value];
    lora_rs.lora_layers = Some(vec![0]);
    let mut cls = m(Kind::IaaM, Some(3), Some(5), Activation::Gelu);
    cls.pooling = Some(Pooling::Cls);
    cls.normalize = Some(false);
    let mut rerank = m(Kind::IaaL, Some(4), Some(4), Activation::Relu);
    rerank.task = Task::Rerank;
    vec![
        ("iaa-s", m(Kind::IaaS, Some(4), Some(3), Activation::Relu)),
        ("iaa-l", m(Kind::IaaL, Some(6), Some(8), Activation::Gelu)),
        ("iaa-m", m(Kind::IaaM, Some(5), Some(7), Activation::Swish)),
        ("houlsby", m(Kind::Houlsby, Some(4), None, Activation::Tanh)),
        ("lora", lora),
        ("lora-rslora", lora_rs),
        ("bitfit", m(Kind::Bitfit, None, None, Activation::Relu)),
        ("iaa-m-cls", cls),
        ("rerank-iaa-l", rerank),
    ]
}
