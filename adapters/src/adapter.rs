//! [`Adapter`]: a validated adapter of any kind, its forward at the backbone's hook
//! points, and its head. The same struct serves inference (plain tensors) and
//! training (tensors of candle `Var`s), so the forward is written once.

use std::collections::{BTreeMap, HashMap};

use std::sync::{Arc, OnceLock};

use aside_backbone::candle_core::{DType, Device, Result as CResult, Tensor};
use aside_backbone::cpu::BottleneckWeights;
use aside_backbone::ops;
use aside_backbone::{Hooks, Pooling, PoolingConfig, Site, Sub};

use crate::error::{AdapterError, Result};
use crate::layout::{bitfit_required, expected, Dims};
use crate::spec::{Activation, Kind, Meta, Task};

/// `BN_k(x) = U σ(D x + b_D) + b_U`.
#[derive(Debug, Clone)]
pub struct Bottleneck {
    pub down_w: Tensor,
    pub down_b: Tensor,
    pub up_w: Tensor,
    pub up_b: Tensor,
    /// The weights laid out for the CPU kernel: built by this bottleneck the first
    /// time it serves on the f32 CPU path (an adapter that is only stored, or served
    /// on a GPU, never pays for it), then kept with it; `None` inside for trainable
    /// (variable) weights.
    prepared: OnceLock<Option<Arc<BottleneckWeights>>>,
}

impl Bottleneck {
    fn from(t: &BTreeMap<String, Tensor>, prefix: &str) -> Self {
        let g = |s: &str| t[&format!("{prefix}.{s}")].clone();
        let (down_w, down_b, up_w, up_b) = (
            g("down.weight"),
            g("down.bias"),
            g("up.weight"),
            g("up.bias"),
        );
        Bottleneck {
            down_w,
            down_b,
            up_w,
            up_b,
            prepared: OnceLock::new(),
        }
    }

    /// `target + BN(x)`, for `x` and `target` `[..., d]`. Served through the fused
    /// CPU kernel (one pass per row, the hidden values never leave registers) on f32
    /// CPU tensors; trainable (variable) weights and other devices or types take
    /// candle's ops.
    pub fn add_to(&self, target: &Tensor, x: &Tensor, act: Activation) -> CResult<Tensor> {
        if ops::usable(&[x, target]) {
            // The shapes were validated: a failure here can only leave candle's ops.
            let prepared = self.prepared.get_or_init(|| {
                ops::prepare_bottleneck(&self.down_w, &self.down_b, &self.up_w, &self.up_b)
                    .ok()
                    .flatten()
                    .map(Arc::new)
            });
            if let Some(w) = prepared {
                return ops::bottleneck(target, x, w, act.epilogue());
            }
        }
        let dims = x.dims().to_vec();
        let d = *dims.last().expect("rank >= 1");
        let x2 = x.reshape(((), d))?;
        let z = x2.matmul(&self.down_w.t()?)?.broadcast_add(&self.down_b)?;
        let z = act.apply(&z)?;
        let y = z.matmul(&self.up_w.t()?)?.broadcast_add(&self.up_b)?;
        target.add(&y.reshape(target.dims())?)
    }
}

/// One adapter, validated against a backbone's dimensions.
#[derive(Debug)]
pub struct Adapter {
    meta: Meta,
    tensors: BTreeMap<String, Tensor>,
    inner: Vec<[Bottleneck; 2]>,
    aside_s: Vec<[Bottleneck; 2]>,
    aside_l: Vec<Bottleneck>,
    aside_m: Option<Bottleneck>,
    lora: HashMap<(usize, Site), (Tensor, Tensor)>,
    lora_scale: f64,
    bitfit: HashMap<String, Tensor>,
    head: Option<(Tensor, Tensor)>,
    params: usize,
}

fn sub_index(s: Sub) -> usize {
    match s {
        Sub::Attn => 0,
        Sub::Ffn => 1,
    }
}

