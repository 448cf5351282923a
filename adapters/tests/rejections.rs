//! Every way an adapter file can be wrong is refused as a whole, with an error naming
//! the first fault; the registry is left exactly as it was.

mod common;

use std::collections::BTreeMap;

use aside_adapters::testing::random_adapter;
use aside_adapters::{format, Kind, Meta, Registry, RegistryOptions, Task};
use aside_backbone::candle_core::{DType, Device, Tensor};
use common::*;

fn valid(b: &aside_backbone::Backbone) -> (BTreeMap<String, String>, BTreeMap<String, Tensor>) {
    let mut meta = Meta::new(Kind::IaaL, Task::Retrieval);
    meta.r = Some(4);
    meta.ar = Some(3);
    meta.backbone = Some(b.sha256().to_owned());
    let a = random_adapter(&meta, &dims(b), b.bert(), 3);
    (meta.to_map(), a.tensors().clone())
}

fn bytes(meta: &BTreeMap<String, String>, t: &BTreeMap<String, Tensor>) -> Vec<u8> {
    format::write_tensors(meta, t).unwrap()
}

fn refuse(b: &aside_backbone::Backbone, file: &[u8], want: &str) {
    let err = format::read_adapter(file, &dims(b), 1 << 20)
        .err()
        .unwrap_or_else(|| panic!("accepted a file that should fail with `{want}`"))
        .to_string();
    assert!(err.contains(want), "error `{err}` should contain `{want}`");
}

#[test]
fn tensor_faults_are_named() {
    let (_d, b) = tiny();
    let (meta, t) = valid(&b);
    assert!(format::read_adapter(&bytes(&meta, &t), &dims(&b), 1 << 20).is_ok());

    let mut x = t.clone();
    x.remove("aside.1.up.bias");
    refuse(&b, &bytes(&meta, &x), "missing tensor `aside.1.up.bias`");

    let mut x = t.clone();
    x.insert(
        "aside.7.up.bias".into(),
        Tensor::zeros(32, DType::F32, &Device::Cpu).unwrap(),
    );
    refuse(
        &b,
        &bytes(&meta, &x),
        "unexpected tensor `aside.7.up.bias`: layer 7 does not exist",
    );

    let mut x = t.clone();
    x.insert(
        "head.weight".into(),
        Tensor::zeros((1, 32), DType::F32, &Device::Cpu).unwrap(),
    );
    refuse(&b, &bytes(&meta, &x), "a head belongs only to task rerank");

    let mut x = t.clone();
    x.insert(
        "inner.0.attn.down.weight".into(),
        Tensor::zeros((4, 31), DType::F32, &Device::Cpu).unwrap(),
    );
    refuse(
        &b,
        &bytes(&meta, &x),
        "tensor `inner.0.attn.down.weight` has shape [4, 31], expected [4, 32]",
    );

    let mut x = t.clone();
    let mut v3 = vec![0.1f32; 3];
    v3[2] = f32::INFINITY;
    x.insert(
        "aside.0.down.bias".into(),
        Tensor::from_vec(v3, 3, &Device::Cpu).unwrap(),
    );
    refuse(
        &b,
        &bytes(&meta, &x),
        "tensor `aside.0.down.bias` is not finite: element 2 is inf",
    );
}

#[test]
fn metadata_faults_are_named() {
    let (_d, b) = tiny();
    let (meta, t) = valid(&b);
    let with = |k: &str, v: Option<&str>| {
        let mut m = meta.clone();
        match v {
            Some(v) => m.insert(k.into(), v.into()),
            None => m.remove(k),
        };
        bytes(&m, &t)
    };
    refuse(
        &b,
        &with("kind", Some("prefix-tuning")),
        "unknown kind `prefix-tuning`",
    );
    refuse(
        &b,
        &with("format", None),
        "metadata `format`: required key is missing",
    );
    refuse(
        &b,
        &with("format_version", Some("2")),
        "this server reads version 1",
    );
    refuse(
        &b,
        &with("task", Some("classify")),
        "unknown task `classify`",
    );
    refuse(
        &b,
        &with("activation", Some("softplus")),
        "unknown activation `softplus`",
    );
    refuse(
        &b,
        &with("r", Some("0")),
        "metadata `r`: `0` is not a positive decimal integer",
    );
    // Ranks that contradict the tensors.
    refuse(
        &b,
        &with("r", Some("5")),
        "tensor `inner.0.attn.down.bias` has shape [4], expected [5]",
    );
    refuse(
        &b,
        &with("ar", None),
        "metadata `ar`: required for kind iaa-l",
    );
    refuse(
        &b,
        &with("lora_alpha", Some("4")),
        "metadata `lora_alpha`: does not apply to kind iaa-l",
    );
    refuse(
        &b,
        &with("normalize", Some("yes")),
        "`yes` is not `true` or `false`",
    );
    // A file made for another backbone.
    refuse(
        &b,
        &with("backbone", Some(&"ab".repeat(32))),
        "adapter was trained on backbone abab",
    );
    // A houlsby file that claims an aside rank.
    let mut m = meta.clone();
    m.insert("kind".into(), "houlsby".into());
    refuse(
        &b,
        &bytes(&m, &t),
        "metadata `ar`: does not apply to kind houlsby",
    );
}

