//! Conversions between protobuf messages and the core's types: `Struct` ↔ JSON,
//! and each response type to its message.

use std::collections::BTreeMap;

use prost_types::value::Kind as PKind;
use serde_json::{json, Value};

use super::pb;
use crate::core::types as t;

pub fn json_to_pvalue(v: &Value) -> prost_types::Value {
    let kind = match v {
        Value::Null => PKind::NullValue(0),
        Value::Bool(b) => PKind::BoolValue(*b),
        Value::Number(n) => PKind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => PKind::StringValue(s.clone()),
        Value::Array(a) => PKind::ListValue(prost_types::ListValue {
            values: a.iter().map(json_to_pvalue).collect(),
        }),
        Value::Object(_) => PKind::StructValue(json_to_struct(v)),
    };
    prost_types::Value { kind: Some(kind) }
}

pub fn json_to_struct(v: &Value) -> prost_types::Struct {
    let fields: BTreeMap<String, prost_types::Value> = v
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), json_to_pvalue(v)))
                .collect()
        })
        .unwrap_or_default();
    prost_types::Struct { fields }
}

pub fn pvalue_to_json(v: &prost_types::Value) -> Value {
    match &v.kind {
        None | Some(PKind::NullValue(_)) => Value::Null,
        Some(PKind::BoolValue(b)) => json!(b),
        Some(PKind::NumberValue(n)) => {
            // Integers stay integers, so metadata filters compare as they do over HTTP.
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                json!(*n as i64)
            } else {
                json!(n)
            }
        }
        Some(PKind::StringValue(s)) => json!(s),
        Some(PKind::ListValue(l)) => Value::Array(l.values.iter().map(pvalue_to_json).collect()),
        Some(PKind::StructValue(s)) => struct_to_json(s),
    }
}

pub fn struct_to_json(s: &prost_types::Struct) -> Value {
    Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), pvalue_to_json(v)))
            .collect(),
    )
}

fn to_struct<T: serde::Serialize>(v: &T) -> Option<prost_types::Struct> {
    Some(json_to_struct(
        &serde_json::to_value(v).unwrap_or(Value::Null),
    ))
}

/// An empty string is "not given".
pub fn given(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// A unit enum's JSON name (`ready`, `cosine`, `hnsw_rs`, `milvus`), as the proto
/// strings carry it.
fn wire_name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

pub fn collection(c: &t::CollectionInfo) -> pb::Collection {
    pb::Collection {
        name: c.name.clone(),
        adapter: c.adapter.clone().unwrap_or_default(),
        adapter_version: c.adapter_version.clone().unwrap_or_default(),
        count: c.count as u64,
        status: wire_name(&c.status),
        metric: wire_name(&c.metric),
        dim: c.dim as u32,
        details: to_struct(c),
        backbone: c.backbone.clone(),
        hnsw: Some(pb::Hnsw {
            m: Some(c.hnsw.m as u32),
            ef_construction: Some(c.hnsw.ef_construction as u32),
            ef: Some(c.hnsw.ef as u32),
        }),
        tombstones: c.tombstones as u64,
        unindexed: c.unindexed as u64,
        engine: wire_name(&c.engine),
        lexical: c
            .lexical
            .as_ref()
            .map(|l| l.language.clone())
            .unwrap_or_default(),
        store: wire_name(&c.store),
        reembed: c.reembed.as_ref().map(|r| pb::Reembed {
            target_version: r.target_version.clone(),
            done: r.done as u64,
            total: r.total as u64,
            error: r.error.clone().unwrap_or_default(),
        }),
    }
}

pub fn adapter_info(i: &t::AdapterInfo, versions: Vec<String>) -> pb::AdapterInfo {
    pb::AdapterInfo {
        name: i.name.clone(),
        version: i.version.clone(),
        kind: i.kind.clone(),
        task: i.task.clone(),
        params: i.params as u64,
        details: to_struct(i),
        r: i.r.map(|x| x as u32),
        ar: i.ar.map(|x| x as u32),
        activation: i.activation.clone(),
        params_percent: i.params_percent,
        size_bytes: i.size_bytes,
        versions,
    }
}

pub fn hit(h: t::Hit) -> pb::Hit {
    pb::Hit {
        id: h.id,
        score: h.score,
        text: h.text,
        metadata: Some(json_to_struct(&h.metadata)),
        found_by: h.found_by.map(|f| {
            let side = |s: t::SideRank| pb::SideRank {
                rank: s.rank as u32,
                score: s.score,
            };
            pb::FoundBy {
                dense: f.dense.map(side),
                lexical: f.lexical.map(side),
            }
        }),
    }
}

pub fn hnsw(h: pb::Hnsw) -> t::HnswSpec {
    t::HnswSpec {
        m: h.m.map(|x| x as usize),
        ef_construction: h.ef_construction.map(|x| x as usize),
        ef: h.ef.map(|x| x as usize),
    }
}

pub fn search(r: pb::SearchRequest) -> Result<t::SearchRequest, crate::core::Error> {
    use crate::core::Error;
    let mode = given(r.mode)
        .map(|m| m.parse::<t::Mode>())
        .transpose()
        .map_err(|e| Error::invalid("mode", e))?;
    let fusion = r
        .fusion
        .map(|f| {
            Ok::<_, Error>(t::FusionSpec {
                method: f
                    .method
                    .parse()
                    .map_err(|e| Error::invalid("fusion.method", e))?,
                k: f.k,
                dense_weight: f.dense_weight,
            })
        })
        .transpose()?;
    Ok(t::SearchRequest {
        mode,
        fusion,
        candidates: r.candidates.map(|c| c as usize),
        query: r.query,
        k: r.k.map(|x| x as usize),
        ef: r.ef.map(|x| x as usize),
        filter: r.filter.as_ref().map(struct_to_json),
        threshold: r.threshold,
        exact: r.exact,
        rerank: r.rerank.map(|x| t::RerankSpec {
            adapter: x.adapter,
            candidates: x.candidates.map(|c| c as usize),
            fuse: x.fuse,
        }),
    })
}
