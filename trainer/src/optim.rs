//! AdamW with linear warm-up and linear decay, and global-norm gradient clipping.
//! Written here rather than taken from candle-nn so that its moments can be saved in
//! a checkpoint and restored exactly.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

/// AdamW settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// One trainable tensor and its two moments.
pub struct Slot {
    pub name: String,
    pub var: Var,
    pub m: Tensor,
    pub v: Tensor,
    /// This tensor's learning rate relative to the schedule's (1 for all but a
    /// rerank head given its own rate).
    pub lr_scale: f64,
}

/// AdamW over named variables (decoupled weight decay, bias-corrected moments).
pub struct AdamW {
    pub config: AdamWConfig,
    pub slots: Vec<Slot>,
    /// Updates done so far.
    pub step: usize,
}

impl AdamW {
    pub fn new(vars: Vec<(String, Var)>, config: AdamWConfig) -> candle_core::Result<Self> {
        let slots = vars
            .into_iter()
            .map(|(name, var)| {
                let z = var.as_tensor().zeros_like()?;
                Ok(Slot {
                    name,
                    m: z.clone(),
                    v: z,
                    var,
                    lr_scale: 1.0,
                })
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(AdamW {
            config,
            slots,
            step: 0,
        })
    }

    /// Scales the learning rate of the tensors whose names start with `prefix`.
    pub fn scale_lr(&mut self, prefix: &str, scale: f64) {
        self.slots
            .iter_mut()
            .filter(|s| s.name.starts_with(prefix))
            .for_each(|s| s.lr_scale = scale);
    }

    /// Trainable parameters in all.
    pub fn param_count(&self) -> usize {
        self.slots.iter().map(|s| s.var.elem_count()).sum()
    }

    /// One update at learning rate `lr` from the gradients in `grads` (a variable
    /// without a gradient, e.g. one the loss does not reach, is left as it is).
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> candle_core::Result<()> {
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        for s in &mut self.slots {
            let Some(g) = grads.get(s.var.as_tensor()) else {
                continue;
            };
            s.m = ((&s.m * c.beta1)? + (g * (1.0 - c.beta1))?)?;
            s.v = ((&s.v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let mhat = (&s.m / bc1)?;
            let vhat = (&s.v / bc2)?;
            let update = (mhat / (vhat.sqrt()? + c.eps)?)?;
            let lr = lr * s.lr_scale;
            let w = s.var.as_tensor().detach();
            let decayed = (&w * (1.0 - lr * c.weight_decay))?;
            s.var.set(&(decayed - (update * lr)?)?)?;
        }
        Ok(())
    }
}

/// The global L2 norm of the gradients of `vars`; when it exceeds `max_norm` (> 0),
/// every gradient is scaled down so that it equals `max_norm`. Returns the norm
/// before clipping.
pub fn clip_grad_norm(
    grads: &mut GradStore,
    vars: &[&Var],
    max_norm: f64,
) -> candle_core::Result<f64> {
    let mut sq = 0f64;
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
    }
    let norm = sq.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let f = max_norm / (norm + 1e-6);
        for v in vars {
            if let Some(g) = grads.remove(v.as_tensor()) {
                grads.insert(v.as_tensor(), (g * f)?);
            }
        }
    }
    Ok(norm)
}

/// Linear warm-up over `warmup` steps to `peak`, then linear decay to 0 at `total`.
pub fn lr_at(step: usize, total: usize, warmup: usize, peak: f64) -> f64 {
    if warmup > 0 && step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let rest = total.saturating_sub(warmup).max(1);
    let done = step.saturating_sub(warmup);
    peak * (1.0 - done as f64 / rest as f64).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        assert!((lr_at(0, 100, 10, 1.0) - 0.1).abs() < 1e-12);
        assert!((lr_at(9, 100, 10, 1.0) - 1.0).abs() < 1e-12);
        assert!((lr_at(10, 100, 10, 1.0) - 1.0).abs() < 1e-12);
        assert!((lr_at(55, 100, 10, 1.0) - 0.5).abs() < 1e-12);
        assert_eq!(lr_at(100, 100, 10, 1.0), 0.0);
        assert!((lr_at(0, 10, 0, 2.0) - 2.0).abs() < 1e-12);
    }

    #[test]
    fn adamw_minimises_a_quadratic_and_clipping_bounds_the_norm() {
        let dev = candle_core::Device::Cpu;
        let x = Var::from_vec(vec![3f32, -2.0], 2, &dev).unwrap();
        let mut opt = AdamW::new(
            vec![("x".into(), x.clone())],
            AdamWConfig {
                lr: 0.1,
                weight_decay: 0.0,
                ..Default::default()
            },
        )
        .unwrap();
        for _ in 0..300 {
            let loss = x.as_tensor().sqr().unwrap().sum_all().unwrap();
            let mut g = loss.backward().unwrap();
            let n = clip_grad_norm(&mut g, &[&x], 1.0).unwrap();
            assert!(n >= 0.0);
            let clipped = g
                .get(x.as_tensor())
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap();
            assert!(clipped.to_scalar::<f32>().unwrap() <= 1.0 + 1e-4);
            opt.step(&g, 0.1).unwrap();
        }
        let v = x.as_tensor().to_vec1::<f32>().unwrap();
        assert!(v.iter().all(|a| a.abs() < 0.05), "{v:?}");
    }
}