#[test]
fn a_header_naming_a_tensor_twice_is_refused() {
    let (_d, b) = tiny();
    let (meta, t) = valid(&b);
    let file = bytes(&meta, &t);
    let n = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&file[8..8 + n]).unwrap().trim_end();
    let v: serde_json::Value = serde_json::from_str(header).unwrap();
    let (name, entry) = v
        .as_object()
        .unwrap()
        .iter()
        .find(|(k, _)| *k != "__metadata__")
        .unwrap();
    // The same entry twice: a JSON map would keep one and hide the other.
    let twice = format!(
        "{{{}:{entry},{}}}",
        serde_json::to_string(name).unwrap(),
        &header[1..]
    );
    let mut out = (twice.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(twice.as_bytes());
    out.extend_from_slice(&file[8 + n..]);
    refuse(&b, &out, &format!("the header names `{name}` twice"));
}

#[test]
fn bitfit_files_may_hold_any_subset_of_the_biases() {
    let (_d, b) = tiny();
    let mut meta = Meta::new(Kind::Bitfit, Task::Retrieval);
    meta.backbone = Some(b.sha256().to_owned());
    let a = random_adapter(&meta, &dims(&b), b.bert(), 3);
    let m = meta.to_map();
    let all = a.tensors().clone();
    let keep = |f: &dyn Fn(&str) -> bool| -> BTreeMap<String, Tensor> {
        all.iter()
            .filter(|(n, _)| f(n))
            .map(|(n, t)| (n.clone(), t.clone()))
            .collect()
    };
    // Only the encoder layers' biases; only query and intermediate biases.
    for subset in [
        keep(&|n| n.contains("encoder.layer") && n.ends_with(".bias")),
        keep(&|n| n.ends_with("query.bias") || n.ends_with("intermediate.dense.bias")),
    ] {
        assert!(!subset.is_empty() && subset.len() < all.len());
        let got = format::read_adapter(&bytes(&m, &subset), &dims(&b), 1 << 20).unwrap();
        assert_eq!(got.tensors().len(), subset.len());
    }
    // Nothing at all, an unknown name, a wrong shape: refused.
    refuse(&b, &bytes(&m, &BTreeMap::new()), "missing tensor `bitfit.");
    let mut unknown = keep(&|n| n.ends_with("query.bias"));
    let t = unknown.values().next().unwrap().clone();
    unknown.insert("bitfit.encoder.layer.0.nothing.bias".into(), t);
    refuse(
        &b,
        &bytes(&m, &unknown),
        "bitfit.encoder.layer.0.nothing.bias",
    );
    let mut shape = keep(&|n| n.ends_with("query.bias"));
    let name = shape.keys().next().unwrap().clone();
    shape.insert(
        name.clone(),
        Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
    );
    refuse(&b, &bytes(&m, &shape), &name);
}

#[test]
fn a_huge_lora_layer_list_is_refused_at_once() {
    let (_d, b) = tiny();
    let mut meta = Meta::new(Kind::Lora, Task::Retrieval);
    meta.r = Some(2);
    meta.lora_targets = vec![aside_backbone::Site::Query];
    meta.backbone = Some(b.sha256().to_owned());
    let a = random_adapter(&meta, &dims(&b), b.bert(), 3);
    let mut m = meta.to_map();
    let t = a.tensors().clone();
    // 100,000 entries (a quadratic duplicate check spent seconds on such lists).
    let many: Vec<String> = (0..100_000).map(|i: usize| i.to_string()).collect();
    m.insert("lora_layers".into(), many.join(","));
    refuse(
        &b,
        &bytes(&m, &t),
        "metadata `lora_layers`: more than 1024 entries",
    );
    // A layer the backbone lacks, and a duplicate, are named.
    m.insert("lora_layers".into(), "0,7".into());
    refuse(&b, &bytes(&m, &t), "layer 7 does not exist");
    m.insert("lora_layers".into(), "1,1".into());
    refuse(&b, &bytes(&m, &t), "layer 1 is listed twice");
}

#[test]
fn a_file_for_a_wider_backbone_does_not_fit() {
    let (_d, b) = tiny();
    let (meta, t) = valid(&b);
    let wide: BTreeMap<String, Tensor> = t
        .iter()
        .map(|(k, v)| {
            let dims: Vec<usize> = v
                .dims()
                .iter()
                .map(|&x| if x == 32 { 384 } else { x })
                .collect();
            (
                k.clone(),
                Tensor::zeros(dims, DType::F32, &Device::Cpu).unwrap(),
            )
        })
        .collect();
    refuse(
        &b,
        &bytes(&meta, &wide),
        "the loaded backbone's hidden size is 32",
    );
}

