//! The tensor layout of each kind: which names a file must hold and their shapes,
//! derived from the metadata and the loaded backbone's dimensions.

use std::collections::BTreeMap;

use aside_backbone::Site;

use crate::spec::{Kind, Meta, Task};

/// The dimensions of the backbone an adapter is checked against.
#[derive(Debug, Clone, PartialEq)]
pub struct Dims {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    /// Parameters of the backbone (for the percentage adapters report).
    pub backbone_params: usize,
    /// The backbone's bias and LayerNorm tensors by name (BitFit's targets).
    pub bitfit_targets: BTreeMap<String, Vec<usize>>,
    /// sha256 of the backbone weights.
    pub backbone_sha256: String,
}

impl Dims {
    pub fn of(b: &aside_backbone::Backbone) -> Self {
        let c = b.config();
        let bitfit_targets = b
            .bert()
            .tensor_shapes()
            .iter()
            .filter(|(n, _)| n.ends_with(".bias") || n.contains("LayerNorm"))
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect();
        Dims {
            hidden: c.hidden_size,
            intermediate: c.intermediate_size,
            layers: c.num_hidden_layers,
            backbone_params: b.bert().parameter_count(),
            bitfit_targets,
            backbone_sha256: b.sha256().to_owned(),
        }
    }

    pub fn linear_dims(&self, site: Site) -> (usize, usize) {
        match site {
            Site::Inter => (self.hidden, self.intermediate),
            Site::Out => (self.intermediate, self.hidden),
            _ => (self.hidden, self.hidden),
        }
    }
}

/// Names of a bottleneck's four tensors under `prefix`, with shapes for rank `k`.
pub fn bottleneck(prefix: &str, d: usize, k: usize) -> [(String, Vec<usize>); 4] {
    [
        (format!("{prefix}.down.weight"), vec![k, d]),
        (format!("{prefix}.down.bias"), vec![k]),
        (format!("{prefix}.up.weight"), vec![d, k]),
        (format!("{prefix}.up.bias"), vec![d]),
    ]
}

/// Whether a BitFit target is required (every bias) or optional (LayerNorm weights).
pub fn bitfit_required(name: &str) -> bool {
    name.ends_with(".bias")
}

/// Every tensor the metadata implies, with its shape. For BitFit, the optional
/// LayerNorm weights are included too; the loader lets them be absent.
pub fn expected(meta: &Meta, dims: &Dims) -> BTreeMap<String, Vec<usize>> {
    let d = dims.hidden;
    let mut out = BTreeMap::new();
    let mut add = |items: [(String, Vec<usize>); 4]| {
        for (n, s) in items {
            out.insert(n, s);
        }
    };
    if meta.kind.has_inner() {
        let r = meta.r.unwrap_or(0);
        for l in 0..dims.layers {
            add(bottleneck(&format!("inner.{l}.attn"), d, r));
            add(bottleneck(&format!("inner.{l}.ffn"), d, r));
        }
    }
    let ar = meta.ar.unwrap_or(0);
    match meta.kind {
        Kind::IaaS => {
            for l in 0..dims.layers {
                add(bottleneck(&format!("aside.{l}.attn"), d, ar));
                add(bottleneck(&format!("aside.{l}.ffn"), d, ar));
            }
        }
        Kind::IaaL => {
            for l in 0..dims.layers {
                add(bottleneck(&format!("aside.{l}"), d, ar));
            }
        }
        Kind::IaaM => add(bottleneck("aside", d, ar)),
        _ => {}
    }
    if meta.kind == Kind::Lora {
        let r = meta.r.unwrap_or(0);
        let layers: Vec<usize> = meta
            .lora_layers
            .clone()
            .unwrap_or_else(|| (0..dims.layers).collect());
        for l in layers {
            for &site in &meta.lora_targets {
                let (i, o) = dims.linear_dims(site);
                out.insert(format!("lora.{l}.{}.A", site.name()), vec![r, i]);
                out.insert(format!("lora.{l}.{}.B", site.name()), vec![o, r]);
            }
        }
    }
    if meta.kind == Kind::Bitfit {
        for (n, s) in &dims.bitfit_targets {
            out.insert(format!("bitfit.{n}"), s.clone());
        }
    }
    if meta.task == Task::Rerank {
        out.insert("head.weight".into(), vec![1, d]);
        out.insert("head.bias".into(), vec![1]);
    }
    out
}

/// Trainable parameters implied by the metadata (BitFit counts its required biases
/// plus whichever LayerNorm weights are present, so it is computed from the tensors).
pub fn count_params(tensors: &BTreeMap<String, Vec<usize>>) -> usize {
    tensors.values().map(|s| s.iter().product::<usize>()).sum()
}