impl Adapter {
    /// Checks named F32 tensors against the metadata and the backbone, then builds
    /// the adapter. The first fault (in name order: missing, then left over, then
    /// shape, then non-finite) rejects the whole set.
    pub fn from_tensors(
        meta: Meta,
        tensors: BTreeMap<String, Tensor>,
        dims: &Dims,
    ) -> Result<Self> {
        if let Some(b) = &meta.backbone {
            if *b != dims.backbone_sha256 {
                return Err(AdapterError::BackboneMismatch {
                    expected: b.clone(),
                    loaded: dims.backbone_sha256.clone(),
                });
            }
        }
        if let Some(layers) = &meta.lora_layers {
            if let Some(l) = layers.iter().find(|&&l| l >= dims.layers) {
                return Err(crate::error::meta_err(
                    "lora_layers",
                    format!(
                        "layer {l} does not exist (the backbone has {} layers)",
                        dims.layers
                    ),
                ));
            }
        }
        let want = expected(&meta, dims);
        // BitFit: any non-empty subset of the backbone's biases and LayerNorm
        // tensors (an absent one keeps the backbone's value).
        if meta.kind == Kind::Bitfit && !tensors.keys().any(|n| n.starts_with("bitfit.")) {
            let first = want
                .iter()
                .find(|(n, _)| n.starts_with("bitfit.") && bitfit_required(n))
                .expect("a backbone has biases");
            return Err(AdapterError::MissingTensor {
                name: first.0.clone(),
                expected: first.1.clone(),
            });
        }
        for (name, shape) in &want {
            let optional = meta.kind == Kind::Bitfit && name.starts_with("bitfit.");
            if !tensors.contains_key(name) && !optional {
                return Err(AdapterError::MissingTensor {
                    name: name.clone(),
                    expected: shape.clone(),
                });
            }
        }
        for name in tensors.keys() {
            if !want.contains_key(name) {
                return Err(AdapterError::UnexpectedTensor {
                    name: name.clone(),
                    why: leftover_reason(name, &meta, dims),
                });
            }
        }
        for (name, t) in &tensors {
            let exp = &want[name];
            if t.dims() != exp.as_slice() {
                let hint = if t.dims().contains(&dims.hidden) || exp.contains(&dims.hidden) {
                    format!(" (the loaded backbone's hidden size is {})", dims.hidden)
                } else {
                    String::new()
                };
                return Err(AdapterError::WrongShape {
                    name: name.clone(),
                    expected: exp.clone(),
                    got: t.dims().to_vec(),
                    hint,
                });
            }
        }
        for (name, t) in &tensors {
            check_finite(name, t)?;
        }
        Ok(Self::build(meta, tensors, dims))
    }

    fn build(meta: Meta, tensors: BTreeMap<String, Tensor>, dims: &Dims) -> Self {
        let t = &tensors;
        let layers = dims.layers;
        let inner = if meta.kind.has_inner() {
            (0..layers)
                .map(|l| {
                    [
                        Bottleneck::from(t, &format!("inner.{l}.attn")),
                        Bottleneck::from(t, &format!("inner.{l}.ffn")),
                    ]
                })
                .collect()
        } else {
            Vec::new()
        };
        let aside_s = if meta.kind == Kind::IaaS {
            (0..layers)
                .map(|l| {
                    [
                        Bottleneck::from(t, &format!("aside.{l}.attn")),
                        Bottleneck::from(t, &format!("aside.{l}.ffn")),
                    ]
                })
                .collect()
        } else {
            Vec::new()
        };
        let aside_l = if meta.kind == Kind::IaaL {
            (0..layers)
                .map(|l| Bottleneck::from(t, &format!("aside.{l}")))
                .collect()
        } else {
            Vec::new()
        };
        let aside_m = (meta.kind == Kind::IaaM).then(|| Bottleneck::from(t, "aside"));
        let mut lora = HashMap::new();
        let mut bitfit = HashMap::new();
        for (name, v) in t {
            if let Some(rest) = name.strip_prefix("lora.") {
                if let Some(base) = rest.strip_suffix(".A") {
                    let (l, site) = base.split_once('.').expect("validated name");
                    let l: usize = l.parse().expect("validated layer");
                    let site = Site::from_name(site).expect("validated site");
                    let b = t[&format!("lora.{base}.B")].clone();
                    lora.insert((l, site), (v.clone(), b));
                }
            } else if let Some(target) = name.strip_prefix("bitfit.") {
                bitfit.insert(target.to_owned(), v.clone());
            }
        }
        let head =
            (meta.task == Task::Rerank).then(|| (t["head.weight"].clone(), t["head.bias"].clone()));
        let params = t.values().map(|x| x.elem_count()).sum();
        let lora_scale = meta.lora_scale();
        Adapter {
            meta,
            inner,
            aside_s,
            aside_l,
            aside_m,
            lora,
            lora_scale,
            bitfit,
            head,
            params,
            tensors,
        }
    }

    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// A copy whose tensors live on `device` in `dtype`, for a backbone there (a GPU,
    /// or f16 / bf16): moved once, when the adapter is loaded for that backbone. The
    /// rerank head stays an f32 CPU tensor (it scores pooled f32 vectors), and BitFit's
    /// LayerNorm tensors stay f32 (the backbone runs LayerNorm in f32).
    pub fn to_device(&self, device: &Device, dtype: DType, dims: &Dims) -> Result<Adapter> {
        let mut tensors = BTreeMap::new();
        for (name, t) in &self.tensors {
            let t = if name.starts_with("head.") {
                t.clone()
            } else if name.contains("LayerNorm") {
                t.to_device(device)?
            } else {
                t.to_device(device)?.to_dtype(dtype)?
            };
            tensors.insert(name.clone(), t);
        }
        Ok(Self::build(self.meta.clone(), tensors, dims))
    }

