//! The adapter metadata of method.md: kinds, tasks, activations, and the
//! `__metadata__` keys, parsed strictly and written back in canonical form.

use std::collections::BTreeMap;

use aside_backbone::{Pooling, Site};

use crate::error::{meta_err, Result};

pub const FORMAT: &str = "iaa-adapter";
pub const FORMAT_VERSION: &str = "1";

/// More layers than any backbone this server loads has: a longer `lora_layers`
/// list is refused before it is read to its end.
pub const MAX_LAYERS: usize = 1024;

/// The adapter kinds of method.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Kind {
    #[serde(rename = "iaa-s")]
    IaaS,
    #[serde(rename = "iaa-l")]
    IaaL,
    #[serde(rename = "iaa-m")]
    IaaM,
    #[serde(rename = "houlsby")]
    Houlsby,
    #[serde(rename = "lora")]
    Lora,
    #[serde(rename = "bitfit")]
    Bitfit,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::IaaS,
        Kind::IaaL,
        Kind::IaaM,
        Kind::Houlsby,
        Kind::Lora,
        Kind::Bitfit,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::IaaS => "iaa-s",
            Kind::IaaL => "iaa-l",
            Kind::IaaM => "iaa-m",
            Kind::Houlsby => "houlsby",
            Kind::Lora => "lora",
            Kind::Bitfit => "bitfit",
        }
    }

    /// Inner (Houlsby) adapters in every layer.
    pub fn has_inner(self) -> bool {
        matches!(self, Kind::IaaS | Kind::IaaL | Kind::IaaM | Kind::Houlsby)
    }

    /// Aside modules (and so the `ar` rank).
    pub fn has_aside(self) -> bool {
        matches!(self, Kind::IaaS | Kind::IaaL | Kind::IaaM)
    }

    /// Whether the kind has an `r` rank.
    pub fn has_r(self) -> bool {
        self.has_inner() || self == Kind::Lora
    }
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Kind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                format!("unknown kind `{s}` (expected one of iaa-s, iaa-l, iaa-m, houlsby, lora, bitfit)")
            })
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the adapter is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// Bi-encoder: one pooled vector per text.
    Retrieval,
    /// Cross-encoder: a score per (query, document) pair, through `head`.
    Rerank,
}

impl Task {
    pub fn name(self) -> &'static str {
        match self {
            Task::Retrieval => "retrieval",
            Task::Rerank => "rerank",
        }
    }
}

impl std::str::FromStr for Task {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "retrieval" => Ok(Task::Retrieval),
            "rerank" => Ok(Task::Rerank),
            _ => Err(format!("unknown task `{s}` (expected retrieval or rerank)")),
        }
    }
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The bottleneck activation σ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Activation {
    #[default]
    Relu,
    Gelu,
    Swish,
    Tanh,
}

impl Activation {
    pub fn name(self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::Gelu => "gelu",
            Activation::Swish => "swish",
            Activation::Tanh => "tanh",
        }
    }

    /// The fused-kernel form of this activation.
    pub fn epilogue(self) -> aside_backbone::ops::Epilogue {
        use aside_backbone::ops::Epilogue;
        match self {
            Activation::Relu => Epilogue::Relu,
            Activation::Gelu => Epilogue::Gelu,
            Activation::Swish => Epilogue::Swish,
            Activation::Tanh => Epilogue::Tanh,
        }
    }

    pub fn apply(self, x: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        match self {
            Activation::Relu => x.relu(),
            Activation::Gelu => x.gelu_erf(),
            Activation::Swish => x.silu(),
            Activation::Tanh => x.tanh(),
        }
    }
}

impl std::str::FromStr for Activation {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "relu" => Ok(Activation::Relu),
            "gelu" => Ok(Activation::Gelu),
            "swish" | "silu" => Ok(Activation::Swish),
            "tanh" => Ok(Activation::Tanh),
            _ => Err(format!(
                "unknown activation `{s}` (expected relu, gelu, swish or tanh)"
            )),
        }
    }
}

