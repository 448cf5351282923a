//! Hugging Face PEFT LoRA folders (`adapter_config.json` + `adapter_model.safetensors`)
//! converted to the native form. Keys may carry `base_model.model.` and `bert.`.
//! Per-module ranks and alphas (`rank_pattern`, `alpha_pattern`) are folded in: every
//! module is zero-padded to the largest rank and its scale is baked into `B`, so the
//! native file has one `r` and computes exactly what PEFT computes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use aside_backbone::candle_core::{Device, Tensor};
use aside_backbone::Site;
use serde::Deserialize;

use crate::error::{AdapterError, Result};
use crate::format::read_tensors;
use crate::layout::Dims;
use crate::spec::{Kind, Meta, Task};

#[derive(Debug, Deserialize)]
struct PeftConfig {
    #[serde(default)]
    peft_type: Option<String>,
    r: usize,
    #[serde(default)]
    lora_alpha: Option<f64>,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    target_modules: Option<serde_json::Value>,
    #[serde(default)]
    layers_to_transform: Option<serde_json::Value>,
    #[serde(default)]
    rank_pattern: BTreeMap<String, usize>,
    #[serde(default)]
    alpha_pattern: BTreeMap<String, f64>,
    #[serde(default)]
    bias: Option<String>,
    #[serde(default)]
    fan_in_fan_out: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    lora_bias: bool,
    #[serde(default)]
    modules_to_save: Option<serde_json::Value>,
}

fn err(m: impl Into<String>) -> AdapterError {
    AdapterError::Peft(m.into())
}

/// Where a PEFT key points: layer, site, and whether it is `lora_A` or `lora_B`.
fn parse_key(key: &str) -> Result<(String, usize, Site, bool)> {
    let k = key.strip_prefix("base_model.model.").unwrap_or(key);
    let k = k.strip_prefix("bert.").unwrap_or(k);
    let (module, is_a) = if let Some(m) = k.strip_suffix(".lora_A.weight") {
        (m, true)
    } else if let Some(m) = k.strip_suffix(".lora_B.weight") {
        (m, false)
    } else {
        return Err(err(format!(
            "tensor `{key}` is not a LoRA A/B weight (only LoRA without trained biases or extra modules is supported)"
        )));
    };
    let rest = module
        .strip_prefix("encoder.layer.")
        .ok_or_else(|| err(format!("tensor `{key}` is not inside an encoder layer")))?;
    let (l, tail) = rest
        .split_once('.')
        .ok_or_else(|| err(format!("tensor `{key}` has no layer index")))?;
    let layer: usize = l
        .parse()
        .map_err(|_| err(format!("tensor `{key}`: `{l}` is not a layer index")))?;
    let site = Site::ALL
        .into_iter()
        .find(|s| s.tensor_prefix(layer) == format!("encoder.layer.{layer}.{tail}"))
        .ok_or_else(|| {
            err(format!(
                "tensor `{key}` targets `{tail}`, which is not a BERT linear"
            ))
        })?;
    Ok((module.to_owned(), layer, site, is_a))
}

/// PEFT's pattern lookup: a key matches a module whose name ends with it (as a regex).
fn pattern_value<T: Copy>(patterns: &BTreeMap<String, T>, module: &str) -> Result<Option<T>> {
    for (pat, v) in patterns {
        let re = regex::Regex::new(&format!(r"^(?:.*\.)?(?:{pat})$"))
            .map_err(|e| err(format!("pattern `{pat}` is not a valid regex: {e}")))?;
        if re.is_match(module) {
            return Ok(Some(*v));
        }
    }
    Ok(None)
}

/// Whether PEFT's `target_modules` selects `module`: a list matches a module whose
/// name is or ends with `.{entry}`; a string is a regex over the full name.
fn targeted(targets: Option<&serde_json::Value>, module: &str) -> Result<bool> {
    match targets {
        None | Some(serde_json::Value::Null) => Ok(true),
        Some(serde_json::Value::String(s)) if s == "all-linear" => Ok(true),
        Some(serde_json::Value::String(s)) => {
            let re = regex::Regex::new(&format!("^(?:{s})$"))
                .map_err(|e| err(format!("target_modules `{s}` is not a valid regex: {e}")))?;
            Ok(re.is_match(module))
        }
        Some(serde_json::Value::Array(items)) => Ok(items
            .iter()
            .filter_map(|v| v.as_str())
            .any(|t| module == t || module.ends_with(&format!(".{t}")))),
        Some(other) => Err(err(format!(
            "target_modules {other} is neither a list nor a string"
        ))),
    }
}