    /// This adapter placed for `backbone`: itself when the backbone computes in f32
    /// on the CPU, else a copy on its device in its type ([`Adapter::to_device`]).
    pub fn for_backbone(self, backbone: &aside_backbone::Backbone) -> Result<Adapter> {
        let bert = backbone.bert();
        if bert.cpu_f32() {
            return Ok(self);
        }
        self.to_device(bert.device(), bert.dtype(), &Dims::of(backbone))
    }

    /// Where the tensors live and in what type (the rerank head and LayerNorm
    /// tensors aside).
    pub fn placement(&self) -> (Device, DType) {
        self.tensors
            .iter()
            .find(|(n, _)| !n.starts_with("head.") && !n.contains("LayerNorm"))
            .map_or((Device::Cpu, DType::F32), |(_, t)| {
                (t.device().clone(), t.dtype())
            })
    }

    pub fn kind(&self) -> Kind {
        self.meta.kind
    }

    pub fn task(&self) -> Task {
        self.meta.task
    }

    /// The named tensors, as stored in a file.
    pub fn tensors(&self) -> &BTreeMap<String, Tensor> {
        &self.tensors
    }

    /// Trainable parameters.
    pub fn param_count(&self) -> usize {
        self.params
    }

    /// Resident size of the tensors in bytes.
    pub fn size_bytes(&self) -> usize {
        self.tensors
            .values()
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum()
    }

    /// Pooling and normalisation of this adapter's outputs: the metadata's, else
    /// the backbone's; a rerank adapter always pools `[CLS]` without normalising.
    pub fn pooling(&self, backbone: PoolingConfig) -> PoolingConfig {
        match self.meta.task {
            Task::Rerank => PoolingConfig {
                pooling: Pooling::Cls,
                normalize: false,
            },
            Task::Retrieval => PoolingConfig {
                pooling: self.meta.pooling.unwrap_or(backbone.pooling),
                normalize: self.meta.normalize.unwrap_or(backbone.normalize),
            },
        }
    }

    /// The rerank head over pooled `[CLS]` vectors `[n, d]` → scores `[n]`.
    pub fn head_scores(&self, pooled: &Tensor) -> CResult<Option<Tensor>> {
        match &self.head {
            None => Ok(None),
            Some((w, b)) => Ok(Some(pooled.matmul(&w.t()?)?.broadcast_add(b)?.squeeze(1)?)),
        }
    }

    /// The rerank head over one pooled vector.
    pub fn head_score(&self, pooled: &[f32]) -> Result<Option<f32>> {
        let Some((w, b)) = &self.head else {
            return Ok(None);
        };
        let w = w.flatten_all()?.to_vec1::<f32>()?;
        let b = b.to_vec1::<f32>()?[0];
        Ok(Some(
            w.iter().zip(pooled).map(|(a, x)| a * x).sum::<f32>() + b,
        ))
    }

    /// A fresh adapter of `meta.kind` initialised as method.md says: `D` ~ N(0, 0.02),
    /// biases 0, `U` = 0 (LoRA: `A` ~ N(0, 0.02), `B` = 0; BitFit: the backbone's own
    /// values; head ~ N(0, 0.02)), so it leaves the backbone's output unchanged.
    pub fn init_tensors(
        meta: &Meta,
        dims: &Dims,
        backbone: &aside_backbone::Bert,
        seed: u64,
        device: &Device,
    ) -> Result<BTreeMap<String, Tensor>> {
        let mut rng = aside_backbone::testing::Rng::new(seed);
        let mut out = BTreeMap::new();
        for (name, shape) in expected(meta, dims) {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = if let Some(target) = name.strip_prefix("bitfit.") {
                if !bitfit_required(&name) && !target.contains("LayerNorm") {
                    continue;
                }
                backbone_tensor(backbone, target)?
            } else if name.ends_with("down.weight") || name.ends_with(".A") || name == "head.weight"
            {
                rng.normals(n, 0.02, 0.0)
            } else {
                vec![0.0; n]
            };
            out.insert(name, Tensor::from_vec(data, shape, device)?);
        }
        Ok(out)
    }
}

