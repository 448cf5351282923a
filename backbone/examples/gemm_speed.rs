//! Speed of the frozen-linear matmuls at BERT shapes: the `gemm` crate (what the f32
//! path used before packing) against the packed f32 and bf16 kernels.
//!     cargo run --release -p aside-backbone --example gemm_speed [ROWS]
use aside_backbone::cpu::matmul::Packing as Precision;
use aside_backbone::cpu::PackedWeight;
use std::time::Instant;

fn main() {
    attention_speed();
    let n: usize = std::env::args()
        .nth(1)
        .map_or(8192, |s| s.parse().expect("ROWS"));
    let shapes = [(1152, 384), (384, 384), (1536, 384), (384, 1536)];
    for (o, k) in shapes {
        let x: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let w: Vec<f32> = (0..o * k)
            .map(|i| ((i * 104729) % 997) as f32 / 997.0 - 0.5)
            .collect();
        let flops = 2.0 * (n * o * k) as f64;
        let mut out = vec![0f32; n * o];
        let time = |f: &mut dyn FnMut()| {
            f();
            let reps = 5;
            let t = Instant::now();
            for _ in 0..reps {
                f();
            }
            flops * reps as f64 / t.elapsed().as_secs_f64() / 1e9
        };
        let g = time(&mut || unsafe {
            gemm::gemm(
                n,
                o,
                k,
                out.as_mut_ptr(),
                1,
                o as isize,
                false,
                x.as_ptr(),
                1,
                k as isize,
                w.as_ptr(),
                k as isize,
                1,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(rayon::current_num_threads()),
            )
        });
        let mut line = format!("{n}x{o}x{k}: gemm {g:.1} GFLOP/s");
        for p in [Precision::F32, Precision::Int8, Precision::Int8Fast] {
            if let Some(pw) = PackedWeight::new(&w, o, k, p) {
                let v = time(&mut || pw.matmul(&x, n, &mut out, false, None, 1.0));
                line += &format!(", packed {p} {v:.1}");
            }
        }
        println!("{line}");
    }
}

/// The attention kernel at corpus-encoding shape: 32 rows of 256 tokens, 12 heads.
#[allow(dead_code)]
fn attention_speed() {
    use aside_backbone::candle_core::{Device, Tensor};
    let (b, t, d, heads) = (32, 256, 384, 12);
    let v: Vec<f32> = (0..b * t * 3 * d)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    let qkv = Tensor::from_vec(v, (b, t, 3 * d), &Device::Cpu).unwrap();
    let lengths = vec![t; b];
    aside_backbone::ops::attention(&qkv, &lengths, heads).unwrap();
    let t0 = Instant::now();
    let reps = 3;
    for _ in 0..reps {
        aside_backbone::ops::attention(&qkv, &lengths, heads).unwrap();
    }
    let s = t0.elapsed().as_secs_f64() / reps as f64;
    let flops = 4.0 * (b * t * t * d) as f64;
    println!(
        "attention {b}x{t}, {heads} heads: {:.1} ms, {:.1} GFLOP/s",
        s * 1e3,
        flops / s / 1e9
    );
}