/// The adapter's `__metadata__`, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Meta {
    pub kind: Kind,
    pub task: Task,
    /// Inner rank (iaa-*, houlsby) or LoRA rank.
    pub r: Option<usize>,
    /// Aside rank (iaa-*).
    pub ar: Option<usize>,
    pub activation: Activation,
    /// LoRA α (defaults to `r`, a scale of 1).
    pub lora_alpha: Option<f64>,
    /// LoRA target linears, in file order.
    pub lora_targets: Vec<Site>,
    /// LoRA layers (all when `None`): extension key `lora_layers`, for PEFT's
    /// `layers_to_transform`; at most [`MAX_LAYERS`] distinct entries.
    pub lora_layers: Option<Vec<usize>>,
    /// rsLoRA scaling α/√r: extension key `lora_rslora`.
    pub lora_rslora: bool,
    pub pooling: Option<Pooling>,
    pub normalize: Option<bool>,
    /// sha256 of the backbone weights the adapter was trained on.
    pub backbone: Option<String>,
}

impl Meta {
    /// A fresh description of `kind` with defaults (relu, retrieval, no ranks).
    pub fn new(kind: Kind, task: Task) -> Self {
        Meta {
            kind,
            task,
            r: None,
            ar: None,
            activation: Activation::Relu,
            lora_alpha: None,
            lora_targets: Vec::new(),
            lora_layers: None,
            lora_rslora: false,
            pooling: None,
            normalize: None,
            backbone: None,
        }
    }

    /// LoRA's multiplier of `B A x`.
    pub fn lora_scale(&self) -> f64 {
        let r = self.r.unwrap_or(1) as f64;
        let alpha = self.lora_alpha.unwrap_or(r);
        if self.lora_rslora {
            alpha / r.sqrt()
        } else {
            alpha / r
        }
    }