fn backbone_tensor(b: &aside_backbone::Bert, name: &str) -> Result<Vec<f32>> {
    Ok(b.tensor(name)
        .ok_or_else(|| AdapterError::UnexpectedTensor {
            name: format!("bitfit.{name}"),
            why: "the backbone has no such tensor".into(),
        })?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

fn leftover_reason(name: &str, meta: &Meta, dims: &Dims) -> String {
    let layer_of = |rest: &str| rest.split('.').next().and_then(|s| s.parse::<usize>().ok());
    for p in ["inner.", "aside.", "lora."] {
        if let Some(rest) = name.strip_prefix(p) {
            if let Some(l) = layer_of(rest) {
                if l >= dims.layers {
                    return format!(
                        "layer {l} does not exist (the backbone has {} layers)",
                        dims.layers
                    );
                }
            }
        }
    }
    if name.starts_with("head.") {
        return format!(
            "a head belongs only to task rerank (this adapter's task is {})",
            meta.task
        );
    }
    if let Some(t) = name.strip_prefix("bitfit.") {
        return format!("`{t}` is not a bias or LayerNorm tensor of the backbone");
    }
    format!("not part of a {} adapter", meta.kind)
}

fn check_finite(name: &str, t: &Tensor) -> Result<()> {
    let v = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    if let Some((index, &value)) = v.iter().enumerate().find(|(_, x)| !x.is_finite()) {
        return Err(AdapterError::NotFinite {
            name: name.to_owned(),
            index,
            value,
        });
    }
    Ok(())
}

impl Hooks for Adapter {
    fn param(&self, name: &str) -> Option<&Tensor> {
        self.bitfit.get(name)
    }

    fn has_linear(&self) -> bool {
        !self.lora.is_empty()
    }

    fn linear(&self, layer: usize, site: Site, x: &Tensor, y: &Tensor) -> CResult<Option<Tensor>> {
        let Some((a, b)) = self.lora.get(&(layer, site)) else {
            return Ok(None);
        };
        if ops::usable(&[x, y, a, b]) {
            let z = x.broadcast_matmul(&a.t()?)?;
            return Ok(Some(ops::add_linear(
                y,
                &z,
                b,
                None,
                self.lora_scale as f32,
            )?));
        }
        let dims = x.dims().to_vec();
        let x2 = x.reshape(((), *dims.last().expect("rank >= 1")))?;
        let d = (x2.matmul(&a.t()?)?.matmul(&b.t()?)? * self.lora_scale)?;
        Ok(Some(y.add(&d.reshape(y.dims())?)?))
    }

    fn inner(&self, layer: usize, sub: Sub, out: &Tensor) -> CResult<Option<Tensor>> {
        match self.inner.get(layer) {
            Some(bn) => Ok(Some(bn[sub_index(sub)].add_to(
                out,
                out,
                self.meta.activation,
            )?)),
            None => Ok(None),
        }
    }

    fn aside(
        &self,
        layer: usize,
        sub: Sub,
        layer_input: &Tensor,
        sub_input: &Tensor,
        normed: &Tensor,
    ) -> CResult<Option<Tensor>> {
        let act = self.meta.activation;
        match self.meta.kind {
            Kind::IaaS => Ok(Some(
                self.aside_s[layer][sub_index(sub)].add_to(normed, sub_input, act)?,
            )),
            Kind::IaaL if sub == Sub::Ffn => Ok(Some(self.aside_l[layer].add_to(
                normed,
                layer_input,
                act,
            )?)),
            _ => Ok(None),
        }
    }

    fn encoder(&self, embeddings: &Tensor, encoded: &Tensor) -> CResult<Option<Tensor>> {
        match &self.aside_m {
            Some(bn) => Ok(Some(bn.add_to(
                encoded,
                embeddings,
                self.meta.activation,
            )?)),
            None => Ok(None),
        }
    }
}
