//! Sample inputs for measuring the range of every linear's input before packing the
//! weights in int8 ([`Bert::into_int8`]). Outlier channels are a property of
//! the model, not of the text, so a small mix of registers and lengths suffices:
//! scientific claims and abstracts, web questions, product text, code and numbers,
//! non-English text.
//!
//! The ranges are recorded by the fast forward ([`Fwd::record`]) and the weights
//! packed with them ([`Bert::pack`]).

use candle_core::Tensor;

use super::layer::Fwd;
use super::{Bert, Mode, PackedLayer};
use crate::cpu::PackedWeight;
use crate::error::{Error, Result};
use crate::hooks::Group;
use crate::model::BatchInputs;
use crate::precision::Precision;

pub(crate) const TEXTS: &[&str] = &[
    "This is an example sentence",
    "Each sentence is converted",
    "Hello world",
    "what is the capital of australia",
    "how long does it take to boil an egg?",
    "0-dimensional biomaterials show inductive properties.",
    "Vitamin D deficiency is associated with an increased risk of tuberculosis in HIV-infected adults.",
    "Microstructural development of human newborn cerebral white matter assessed in vivo by diffusion tensor magnetic resonance imaging. Alterations of architecture of cerebral white matter in the developing human brain can affect cortical development and result in functional disabilities. A line scan diffusion-weighted magnetic resonance imaging (MRI) sequence with diffusion tensor analysis was applied to measure the apparent diffusion coefficient, to calculate relative anisotropy, and to delineate three-dimensional fiber architecture in cerebral white matter in preterm (n = 17) and full-term infants (n = 7).",
    "The randomized controlled trial enrolled 1,204 patients (mean age 63.2 ± 9.1 years); the primary endpoint, a composite of death or hospitalization, occurred in 12.4% vs. 15.9% (hazard ratio 0.76; 95% CI, 0.61-0.94; P = .01).",
    "Stainless steel 18/10 saucepan with glass lid, 2.5 L, induction compatible, dishwasher safe. Free delivery on orders over $50!",
    "fn main() { let v: Vec<u32> = (0..10).map(|x| x * x).collect(); println!(\"{:?}\", v); }",
    "SELECT id, name FROM users WHERE created_at > '2021-01-01' ORDER BY name LIMIT 20;",
    "Der schnelle braune Fuchs springt über den faulen Hund. Les élèves étudient à la bibliothèque.",
    "東京は日本の首都です。 Москва — столица России.",
    "BRCA1 and BRCA2 mutations confer a high lifetime risk of breast and ovarian cancer; PARP inhibitors exploit homologous-recombination deficiency.",
    "I ordered the blue one but received a green one, and customer service never answered my emails.",
    "The committee will meet on Tuesday at 10:30 a.m. in room 4B to review the budget proposal for fiscal year 2025.",
    "Photosynthesis converts light energy into chemical energy, producing glucose and oxygen from carbon dioxide and water.",
    "@john_doe lol that game last night was insane!!! #playoffs",
    "Q: Is coffee bad for your heart? A: Moderate consumption (3-4 cups a day) is not associated with increased cardiovascular risk in most studies.",
    "Section 3(b): The licensee shall not sublicense, assign or transfer any rights granted herein without prior written consent.",
    "a",
    "?",
    "CRISPR–Cas9 genome editing in human embryos raises ethical concerns regarding germline modification, mosaicism and off-target effects.",
];

/// max |x_j| per input channel of a layer's qkv, attention-output, intermediate and
/// output linears.
pub(super) type LayerRanges = [Vec<f32>; 4];

impl Bert {
    /// The same model with its linears in int8: the input range of every linear is
    /// measured on `calibration` (an f32 forward pass) and the weights are packed with
    /// per-channel smoothing for those ranges (see [`crate::cpu::matmul`]).
    pub fn into_int8(mut self, calibration: &BatchInputs, precision: Precision) -> Result<Bert> {
        assert!(precision.is_int8(), "into_int8 with {precision}");
        if !(self.device.is_cpu() && precision.supported()) {
            return Err(Error::Unsupported(format!(
                "int8 needs a CPU with AVX-512 VNNI (this {} lacks it); use f32",
                if self.device.is_cpu() {
                    "CPU"
                } else {
                    "device"
                }
            )));
        }
        let ranges = std::sync::Mutex::new(Vec::new());
        let groups = [Group {
            rows: 0..calibration.lengths.len(),
            hooks: None,
        }];
        self.forward_with(calibration, &groups, Mode::Inference, Some(&ranges))?;
        let ranges = ranges.into_inner().expect("calibration lock");
        self.packed = self.pack(precision, Some(&ranges))?;
        Ok(self)
    }

    /// Packs every layer's frozen matrices; empty when the CPU lacks the kernels.
    pub(super) fn pack(
        &self,
        precision: Precision,
        ranges: Option<&[LayerRanges]>,
    ) -> Result<Vec<PackedLayer>> {
        let Some(packing) = precision.packing().filter(|p| p.supported()) else {
            return Ok(Vec::new());
        };
        if !self.cpu_f32() {
            return Ok(Vec::new());
        }
        let pack = |t: &Tensor, r: Option<&Vec<f32>>| -> Result<PackedWeight> {
            let (o, k) = t.dims2()?;
            let v = t.flatten_all()?.to_vec1::<f32>()?;
            let r = r.filter(|r| r.len() == k).map(|r| &r[..]);
            Ok(PackedWeight::with_ranges(&v, o, k, packing, r).expect("support checked above"))
        };
        self.layers
            .iter()
            .enumerate()
            .map(|(l, ly)| {
                let r = |i: usize| ranges.and_then(|r| r.get(l)).map(|r| &r[i]);
                Ok(PackedLayer {
                    qkv: pack(&ly.qkv, r(0))?,
                    attn_out: pack(&ly.attn_out.weight, r(1))?,
                    inter: pack(&ly.inter.weight, r(2))?,
                    out: pack(&ly.out.weight, r(3))?,
                })
            })
            .collect()
    }
}

impl Fwd<'_> {
    /// Records max |x_j| over the real (unpadded) tokens of `x` as input `slot` of
    /// layer `l`'s linears.
    pub(super) fn record(&self, l: usize, slot: usize, x: &Tensor) -> candle_core::Result<()> {
        let Some(ranges) = self.ranges else {
            return Ok(());
        };
        let (_, t, k) = x.dims3()?;
        let first = |i: usize| self.starts.map_or(i * t, |s| s[i]);
        let v = x.flatten_all()?.to_vec1::<f32>()?;
        let mut all = ranges.lock().expect("calibration lock");
        while all.len() <= l {
            all.push(Default::default());
        }
        let r = &mut all[l][slot];
        r.resize(k, 0.0);
        for (i, len) in self.lengths.iter().enumerate() {
            for row in v[first(i) * k..].chunks(k).take(*len) {
                for (m, x) in r.iter_mut().zip(row) {
                    *m = m.max(x.abs());
                }
            }
        }
        Ok(())
    }
}
