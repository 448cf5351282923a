//! [`Precision`]: the arithmetic of the backbone's frozen linears.

use candle_core::DType;

use crate::cpu::matmul::Packing;

/// Arithmetic of the frozen linears. On the CPU, f32 and the int8 kinds run the
/// packed AVX-512 kernels ([`crate::cpu::matmul`]); f16 and bf16 run candle's ops in
/// that type on any device — the GPU's precisions (on the CPU they are a
/// correctness check, slower than f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// f32 everywhere (the reference).
    #[default]
    F32,
    /// int8 weights (per output column, two planes: ~15 bits) and uint8
    /// activations (per row) in the frozen linears, exact i32 accumulation;
    /// attention, LayerNorm, activations, adapters and pooling stay in f32.
    Int8,
    /// [`Precision::Int8`] with one weight plane (8 bits): half the multiply-adds,
    /// slightly further from f32.
    Int8Fast,
    /// Every weight, activation and adapter tensor in IEEE half precision; pooling
    /// and the returned vectors in f32.
    F16,
    /// The same in bfloat16 (f32's range, 8 bits of mantissa).
    Bf16,
}

impl Precision {
    pub const ALL: [Precision; 5] = [
        Precision::F32,
        Precision::Int8,
        Precision::Int8Fast,
        Precision::F16,
        Precision::Bf16,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Int8 => "int8",
            Precision::Int8Fast => "int8-fast",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
        }
    }

    /// int8 weight planes per output column (0 for the float precisions).
    pub(crate) fn weight_planes(self) -> usize {
        match self {
            Precision::Int8 => 2,
            Precision::Int8Fast => 1,
            Precision::F32 | Precision::F16 | Precision::Bf16 => 0,
        }
    }

    /// Whether the frozen linears run on the int8 kernels.
    pub fn is_int8(self) -> bool {
        self.weight_planes() > 0
    }

    /// The type the forward computes in: f32 for f32 and int8 (whose products are
    /// int8 inside the kernels only), f16 or bf16 otherwise.
    pub fn dtype(self) -> DType {
        match self {
            Precision::F16 => DType::F16,
            Precision::Bf16 => DType::BF16,
            Precision::F32 | Precision::Int8 | Precision::Int8Fast => DType::F32,
        }
    }

    /// How the CPU kernels pack the frozen weights (none for f16 and bf16).
    pub fn packing(self) -> Option<Packing> {
        match self {
            Precision::F32 => Some(Packing::F32),
            Precision::Int8 => Some(Packing::Int8),
            Precision::Int8Fast => Some(Packing::Int8Fast),
            Precision::F16 | Precision::Bf16 => None,
        }
    }

    /// Whether this CPU can run the packed kernels of this precision (never for f16
    /// and bf16, which have none).
    pub fn supported(self) -> bool {
        self.packing().is_some_and(Packing::supported)
    }

    /// The precision of weights packed this way.
    pub fn of(packing: Packing) -> Precision {
        match packing {
            Packing::F32 => Precision::F32,
            Packing::Int8 => Precision::Int8,
            Packing::Int8Fast => Precision::Int8Fast,
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Precision::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                format!("unknown precision `{s}` (expected f32, int8, int8-fast, f16 or bf16)")
            })
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_parses_and_names() {
        assert_eq!("int8".parse::<Precision>().unwrap(), Precision::Int8);
        assert_eq!("f32".parse::<Precision>().unwrap(), Precision::F32);
        for p in Precision::ALL {
            assert_eq!(p.name().parse::<Precision>().unwrap(), p);
        }
        assert!("fp8".parse::<Precision>().unwrap_err().contains("fp8"));
    }
}