#[test]
fn container_faults_are_named() {
    let (_d, b) = tiny();
    let (meta, t) = valid(&b);
    let good = bytes(&meta, &t);
    refuse(&b, &good[..5], "file is truncated: 5 bytes");
    refuse(&b, &good[..200], "the header claims");
    refuse(
        &b,
        &good[..good.len() - 4],
        "do not end where the file ends",
    );
    let mut extra = good.clone();
    extra.extend_from_slice(&[0, 0, 0, 0]);
    refuse(&b, &extra, "do not end where the file ends");
    let err = format::read_adapter(&good, &dims(&b), 100)
        .unwrap_err()
        .to_string();
    assert!(err.contains("file is too large"), "{err}");
    // A header that lies about a tensor's offsets.
    let n = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(good[8..8 + n].to_vec()).unwrap();
    let lied = header.replacen("\"data_offsets\":[0,", "\"data_offsets\":[4,", 1);
    assert_ne!(lied, header);
    let mut bad = good[..8].to_vec();
    bad.extend_from_slice(lied.as_bytes());
    bad.extend_from_slice(&good[8 + n..]);
    refuse(&b, &bad, "offsets");
    refuse(
        &b,
        b"\x02\x00\x00\x00\x00\x00\x00\x00[]",
        "not a valid safetensors file",
    );
    // Integer tensors are not accepted.
    let mut x = t.clone();
    x.insert(
        "aside.0.down.bias".into(),
        Tensor::zeros(3, DType::I64, &Device::Cpu).unwrap(),
    );
    let mut raw: Vec<(String, Vec<u8>, Vec<usize>, safetensors::Dtype)> = Vec::new();
    for (k, v) in &x {
        let (bytes, dt) = if v.dtype() == DType::I64 {
            (vec![0u8; 24], safetensors::Dtype::I64)
        } else {
            let f = v.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (
                f.iter().flat_map(|x| x.to_le_bytes()).collect(),
                safetensors::Dtype::F32,
            )
        };
        raw.push((k.clone(), bytes, v.dims().to_vec(), dt));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = raw
        .iter()
        .map(|(k, b, s, dt)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(*dt, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let m: std::collections::HashMap<String, String> = meta.clone().into_iter().collect();
    let file = safetensors::serialize(views, Some(m)).unwrap();
    refuse(&b, &file, "tensor `aside.0.down.bias` has dtype I64");
}

#[test]
fn half_precision_files_are_converted() {
    let (_d, b) = tiny();
    let (meta, t) = valid(&b);
    let a32 = format::read_adapter(&bytes(&meta, &t), &dims(&b), 1 << 20).unwrap();
    let mut raw = Vec::new();
    for (k, v) in &t {
        let h = v
            .to_dtype(DType::BF16)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<half::bf16>()
            .unwrap();
        raw.push((
            k.clone(),
            h.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(),
            v.dims().to_vec(),
        ));
    }
    let views: Vec<_> = raw
        .iter()
        .map(|(k, b, s)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    let m: std::collections::HashMap<String, String> = meta.into_iter().collect();
    let file = safetensors::serialize(views, Some(m)).unwrap();
    let a16 = format::read_adapter(&file, &dims(&b), 1 << 20).unwrap();
    let x = embed(&b, Some(&a32), &["hello world"]);
    let y = embed(&b, Some(&a16), &["hello world"]);
    assert!(cos(&x[0], &y[0]) > 0.999);
}

#[test]
fn a_refused_upload_leaves_the_registry_unchanged() {
    let (_d, b) = tiny();
    let store = tempfile::tempdir().unwrap();
    let reg = Registry::open(store.path(), dims(&b), RegistryOptions::default()).unwrap();
    let (meta, t) = valid(&b);
    let first = reg.put("task-a", &bytes(&meta, &t)).unwrap().info().clone();
    let listing = |p: &std::path::Path| {
        let mut v: Vec<_> = walk(p);
        v.sort();
        v
    };
    let before = listing(store.path());
    let mut x = t.clone();
    x.remove("aside.0.up.weight");
    for bad in [bytes(&meta, &x), b"garbage".to_vec(), Vec::new()] {
        assert!(reg.put("task-a", &bad).is_err());
    }
    assert!(
        reg.put("../escape", &bytes(&meta, &t)).is_err(),
        "bad names are refused"
    );
    assert_eq!(reg.current_info("task-a").unwrap(), first);
    assert_eq!(reg.list().len(), 1);
    assert_eq!(listing(store.path()), before, "nothing written on disk");
}

fn walk(p: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push((
                e.path().display().to_string(),
                std::fs::read(e.path()).unwrap(),
            ));
        }
    }
    out
}