    /// Parses `__metadata__` strictly: required keys, known values, keys that apply.
    pub fn parse(m: &BTreeMap<String, String>) -> Result<Self> {
        let get = |k: &str| m.get(k).map(|s| s.as_str());
        let require = |k: &str| get(k).ok_or_else(|| meta_err(k, "required key is missing"));
        match require("format")? {
            FORMAT => {}
            other => {
                return Err(meta_err(
                    "format",
                    format!("is `{other}`, expected `{FORMAT}`"),
                ))
            }
        }
        match require("format_version")? {
            FORMAT_VERSION => {}
            other => {
                return Err(meta_err(
                    "format_version",
                    format!("is `{other}`; this server reads version {FORMAT_VERSION}"),
                ))
            }
        }
        let kind: Kind = require("kind")?
            .parse()
            .map_err(|e: String| meta_err("kind", e))?;
        let task: Task = match get("task") {
            Some(s) => s.parse().map_err(|e: String| meta_err("task", e))?,
            None => return Err(meta_err("task", "required key is missing")),
        };
        let rank = |k: &str| -> Result<Option<usize>> {
            match get(k) {
                None => Ok(None),
                Some(s) => match s.parse::<usize>() {
                    Ok(v) if v > 0 && s.chars().all(|c| c.is_ascii_digit()) => Ok(Some(v)),
                    _ => Err(meta_err(
                        k,
                        format!("`{s}` is not a positive decimal integer"),
                    )),
                },
            }
        };
        let mut meta = Meta::new(kind, task);
        meta.r = rank("r")?;
        meta.ar = rank("ar")?;
        if kind.has_r() && meta.r.is_none() {
            return Err(meta_err("r", format!("required for kind {kind}")));
        }
        if !kind.has_r() && meta.r.is_some() {
            return Err(meta_err("r", format!("does not apply to kind {kind}")));
        }
        if kind.has_aside() && meta.ar.is_none() {
            return Err(meta_err("ar", format!("required for kind {kind}")));
        }
        if !kind.has_aside() && meta.ar.is_some() {
            return Err(meta_err("ar", format!("does not apply to kind {kind}")));
        }
        if let Some(a) = get("activation") {
            meta.activation = a.parse().map_err(|e: String| meta_err("activation", e))?;
        }
        let lora_keys = ["lora_alpha", "lora_targets", "lora_layers", "lora_rslora"];
        if kind != Kind::Lora {
            if let Some(k) = lora_keys.iter().find(|k| m.contains_key(**k)) {
                return Err(meta_err(k, format!("does not apply to kind {kind}")));
            }
        } else {
            if let Some(s) = get("lora_alpha") {
                let v: f64 = s
                    .parse()
                    .map_err(|_| meta_err("lora_alpha", format!("`{s}` is not a number")))?;
                if !v.is_finite() || v <= 0.0 {
                    return Err(meta_err("lora_alpha", format!("`{s}` must be positive")));
                }
                meta.lora_alpha = Some(v);
            }
            let targets = require("lora_targets")?;
            for t in targets.split(',').map(str::trim) {
                let site = Site::from_name(t).ok_or_else(|| {
                    meta_err(
                        "lora_targets",
                        format!("unknown module `{t}` (expected query, key, value, attn_out, inter, out)"),
                    )
                })?;
                if meta.lora_targets.contains(&site) {
                    return Err(meta_err("lora_targets", format!("`{t}` is listed twice")));
                }
                meta.lora_targets.push(site);
            }
            if let Some(s) = get("lora_layers") {
                let mut layers = Vec::new();
                let mut seen = std::collections::HashSet::new();
                for (n, p) in s.split(',').map(str::trim).enumerate() {
                    if n >= MAX_LAYERS {
                        return Err(meta_err(
                            "lora_layers",
                            format!("more than {MAX_LAYERS} entries"),
                        ));
                    }
                    let l: usize = p.parse().map_err(|_| {
                        meta_err("lora_layers", format!("`{p}` is not a layer index"))
                    })?;
                    if !seen.insert(l) {
                        return Err(meta_err(
                            "lora_layers",
                            format!("layer {l} is listed twice"),
                        ));
                    }
                    layers.push(l);
                }
                meta.lora_layers = Some(layers);
            }
            meta.lora_rslora = parse_bool(m, "lora_rslora")?.unwrap_or(false);
        }
        if let Some(p) = get("pooling") {
            meta.pooling = Some(p.parse().map_err(|e: String| meta_err("pooling", e))?);
        }
        meta.normalize = parse_bool(m, "normalize")?;
        if let Some(b) = get("backbone") {
            if b.len() != 64 || !b.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(meta_err(
                    "backbone",
                    format!("`{b}` is not a sha256 hex digest"),
                ));
            }
            meta.backbone = Some(b.to_ascii_lowercase());
        }
        Ok(meta)
    }

    /// The canonical `__metadata__` for this description.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        let mut put = |k: &str, v: String| {
            m.insert(k.to_owned(), v);
        };
        put("format", FORMAT.into());
        put("format_version", FORMAT_VERSION.into());
        put("kind", self.kind.name().into());
        put("task", self.task.name().into());
        if let Some(r) = self.r {
            put("r", r.to_string());
        }
        if let Some(ar) = self.ar {
            put("ar", ar.to_string());
        }
        put("activation", self.activation.name().into());
        if self.kind == Kind::Lora {
            put(
                "lora_alpha",
                format_f64(self.lora_alpha.unwrap_or(self.r.unwrap_or(1) as f64)),
            );
            let t: Vec<&str> = self.lora_targets.iter().map(|s| s.name()).collect();
            put("lora_targets", t.join(","));
            if let Some(layers) = &self.lora_layers {
                let l: Vec<String> = layers.iter().map(|l| l.to_string()).collect();
                put("lora_layers", l.join(","));
            }
            if self.lora_rslora {
                put("lora_rslora", "true".into());
            }
        }
        if let Some(p) = self.pooling {
            put("pooling", p.to_string());
        }
        if let Some(n) = self.normalize {
            put("normalize", n.to_string());
        }
        if let Some(b) = &self.backbone {
            put("backbone", b.clone());
        }
        m
    }
}

fn parse_bool(m: &BTreeMap<String, String>, key: &str) -> Result<Option<bool>> {
    match m.get(key).map(|s| s.as_str()) {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(other) => Err(meta_err(key, format!("`{other}` is not `true` or `false`"))),
    }
}

/// Shortest decimal that reads back to the same f64 (`16` rather than `16.0`).
fn format_f64(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}