/// Converts a PEFT LoRA folder to native metadata and tensors (validated against `dims`).
pub fn convert_dir(dir: &Path, dims: &Dims) -> Result<crate::Adapter> {
    let cfg_path = dir.join("adapter_config.json");
    let cfg = std::fs::read(&cfg_path).map_err(crate::error::io_err(&cfg_path))?;
    let weights_path = dir.join("adapter_model.safetensors");
    let weights = std::fs::read(&weights_path).map_err(crate::error::io_err(&weights_path))?;
    convert(&cfg, &weights, dims)
}

/// Converts PEFT `adapter_config.json` bytes and `adapter_model.safetensors` bytes.
pub fn convert(config_json: &[u8], weights: &[u8], dims: &Dims) -> Result<crate::Adapter> {
    convert_bounded(
        config_json,
        weights,
        dims,
        crate::format::DEFAULT_MAX_FILE_BYTES,
    )
}

/// [`convert`], refusing (before allocating it) a converted file larger than
/// `max_bytes`: padding every module to the largest `rank_pattern` rank can make a
/// small upload many times larger.
pub fn convert_bounded(
    config_json: &[u8],
    weights: &[u8],
    dims: &Dims,
    max_bytes: u64,
) -> Result<crate::Adapter> {
    let cfg: PeftConfig = serde_json::from_slice(config_json)
        .map_err(|e| err(format!("adapter_config.json: {e}")))?;
    if let Some(t) = &cfg.peft_type {
        if t != "LORA" {
            return Err(err(format!("peft_type `{t}` is not supported (only LORA)")));
        }
    }
    if cfg.use_dora {
        return Err(err("use_dora is not supported"));
    }
    if cfg.lora_bias {
        return Err(err("lora_bias is not supported (LoRA B with a bias)"));
    }
    if cfg.fan_in_fan_out {
        return Err(err(
            "fan_in_fan_out is not supported (BERT linears are not Conv1D)",
        ));
    }
    if let Some(b) = &cfg.bias {
        if b != "none" {
            return Err(err(format!("bias `{b}` is not supported (only `none`)")));
        }
    }
    if let Some(m) = &cfg.modules_to_save {
        if !m.is_null() && m.as_array().is_none_or(|a| !a.is_empty()) {
            return Err(err(format!("modules_to_save {m} is not supported")));
        }
    }
    if cfg.r == 0 {
        return Err(err("r must be positive"));
    }
    let alpha_default = cfg.lora_alpha.unwrap_or(8.0);
    let (_, raw) = read_tensors(weights, crate::format::DEFAULT_MAX_FILE_BYTES)?;

    #[allow(clippy::type_complexity)]
    let mut modules: BTreeMap<(usize, usize), (String, Option<Tensor>, Option<Tensor>)> =
        BTreeMap::new();
    for (key, t) in raw {
        let (module, layer, site, is_a) = parse_key(&key)?;
        if layer >= dims.layers {
            return Err(err(format!(
                "tensor `{key}`: layer {layer} does not exist (the backbone has {} layers)",
                dims.layers
            )));
        }
        let site_idx = Site::ALL.iter().position(|s| *s == site).expect("site");
        let m = modules
            .entry((layer, site_idx))
            .or_insert((module, None, None));
        let slot = if is_a { &mut m.1 } else { &mut m.2 };
        if slot.is_some() {
            return Err(err(format!(
                "tensor `{key}` appears twice (with and without a prefix)"
            )));
        }
        *slot = Some(t);
    }
    if modules.is_empty() {
        return Err(err("adapter_model.safetensors holds no LoRA tensors"));
    }
    if let Some(v) = &cfg.layers_to_transform {
        let allowed: Vec<usize> = match v {
            serde_json::Value::Null => (0..dims.layers).collect(),
            serde_json::Value::Number(n) => vec![n.as_u64().unwrap_or(u64::MAX) as usize],
            serde_json::Value::Array(a) => a
                .iter()
                .filter_map(|x| x.as_u64())
                .map(|x| x as usize)
                .collect(),
            other => {
                return Err(err(format!(
                    "layers_to_transform {other} is not a layer list"
                )))
            }
        };
        if let Some(((l, _), _)) = modules.iter().find(|((l, _), _)| !allowed.contains(l)) {
            return Err(err(format!(
                "layer {l} has LoRA weights but is not in layers_to_transform"
            )));
        }
    }

    // Per-module rank, alpha and scale, as PEFT computes them.
    let mut found: BTreeMap<(usize, usize), Found> = BTreeMap::new();
    for ((l, s), (module, a, b)) in modules {
        let site = Site::ALL[s];
        let a = a.ok_or_else(|| err(format!("`{module}` has lora_B but no lora_A")))?;
        let b = b.ok_or_else(|| err(format!("`{module}` has lora_A but no lora_B")))?;
        let (inp, out) = dims.linear_dims(site);
        let rank = pattern_value(&cfg.rank_pattern, &module)?.unwrap_or(cfg.r);
        if a.dims() != [rank, inp] {
            return Err(err(format!(
                "`{module}.lora_A.weight` has shape {:?}, expected [{rank}, {inp}]",
                a.dims()
            )));
        }
        if b.dims() != [out, rank] {
            return Err(err(format!(
                "`{module}.lora_B.weight` has shape {:?}, expected [{out}, {rank}]",
                b.dims()
            )));
        }
        if !targeted(cfg.target_modules.as_ref(), &module)? {
            return Err(err(format!(
                "`{module}` has LoRA weights but target_modules does not name it"
            )));
        }
        let alpha = pattern_value(&cfg.alpha_pattern, &module)?.unwrap_or(alpha_default);
        let scale = if cfg.use_rslora {
            alpha / (rank as f64).sqrt()
        } else {
            alpha / rank as f64
        };
        found.insert(
            (l, s),
            Found {
                a,
                b,
                rank,
                alpha,
                scale,
            },
        );
    }

    let first = found.values().next().expect("non-empty");
    let uniform = found
        .values()
        .all(|f| f.rank == first.rank && f.alpha == first.alpha);
    let r_max = found.values().map(|f| f.rank).max().expect("non-empty");
    let layers: BTreeSet<usize> = found.keys().map(|(l, _)| *l).collect();
    let sites: BTreeSet<usize> = found.keys().map(|(_, s)| *s).collect();

    let mut meta = Meta::new(Kind::Lora, Task::Retrieval);
    meta.r = Some(r_max);
    meta.lora_targets = sites.iter().map(|&s| Site::ALL[s]).collect();
    if layers.len() != dims.layers {
        meta.lora_layers = Some(layers.iter().copied().collect());
    }
    if uniform {
        meta.lora_alpha = Some(first.alpha);
        meta.lora_rslora = cfg.use_rslora;
    } else {
        // Scale 1 in the file; each module's own scale is baked into its B.
        meta.lora_alpha = Some(r_max as f64);
    }

    let converted: u64 = layers.len() as u64
        * sites
            .iter()
            .map(|&s| {
                let (inp, out) = dims.linear_dims(Site::ALL[s]);
                (r_max * (inp + out) * 4) as u64
            })
            .sum::<u64>();
    if converted > max_bytes {
        return Err(AdapterError::Oversized {
            size: converted,
            limit: max_bytes,
        });
    }

    let f32 = aside_backbone::candle_core::DType::F32;
    let cpu = Device::Cpu;
    let mut tensors = BTreeMap::new();
    for &l in &layers {
        for &s in &sites {
            let site = Site::ALL[s];
            let (inp, out) = dims.linear_dims(site);
            let (a, b) = match found.get(&(l, s)) {
                Some(f) => {
                    let b = if uniform {
                        f.b.clone()
                    } else {
                        (&f.b * f.scale)?
                    };
                    let pad = r_max - f.rank;
                    if pad == 0 {
                        (f.a.clone(), b)
                    } else {
                        (
                            Tensor::cat(&[&f.a, &Tensor::zeros((pad, inp), f32, &cpu)?], 0)?,
                            Tensor::cat(&[&b, &Tensor::zeros((out, pad), f32, &cpu)?], 1)?,
                        )
                    }
                }
                // A (layer, module) pair PEFT left out contributes nothing.
                None => (
                    Tensor::zeros((r_max, inp), f32, &cpu)?,
                    Tensor::zeros((out, r_max), f32, &cpu)?,
                ),
            };
            tensors.insert(format!("lora.{l}.{}.A", site.name()), a);
            tensors.insert(format!("lora.{l}.{}.B", site.name()), b);
        }
    }
    crate::Adapter::from_tensors(meta, tensors, dims)
}

struct Found {
    a: Tensor,
    b: Tensor,
    rank: usize,
    alpha: f64,
    scale: f64,
}
