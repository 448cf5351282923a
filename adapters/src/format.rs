//! The native file format: one safetensors file with `__metadata__` (method.md).
//! Reading is strict and total: the whole file is checked before anything is built.

use std::collections::{BTreeMap, HashMap};

use aside_backbone::candle_core::{DType, Device, Tensor};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::adapter::Adapter;
use crate::error::{AdapterError, Result};
use crate::layout::Dims;
use crate::spec::Meta;

/// Default upper bound on an adapter file's size.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 256 << 20;

/// Parses and validates a native adapter file against a backbone.
pub fn read_adapter(bytes: &[u8], dims: &Dims, max_bytes: u64) -> Result<Adapter> {
    let (meta, tensors) = read_tensors(bytes, max_bytes)?;
    let meta = Meta::parse(&meta)?;
    Adapter::from_tensors(meta, tensors, dims)
}

/// Checks the container (size, header, offsets, dtypes) and returns the raw
/// metadata and the tensors as F32.
pub fn read_tensors(
    bytes: &[u8],
    max_bytes: u64,
) -> Result<(BTreeMap<String, String>, BTreeMap<String, Tensor>)> {
    let size = bytes.len() as u64;
    if size > max_bytes {
        return Err(AdapterError::Oversized {
            size,
            limit: max_bytes,
        });
    }
    if bytes.len() < 8 {
        return Err(AdapterError::Truncated(format!(
            "{size} bytes, but a safetensors file starts with an 8-byte header length"
        )));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    if n > size - 8 {
        return Err(AdapterError::Truncated(format!(
            "the header claims {n} bytes but only {} follow",
            size - 8
        )));
    }
    if let Some(name) = duplicate_key(&bytes[8..8 + n as usize]) {
        return Err(AdapterError::Format(format!(
            "the header names `{name}` twice"
        )));
    }
    let st = SafeTensors::deserialize(bytes).map_err(|e| describe(e, bytes))?;
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| describe(e, bytes))?;
    let meta: BTreeMap<String, String> = header
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let mut tensors = BTreeMap::new();
    for (name, view) in st.tensors() {
        tensors.insert(name.clone(), to_tensor(&name, &view)?);
    }
    Ok((meta, tensors))
}

/// The first key a JSON header object (or its `__metadata__` object) holds twice:
/// a JSON map keeps only the last of them, so such a file means two things.
fn duplicate_key(header: &[u8]) -> Option<String> {
    use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
    struct Keys {
        prefix: &'static str,
    }
    impl<'de> Visitor<'de> for Keys {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
            let mut seen = std::collections::HashSet::new();
            let mut dup = None;
            while let Some(k) = m.next_key::<String>()? {
                if k == "__metadata__" && self.prefix.is_empty() {
                    let inner = m.next_value_seed(Keys {
                        prefix: "__metadata__.",
                    })?;
                    dup = dup.or(inner);
                } else {
                    m.next_value::<IgnoredAny>()?;
                }
                if !seen.insert(k.clone()) && dup.is_none() {
                    dup = Some(format!("{}{k}", self.prefix));
                }
            }
            Ok(dup)
        }
    }
    impl<'de> DeserializeSeed<'de> for Keys {
        type Value = Option<String>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(header);
    Keys { prefix: "" }.deserialize(&mut de).ok().flatten()
}

fn describe(e: safetensors::SafeTensorError, bytes: &[u8]) -> AdapterError {
    use safetensors::SafeTensorError as E;
    match e {
        E::MetadataIncompleteBuffer => {
            AdapterError::Truncated(format!(
                "the header's offsets do not end where the file ends ({} bytes)",
                bytes.len()
            ))
        }
        E::InvalidOffset(name) => AdapterError::Format(format!(
            "the header gives tensor `{name}` offsets that do not match its shape and dtype or overlap another tensor"
        )),
        other => AdapterError::Format(other.to_string()),
    }
}

fn to_tensor(name: &str, v: &TensorView<'_>) -> Result<Tensor> {
    let dtype = match v.dtype() {
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        other => {
            return Err(AdapterError::WrongDtype {
                name: name.to_owned(),
                dtype: format!("{other:?}"),
            })
        }
    };
    let t = Tensor::from_raw_buffer(v.data(), dtype, v.shape(), &Device::Cpu)?;
    Ok(t.to_dtype(DType::F32)?)
}

/// Serialises tensors with metadata into a safetensors file's bytes (F32).
pub fn write_tensors(
    meta: &BTreeMap<String, String>,
    tensors: &BTreeMap<String, Tensor>,
) -> Result<Vec<u8>> {
    let mut data: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        data.push((name.clone(), bytes, t.dims().to_vec()));
    }
    let views: Vec<(String, TensorView<'_>)> = data
        .iter()
        .map(|(n, b, s)| {
            TensorView::new(Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| AdapterError::Format(e.to_string()))
        })
        .collect::<Result<_>>()?;
    let meta: HashMap<String, String> = meta.clone().into_iter().collect();
    safetensors::serialize(views, Some(meta)).map_err(|e| AdapterError::Format(e.to_string()))
}

/// The native file of an adapter.
pub fn write_adapter(a: &Adapter) -> Result<Vec<u8>> {
    write_tensors(&a.meta().to_map(), a.tensors())
}
