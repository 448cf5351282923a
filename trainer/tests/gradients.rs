//! Finite-difference checks of the gradients training relies on, for every adapter
//! kind (and full fine-tuning) on the tiny BERT: the analytic gradient of a smooth
//! loss must match central differences for sampled elements of every trainable tensor.

use std::collections::BTreeMap;

use aside_adapters::testing::test_metas;
use aside_adapters::{Activation, Adapter, Dims, Meta, Task};
use aside_backbone::candle_core::{Device, Tensor, Var};
use aside_backbone::testing::{Rng, TinyBert};
use aside_backbone::{pooling, Backbone, Bert, Group, Hooks, Input, LoadOptions, Mode, Pooling};

fn tiny() -> (tempfile::TempDir, Backbone) {
    let dir = tempfile::tempdir().unwrap();
    TinyBert::default().write(dir.path()).unwrap();
    let b = Backbone::load(dir.path(), &LoadOptions::default()).unwrap();
    (dir, b)
}

const TEXTS: [&str; 3] = [
    "the cell is a protein",
    "hello world 42",
    "cancer gene of x",
];

/// A smooth scalar of the model's outputs: pooled (normalised) vectors against fixed
/// random directions (retrieval), or the head's scores of pairs (rerank).
fn loss(b: &Backbone, bert: &Bert, hooks: Option<&dyn Hooks>, a: Option<&Adapter>) -> Tensor {
    let task = a.map_or(Task::Retrieval, |a| a.task());
    let inputs: Vec<Input<'_>> = match task {
        Task::Retrieval => TEXTS.iter().map(|t| Input::Single(t)).collect(),
        Task::Rerank => TEXTS.iter().map(|t| Input::Pair("a cell", t)).collect(),
    };
    let enc = b.tokens().encode(&inputs, 24).unwrap();
    let refs: Vec<_> = enc.iter().collect();
    let batch = b.pad(&refs).unwrap();
    let groups = [Group {
        rows: 0..refs.len(),
        hooks,
    }];
    let h = bert.forward(&batch, &groups, Mode::Train).unwrap();
    match task {
        Task::Retrieval => {
            let p = a.map_or(b.pooling(), |a| a.pooling(b.pooling()));
            let mut v = pooling::pool(&h, &batch.attention_mask, p.pooling).unwrap();
            if p.normalize {
                v = pooling::l2_normalize(&v).unwrap();
            }
            let mut rng = Rng::new(5);
            let r = Tensor::from_vec(
                rng.normals(v.elem_count(), 1.0, 0.0),
                v.dims(),
                &Device::Cpu,
            )
            .unwrap();
            (v * r).unwrap().sum_all().unwrap()
        }
        Task::Rerank => {
            let v = pooling::pool(&h, &batch.attention_mask, Pooling::Cls).unwrap();
            let s = a.unwrap().head_scores(&v).unwrap().unwrap();
            let w = Tensor::new(&[0.7f32, -1.3, 0.4], &Device::Cpu).unwrap();
            (s * w).unwrap().sum_all().unwrap()
        }
    }
}

fn scalar(t: &Tensor) -> f64 {
    t.to_scalar::<f32>().unwrap() as f64
}

/// Compares analytic and numeric gradients for `samples` elements of each variable.
fn check(label: &str, vars: &[(String, Var)], samples: usize, f: &dyn Fn() -> Tensor) {
    let grads = f().backward().unwrap();
    let mut rng = Rng::new(11);
    let mut checked = 0;
    for (name, var) in vars {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{label}: no gradient reaches {name}"))
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let base = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for _ in 0..samples.min(base.len()) {
            let i = (rng.next_u64() % base.len() as u64) as usize;
            let eps = 1e-2f32;
            let at = |delta: f32| {
                let mut v = base.clone();
                v[i] += delta;
                var.set(&Tensor::from_vec(v, var.dims(), &Device::Cpu).unwrap())
                    .unwrap();
                scalar(&f())
            };
            let numeric = (at(eps) - at(-eps)) / (2.0 * eps as f64);
            var.set(&Tensor::from_vec(base.clone(), var.dims(), &Device::Cpu).unwrap())
                .unwrap();
            let analytic = g[i] as f64;
            let tol = 2e-2 * analytic.abs().max(numeric.abs()) + 2e-3;
            assert!(
                (analytic - numeric).abs() <= tol,
                "{label}: d/d {name}[{i}] analytic {analytic} vs numeric {numeric}"
            );
            checked += 1;
        }
    }
    assert!(checked > 0, "{label}: nothing checked");
}

/// An adapter whose tensors are random variables (every path active, unlike a fresh
/// adapter whose up-projections are zero).
fn var_adapter(b: &Backbone, meta: &Meta, seed: u64) -> (Adapter, Vec<(String, Var)>) {
    let dims = Dims::of(b);
    let random = aside_adapters::testing::random_adapter(meta, &dims, b.bert(), seed);
    let mut vars = Vec::new();
    let mut tensors = BTreeMap::new();
    for (name, t) in random.tensors() {
        let v = Var::from_tensor(t).unwrap();
        tensors.insert(name.clone(), v.as_tensor().clone());
        vars.push((name.clone(), v));
    }
    (
        Adapter::from_tensors(meta.clone(), tensors, &dims).unwrap(),
        vars,
    )
}

#[test]
fn every_adapter_kind_has_the_gradients_of_its_forward() {
    let (_d, b) = tiny();
    for (i, (label, mut meta)) in test_metas(b.sha256()).into_iter().enumerate() {
        // ReLU's kink makes central differences unreliable where a pre-activation is
        // within ε of zero; the smooth activations check the same paths exactly.
        if meta.activation == Activation::Relu {
            meta.activation = Activation::Gelu;
        }
        let (a, vars) = var_adapter(&b, &meta, 40 + i as u64);
        check(label, &vars, 3, &|| loss(&b, b.bert(), Some(&a), Some(&a)));
    }
}

#[test]
fn full_fine_tuning_has_the_gradients_of_its_forward() {
    let (_d, b) = tiny();
    let (bert, vars) = b.bert().trainable().unwrap();
    // The word embeddings: only rows of tokens in the texts get a gradient, so sample
    // from the other tensors and check the embedding rows of one used token.
    let dense: Vec<(String, Var)> = vars
        .iter()
        .filter(|(n, _)| !n.contains("word_embeddings"))
        .cloned()
        .collect();
    check("full", &dense, 1, &|| loss(&b, &bert, None, None));
    let before = loss(&b, &bert, None, None);
    let grads = before.backward().unwrap();
    let (_, word) = vars
        .iter()
        .find(|(n, _)| n.contains("word_embeddings"))
        .unwrap();
    let g = grads
        .get(word.as_tensor())
        .expect("word embedding gradient");
    let norm = scalar(&g.sqr().unwrap().sum_all().unwrap());
    assert!(norm > 0.0, "no gradient on the word embeddings");
}

#[test]
fn frozen_backbone_weights_get_no_gradient_when_training_an_adapter() {
    let (_d, b) = tiny();
    let meta = test_metas(b.sha256())
        .into_iter()
        .find(|(l, _)| *l == "iaa-l")
        .unwrap()
        .1;
    let (a, vars) = var_adapter(&b, &meta, 3);
    let l = loss(&b, b.bert(), Some(&a), Some(&a));
    let grads = l.backward().unwrap();
    for (name, v) in &vars {
        assert!(grads.get(v.as_tensor()).is_some(), "{name} has no gradient");
    }
    for (name, t) in b.bert().named_tensors().unwrap() {
        assert!(grads.get(&t).is_none(), "frozen {name} got a gradient");
    }
}
