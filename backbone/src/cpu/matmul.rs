//! Matrix products `y = x Wᵀ`: the frozen linears prepacked for AVX-512 micro-kernels,
//! and the portable `gemm` crate for everything else.
//!
//! Each weight is packed once, when the model loads, into panels of [`NR`] output
//! columns laid out in the order the micro-kernel reads them, so a forward pass never
//! re-packs the shared weights. Three packings:
//!
//! - [`Packing::F32`]: f32 fused multiply-adds (AVX-512F); results match an
//!   ordinary f32 matmul up to summation order.
//! - [`Packing::Int8`]: activations quantised per row at run time to uint8
//!   (asymmetric: scale and zero point from the row's min and max); weights packed
//!   once as two int8 planes per output column, `W ≈ s·(Q₁ + Q₂/254)` (the second
//!   plane holds the first's rounding error, so weights keep ~15 bits).
//!   `vpdpbusd` (AVX-512 VNNI) sums the products exactly in i32, four multiply-adds per lane and instruction, and the epilogue
//!   removes the zero point and applies the scales in f32. A row whose rounding
//!   error would exceed [`super::quantize::COARSE`] of its norm (a few channels far above the rest,
//!   as at [CLS] and [SEP]) is quantised to 16 bits instead, as two uint8 rows (high
//!   and low bytes) through the same int8 weight, summed after. BERT's hidden
//!   states have a few outlier channels (|x| ~10 where most are ~1), which would
//!   waste the row's 256 levels; given each input channel's typical range, the
//!   weight is packed with per-channel smoothing (SmoothQuant, α = ½): column `j` of
//!   `W` is multiplied by `s_j = √(range_j / max|W[:, j]|)` and activation channel
//!   `j` divided by it while it is quantised, which leaves `x Wᵀ` unchanged.
//! - [`Packing::Int8Fast`]: the same with the first weight plane alone (8 bits):
//!   half the multiply-adds and twice the rows per tile; the embeddings fall just
//!   below 0.999 cosine of f32 on some inputs (≥ 0.998 on the reference set), and
//!   SciFact's retrieval figures do not move.
//!
//! (bf16 was measured too: on Zen 4 `vdpbf16ps` retires at a quarter of the rate of
//! an f32 FMA, so a packed bf16 path is slower than f32 here and is not offered;
//! the f16 and bf16 precisions run candle's ops, meant for GPUs.)
//!
//! The micro-kernel keeps a tile of up to 12 (f32, one-plane int8) or 6 (two-plane
//! int8) rows × [`NR`] columns in 24 `zmm` accumulators over the whole `k`; rows are
//! split into chunks that stay in L2 and the (row chunk, panel group) jobs run on the
//! rayon pool.

use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use super::activation::{activate, Epilogue};
use super::features;
use super::quantize::{quantize_rows, quantize_rows16, Int8Weight, RowQ, LO};
use super::vector::lane_mask;

/// Output columns per packed panel: two `zmm` registers of f32.
pub const NR: usize = 32;
/// Rows per micro-tile: f32 and one-plane int8, and two-plane int8 (whose second
/// weight plane doubles the accumulators).
const MR: usize = 12;
const MR_INT8: usize = 6;

/// How a frozen weight is packed: the CPU side of the f32 and int8 precisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packing {
    /// f32 panels for the FMA micro-kernel.
    F32,
    /// Two int8 planes per output column (~15 bits).
    Int8,
    /// One int8 plane (8 bits).
    Int8Fast,
}

impl Packing {
    /// int8 weight planes per output column (0 for f32).
    fn weight_planes(self) -> usize {
        match self {
            Packing::F32 => 0,
            Packing::Int8 => 2,
            Packing::Int8Fast => 1,
        }
    }

    #[cfg(test)]
    fn is_int8(self) -> bool {
        self.weight_planes() > 0
    }

    /// Whether this CPU has the instructions of this packing's micro-kernels.
    pub fn supported(self) -> bool {
        match self {
            Packing::F32 => features::avx512(),
            Packing::Int8 | Packing::Int8Fast => features::avx512_vnni(),
        }
    }
}

impl std::fmt::Display for Packing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Packing::F32 => "f32",
            Packing::Int8 => "int8",
            Packing::Int8Fast => "int8-fast",
        })
    }
}

enum Data {
    /// Panel `p`, row `kk`, lane `j` at `(p·k + kk)·NR + j`: `W[p·NR + j, kk]`.
    F32(Vec<f32>),
    /// Two or one int8 planes (see [`Int8Weight`]).
    Int8(Int8Weight),
}

/// A weight `[o, k]` (PyTorch layout) packed for `x Wᵀ`.
pub struct PackedWeight {
    o: usize,
    k: usize,
    data: Data,
}

impl std::fmt::Debug for PackedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedWeight({}×{}, {})", self.o, self.k, self.packing())
    }
}

impl PackedWeight {
    /// Packs `w` (`[o, k]` row-major). `None` when this CPU lacks the instructions.
    pub fn new(w: &[f32], o: usize, k: usize, precision: Packing) -> Option<Self> {
        Self::with_ranges(w, o, k, precision, None)
    }

    /// [`PackedWeight::new`]; for int8, `ranges` (max |x_j| of each input channel,
    /// measured on sample inputs) turns on per-channel smoothing.
    pub fn with_ranges(
        w: &[f32],
        o: usize,
        k: usize,
        precision: Packing,
        ranges: Option<&[f32]>,
    ) -> Option<Self> {
        assert_eq!(w.len(), o * k, "weight has {} values, not {o}×{k}", w.len());
        if let Some(r) = ranges {
            assert_eq!(r.len(), k, "ranges has {} channels, not {k}", r.len());
        }
        if !precision.supported() || o == 0 || k == 0 {
            return None;
        }
        let panels = o.div_ceil(NR);
        let data = match precision {
            Packing::F32 => {
                let mut d = vec![0f32; panels * k * NR];
                d.par_chunks_mut(k * NR)
                    .enumerate()
                    .for_each(|(p, panel)| pack_panel(panel, w, k, p, o, k));
                Data::F32(d)
            }
            Packing::Int8 | Packing::Int8Fast => {
                Data::Int8(Int8Weight::pack(w, o, k, precision.weight_planes(), ranges))
            }
        };
        Some(PackedWeight { o, k, data })
    }

    pub fn packing(&self) -> Packing {
        match self.data {
            Data::F32(_) => Packing::F32,
            Data::Int8(Int8Weight { planes: 2, .. }) => Packing::Int8,
            Data::Int8(_) => Packing::Int8Fast,
        }
    }

    /// `[o, k]`.
    pub fn dims(&self) -> (usize, usize) {
        (self.o, self.k)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match &self.data {
            Data::F32(d) => d.len() * 4,
            Data::Int8(w) => w.bytes(),
        }
    }

    /// `out = (accumulate ? out : 0) + bias + scale · x Wᵀ` for `x` `[n, k]` and
    /// `out` `[n, o]`, both row-major.
    pub fn matmul(
        &self,
        x: &[f32],
        n: usize,
        out: &mut [f32],
        accumulate: bool,
        bias: Option<&[f32]>,
        scale: f32,
    ) {
        assert_eq!(out.len(), n * self.o, "output is not [{n}, {}]", self.o);
        // SAFETY: `out` is n·o initialised, writable floats.
        unsafe {
            self.product(
                x,
                n,
                out.as_mut_ptr(),
                accumulate,
                bias,
                scale,
                Epilogue::None,
            )
        }
    }

    /// `out = act(bias + scale · x Wᵀ)` into uninitialised memory (no zero-fill
    /// first): every element of `out` is written. The activation is applied by each
    /// job to the tiles it has just computed, while they are still in cache.
    pub fn matmul_into(
        &self,
        x: &[f32],
        n: usize,
        out: &mut [std::mem::MaybeUninit<f32>],
        bias: Option<&[f32]>,
        scale: f32,
        act: Epilogue,
    ) {
        assert_eq!(out.len(), n * self.o, "output is not [{n}, {}]", self.o);
        // SAFETY: `out` has n·o writable slots; with `accumulate` false nothing is
        // read from them before it is written.
        unsafe { self.product(x, n, out.as_mut_ptr() as *mut f32, false, bias, scale, act) }
    }

    /// # Safety
    /// `out` points to `n·o` writable floats, initialised when `accumulate`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn product(
        &self,
        x: &[f32],
        n: usize,
        out: *mut f32,
        accumulate: bool,
        bias: Option<&[f32]>,
        scale: f32,
        act: Epilogue,
    ) {
        let (o, k) = (self.o, self.k);
        assert_eq!(x.len(), n * k, "input is not [{n}, {k}]");
        if let Some(b) = bias {
            assert_eq!(b.len(), o, "bias is not [{o}]");
        }
        if n == 0 {
            return;
        }
        let mut job = Tile {
            a: x.as_ptr() as *const u8,
            lda: k,
            b: std::ptr::null(),
            steps: k,
            c: out,
            ldc: o,
            cols: o,
            bias: bias.map_or(std::ptr::null(), |b| b.as_ptr()),
            accumulate,
            scale,
            rows: std::ptr::null(),
            col_scale: std::ptr::null(),
            col_sum: std::ptr::null(),
        };
        match &self.data {
            Data::F32(w) => {
                job.b = w.as_ptr() as *const u8;
                run(n, &job, Kind::F32, act);
            }
            Data::Int8(Int8Weight {
                q,
                planes,
                smooth,
                scale: col_scale,
                colsum,
            }) => {
                let k4 = k.div_ceil(4);
                let (xq, rows) = quantize_rows(x, n, k, smooth.as_deref());
                // Rows uint8 cannot hold well (a few channels far above the rest, as at
                // [CLS] and [SEP]) are quantised again to 16 bits, split into two uint8
                // rows that run through the same int8 weight and are summed after.
                let coarse: Vec<usize> = (0..n).filter(|r| rows[*r].coarse).collect();
                let mut prior = Vec::new();
                if accumulate {
                    for r in &coarse {
                        // SAFETY: row r of `out` is initialised when accumulating.
                        prior.extend_from_slice(unsafe {
                            std::slice::from_raw_parts(out.add(r * o), o)
                        });
                    }
                }
                job.a = xq.as_ptr() as *const u8;
                job.lda = k4;
                job.steps = k4;
                job.b = q.as_ptr() as *const u8;
                job.rows = rows.as_ptr();
                job.col_scale = col_scale.as_ptr();
                job.col_sum = colsum.as_ptr();
                let kind = if *planes == 2 {
                    Kind::Int8
                } else {
                    Kind::Int8x1
                };
                run(n, &job, kind, act);
                if coarse.is_empty() {
                    return;
                }
                let m = coarse.len();
                let (xq2, rows2) = quantize_rows16(x, &coarse, k, smooth.as_deref());
                let mut y = vec![0f32; 2 * m * o];
                let split = Tile {
                    a: xq2.as_ptr() as *const u8,
                    c: y.as_mut_ptr(),
                    bias: std::ptr::null(),
                    accumulate: false,
                    rows: rows2.as_ptr(),
                    ..job
                };
                run(2 * m, &split, kind, Epilogue::None);
                let mut row = vec![0f32; o];
                for (i, r) in coarse.iter().enumerate() {
                    let (hi, lo) = (&y[2 * i * o..][..o], &y[(2 * i + 1) * o..][..o]);
                    for c in 0..o {
                        row[c] = hi[c] + lo[c] + bias.map_or(0.0, |b| b[c]);
                    }
                    if accumulate {
                        row.iter_mut()
                            .zip(&prior[i * o..][..o])
                            .for_each(|(v, p)| *v += p);
                    }
                    activate(&mut row, act);
                    // SAFETY: row r of `out` has o writable floats.
                    unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), out.add(r * o), o) };
                }
            }
        }
    }
}

/// Splits the product into (row chunk, panel group) jobs on the rayon pool; each job
/// applies `act` to what it wrote.
pub(super) fn run(n: usize, job: &Tile, kind: Kind, act: Epilogue) {
    let panels = job.cols.div_ceil(NR);
    // Rows per chunk: the chunk's share of `x` stays within ~192 KiB of L2 (both
    // kinds read 4 bytes per step and row).
    let mr = kind.rows();
    let mc = ((196_608 / (job.steps * 4)).max(mr) / mr * mr).max(mr);
    let chunks = n.div_ceil(mc);
    let threads = rayon::current_num_threads().max(1);
    // Few rows (a short query): split the columns too, so every thread has work.
    let groups = if chunks >= 2 * threads {
        1
    } else {
        (2 * threads).div_ceil(chunks).min(panels)
    };
    let per_group = panels.div_ceil(groups);
    (0..chunks * groups).into_par_iter().for_each(|j| {
        let (c, g) = (j / groups, j % groups);
        let rows = c * mc..((c + 1) * mc).min(n);
        let panels = g * per_group..((g + 1) * per_group).min(panels);
        // SAFETY: this job alone writes its rows × the columns of its panels of `c`;
        // `a` holds n rows of `steps` 4-byte elements at stride lda; each panel of
        // `b` holds `steps · planes · NR` 4-byte elements; `bias`, `col_scale`,
        // `col_sum` (when set) cover every panel's columns the masks allow; `rows` has
        // n entries. The CPU features were checked when the weight was packed.
        unsafe { tiles(job, kind, rows.clone(), panels.clone()) };
        if act != Epilogue::None {
            let cols = panels.start * NR..(panels.end * NR).min(job.cols);
            for r in rows {
                // SAFETY: this job has just written these columns of row r.
                let row = unsafe {
                    std::slice::from_raw_parts_mut(job.c.add(r * job.ldc + cols.start), cols.len())
                };
                activate(row, act);
            }
        }
    });
}

/// Runs the micro-kernel over `rows` × `panels` of the product `t`, one panel at a
/// time (its packed weights stay in cache while the rows go by).
///
/// # Safety
/// As for [`Kind::tile`], for every tile of the ranges.
pub(super) unsafe fn tiles(
    t: &Tile,
    kind: Kind,
    rows: std::ops::Range<usize>,
    panels: std::ops::Range<usize>,
) {
    let mr = kind.rows();
    for p in panels {
        let mut r = rows.start;
        while r < rows.end {
            let m = mr.min(rows.end - r);
            // SAFETY: the caller's contract.
            unsafe { kind.tile(m, &t.at(r, p, kind.planes())) };
            r += m;
        }
    }
}

/// Writes panel `p` of the `[n, k]` matrix whose row `i` is `src[i·ld ..][..k]`:
/// lane `j` of step `kk` is row `p·NR + j`, column `kk` (rows past `n` stay as they
/// are, zero in a fresh buffer).
pub(super) fn pack_panel(panel: &mut [f32], src: &[f32], ld: usize, p: usize, n: usize, k: usize) {
    for j in 0..NR.min(n - p * NR) {
        let row = &src[(p * NR + j) * ld..][..k];
        for (kk, v) in row.iter().enumerate() {
            panel[kk * NR + j] = *v;
        }
    }
}

#[derive(Clone, Copy)]
pub(super) enum Kind {
    F32,
    /// Two weight planes.
    Int8,
    /// One weight plane.
    Int8x1,
}

impl Kind {
    fn rows(self) -> usize {
        match self {
            Kind::F32 | Kind::Int8x1 => MR,
            Kind::Int8 => MR_INT8,
        }
    }

    /// Weight planes per packed step.
    fn planes(self) -> usize {
        match self {
            Kind::F32 | Kind::Int8x1 => 1,
            Kind::Int8 => 2,
        }
    }

    /// # Safety
    /// `t` describes valid buffers for `m` rows (see [`run`]) and the CPU has the
    /// kind's instructions.
    unsafe fn tile(self, m: usize, t: &Tile) {
        macro_rules! dispatch {
            ($f:ident) => {
                match m {
                    1 => $f::<1>(t),
                    2 => $f::<2>(t),
                    3 => $f::<3>(t),
                    4 => $f::<4>(t),
                    5 => $f::<5>(t),
                    6 => $f::<6>(t),
                    7 => $f::<7>(t),
                    8 => $f::<8>(t),
                    9 => $f::<9>(t),
                    10 => $f::<10>(t),
                    11 => $f::<11>(t),
                    12 => $f::<12>(t),
                    _ => unreachable!("tile rows {m} > MR"),
                }
            };
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: forwarded from this function's contract.
        unsafe {
            match self {
                Kind::F32 => dispatch!(tile_f32),
                Kind::Int8x1 => dispatch!(tile_int8x1),
                Kind::Int8 => match m {
                    1 => tile_int8::<1>(t),
                    2 => tile_int8::<2>(t),
                    3 => tile_int8::<3>(t),
                    4 => tile_int8::<4>(t),
                    5 => tile_int8::<5>(t),
                    6 => tile_int8::<6>(t),
                    _ => unreachable!("int8 tile rows {m} > MR_INT8"),
                },
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (m, t);
            unreachable!("packed kernels are x86-64 only");
        }
    }
}

/// A product `c = a · packed b`, or (after [`Tile::at`]) one micro-tile of it: up to
/// MR rows of `a` against one packed panel of `b`.
#[derive(Clone, Copy)]
pub(super) struct Tile {
    /// f32 values, or uint8 quads (u32) for int8.
    pub(super) a: *const u8,
    /// Row stride of `a` in 4-byte elements.
    pub(super) lda: usize,
    /// The packed weight, or (in a tile) its panel: `steps` groups of NR lanes per
    /// plane.
    pub(super) b: *const u8,
    /// k (f32) or k/4 rounded up (int8 quads).
    pub(super) steps: usize,
    /// The output, or the tile's first output element.
    pub(super) c: *mut f32,
    /// Row stride of `c`.
    pub(super) ldc: usize,
    /// Valid output columns: all of them in a product, ≤ NR in a tile.
    pub(super) cols: usize,
    /// Per output column, or null.
    pub(super) bias: *const f32,
    pub(super) accumulate: bool,
    pub(super) scale: f32,
    /// int8: per row of `a`.
    pub(super) rows: *const RowQ,
    /// int8: per output column (whole panels).
    pub(super) col_scale: *const f32,
    /// int8: per panel, plane and column.
    pub(super) col_sum: *const i32,
}
unsafe impl Send for Tile {}
unsafe impl Sync for Tile {}

impl Tile {
    /// The micro-tile of this product at row `r` and panel `p`.
    ///
    /// # Safety
    /// `r` and `p` lie inside the product.
    unsafe fn at(&self, r: usize, p: usize, planes: usize) -> Tile {
        /// `ptr + n` unless null.
        fn add<T>(ptr: *const T, n: usize) -> *const T {
            // SAFETY: the caller's contract puts `n` inside the pointed-to buffer.
            if ptr.is_null() {
                ptr
            } else {
                unsafe { ptr.add(n) }
            }
        }
        // SAFETY: the caller's contract.
        unsafe {
            Tile {
                a: self.a.add(r * self.lda * 4),
                b: self.b.add(p * self.steps * planes * NR * 4),
                c: self.c.add(r * self.ldc + p * NR),
                cols: NR.min(self.cols - p * NR),
                bias: add(self.bias, p * NR),
                rows: add(self.rows, r),
                col_scale: add(self.col_scale, p * NR),
                col_sum: add(self.col_sum, p * planes * NR),
                ..*self
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Writes one tile row: `c = (accumulate ? c : 0) + bias + s · v` per 16-lane half.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn store_row(t: &Tile, r: usize, v: [__m512; 2], s: [__m512; 2]) {
    let (m0, m1) = lane_masks(t.cols);
    // SAFETY: the tile's row r has `cols` writable columns; bias covers them.
    unsafe {
        let c = t.c.add(r * t.ldc);
        for (h, mask) in [m0, m1].into_iter().enumerate() {
            if mask == 0 {
                continue;
            }
            let mut base = if t.accumulate {
                _mm512_maskz_loadu_ps(mask, c.add(16 * h))
            } else {
                _mm512_setzero_ps()
            };
            if !t.bias.is_null() {
                base = _mm512_add_ps(base, _mm512_maskz_loadu_ps(mask, t.bias.add(16 * h)));
            }
            _mm512_mask_storeu_ps(c.add(16 * h), mask, _mm512_fmadd_ps(v[h], s[h], base));
        }
    }
}

fn lane_masks(cols: usize) -> (u16, u16) {
    (lane_mask(cols), lane_mask(cols.saturating_sub(16)))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_f32<const M: usize>(t: &Tile) {
    // SAFETY: the tile's buffers (see `run`); AVX-512F checked at packing.
    unsafe {
        let a = t.a as *const f32;
        let b = t.b as *const f32;
        let mut acc = [[_mm512_setzero_ps(); 2]; M];
        for kk in 0..t.steps {
            let b0 = _mm512_loadu_ps(b.add(kk * NR));
            let b1 = _mm512_loadu_ps(b.add(kk * NR + 16));
            for (r, acc) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*a.add(r * t.lda + kk));
                acc[0] = _mm512_fmadd_ps(av, b0, acc[0]);
                acc[1] = _mm512_fmadd_ps(av, b1, acc[1]);
            }
        }
        let s = _mm512_set1_ps(t.scale);
        for (r, acc) in acc.into_iter().enumerate() {
            store_row(t, r, acc, [s, s]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile_int8<const M: usize>(t: &Tile) {
    // SAFETY: the tile's buffers (see `run`); VNNI checked at packing.
    unsafe {
        let a = t.a as *const i32;
        let b = t.b as *const __m512i;
        // [row][plane][half]
        let mut acc = [[[_mm512_setzero_si512(); 2]; 2]; M];
        for q in 0..t.steps {
            let w = [
                [
                    _mm512_loadu_si512(b.add(4 * q)),
                    _mm512_loadu_si512(b.add(4 * q + 1)),
                ],
                [
                    _mm512_loadu_si512(b.add(4 * q + 2)),
                    _mm512_loadu_si512(b.add(4 * q + 3)),
                ],
            ];
            for (r, acc) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_epi32(*a.add(r * t.lda + q));
                for h in 0..2 {
                    for half in 0..2 {
                        acc[h][half] = _mm512_dpbusd_epi32(acc[h][half], av, w[h][half]);
                    }
                }
            }
        }
        let cs = |h: usize, half: usize| {
            _mm512_loadu_si512(t.col_sum.add(h * NR + 16 * half) as *const __m512i)
        };
        let cs = [[cs(0, 0), cs(0, 1)], [cs(1, 0), cs(1, 1)]];
        let sc = [
            _mm512_mul_ps(_mm512_loadu_ps(t.col_scale), _mm512_set1_ps(t.scale)),
            _mm512_mul_ps(
                _mm512_loadu_ps(t.col_scale.add(16)),
                _mm512_set1_ps(t.scale),
            ),
        ];
        let lo = _mm512_set1_ps(1.0 / LO);
        for (r, acc) in acc.into_iter().enumerate() {
            let rq = *t.rows.add(r);
            let z = _mm512_set1_epi32(rq.zero);
            let rs = _mm512_set1_ps(rq.scale);
            let v = [0, 1].map(|half| {
                // Σ (q − zero)·w = Σ q·w − zero·Σ w, exact in i32, for each plane.
                let p = |h: usize| {
                    _mm512_cvtepi32_ps(_mm512_sub_epi32(
                        acc[h][half],
                        _mm512_mullo_epi32(z, cs[h][half]),
                    ))
                };
                _mm512_fmadd_ps(p(1), lo, p(0))
            });
            store_row(
                t,
                r,
                v,
                [_mm512_mul_ps(sc[0], rs), _mm512_mul_ps(sc[1], rs)],
            );
        }
    }
}

/// [`tile_int8`] with one weight plane: twice the rows per tile.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile_int8x1<const M: usize>(t: &Tile) {
    // SAFETY: the tile's buffers (see `run`); VNNI checked at packing.
    unsafe {
        let a = t.a as *const i32;
        let b = t.b as *const __m512i;
        let mut acc = [[_mm512_setzero_si512(); 2]; M];
        for q in 0..t.steps {
            let w = [
                _mm512_loadu_si512(b.add(2 * q)),
                _mm512_loadu_si512(b.add(2 * q + 1)),
            ];
            for (r, acc) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_epi32(*a.add(r * t.lda + q));
                acc[0] = _mm512_dpbusd_epi32(acc[0], av, w[0]);
                acc[1] = _mm512_dpbusd_epi32(acc[1], av, w[1]);
            }
        }
        let cs = [0, 1].map(|half| _mm512_loadu_si512(t.col_sum.add(16 * half) as *const __m512i));
        let sc = [0, 1].map(|half| {
            _mm512_mul_ps(
                _mm512_loadu_ps(t.col_scale.add(16 * half)),
                _mm512_set1_ps(t.scale),
            )
        });
        for (r, acc) in acc.into_iter().enumerate() {
            let rq = *t.rows.add(r);
            let z = _mm512_set1_epi32(rq.zero);
            let rs = _mm512_set1_ps(rq.scale);
            // Σ (q − zero)·w = Σ q·w − zero·Σ w, exact in i32.
            let v = [0, 1].map(|half| {
                _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[half], _mm512_mullo_epi32(z, cs[half])))
            });
            store_row(
                t,
                r,
                v,
                [_mm512_mul_ps(sc[0], rs), _mm512_mul_ps(sc[1], rs)],
            );
        }
    }
}

fn threads() -> Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

/// Products below this many multiply-adds run on the calling thread: handing an
/// adapter's small per-group matmul to the pool costs more than it saves.
pub(crate) const SERIAL_BELOW: usize = 1 << 20;

/// `out = (accumulate ? out : 0) + scale · x Wᵀ` for `x` `[n, k]`, `w` `[o, k]` and
/// `out` `[n, o]`, all row-major, through the portable `gemm` crate (on the rayon
/// pool from [`SERIAL_BELOW`] multiply-adds up, or always when `parallel`).
#[allow(clippy::too_many_arguments)]
pub fn gemm_nt(
    out: &mut [f32],
    x: &[f32],
    w: &[f32],
    n: usize,
    o: usize,
    k: usize,
    accumulate: bool,
    scale: f32,
    parallel: bool,
) {
    assert!(
        out.len() == n * o && x.len() == n * k && w.len() == o * k,
        "gemm_nt: out {}, x {}, w {} values for [{n}, {k}] × [{o}, {k}]ᵀ",
        out.len(),
        x.len(),
        w.len()
    );
    let par = if parallel || n * o * k >= SERIAL_BELOW {
        threads()
    } else {
        Parallelism::None
    };
    // SAFETY: pointers and strides describe the three buffers exactly (checked
    // above): dst [n, o] row-major, lhs [n, k] row-major, rhs = Wᵀ, i.e. W [o, k]
    // read with row stride 1 and column stride k.
    unsafe {
        gemm(
            n,
            o,
            k,
            out.as_mut_ptr(),
            1,
            o as isize,
            accumulate,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            if accumulate { 1.0 } else { 0.0 },
            scale,
            false,
            false,
            false,
            par,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::quantize::quantize_row;
    use super::*;

    fn rand(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn reference(x: &[f32], w: &[f32], n: usize, o: usize, k: usize) -> Vec<f32> {
        let mut y = vec![0f32; n * o];
        for i in 0..n {
            for j in 0..o {
                let mut s = 0f64;
                for kk in 0..k {
                    s += x[i * k + kk] as f64 * w[j * k + kk] as f64;
                }
                y[i * o + j] = s as f32;
            }
        }
        y
    }

    /// `x` and `w` as the int8 kernel sees them: rows of `x` through `quantize_row`,
    /// columns of `w` rounded to 127 steps of their max plus the remainder in steps
    /// LO times finer.
    fn dequantized(
        x: &[f32],
        w: &[f32],
        n: usize,
        o: usize,
        k: usize,
        planes: usize,
    ) -> (Vec<f32>, Vec<f32>) {
        let mut xd = Vec::with_capacity(n * k);
        for row in x.chunks(k) {
            let mut q = vec![0u32; k.div_ceil(4)];
            let rq = quantize_row(&mut q, row);
            let bytes: Vec<u8> = q.iter().flat_map(|v| v.to_le_bytes()).collect();
            xd.extend(
                bytes[..k]
                    .iter()
                    .map(|b| rq.scale * (*b as i32 - rq.zero) as f32),
            );
        }
        let mut wd = Vec::with_capacity(o * k);
        for row in w.chunks(k) {
            let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            let s = if amax > 0.0 { amax / 127.0 } else { 1.0 };
            wd.extend(row.iter().map(|v| {
                let hi = (v / s).round();
                let lo = if planes == 2 {
                    ((v / s - hi) * LO).round() / LO
                } else {
                    0.0
                };
                s * (hi + lo)
            }));
        }
        assert_eq!((xd.len(), wd.len()), (n * k, o * k));
        (xd, wd)
    }

    /// Every shape edge: rows not a multiple of MR, columns not a multiple of NR, k
    /// not a multiple of 4 or 16, one row, accumulation, bias and scale, both
    /// precisions. int8 must equal the f64 product of its dequantised operands (the
    /// i32 sums are exact) and stay close to the f32 product.
    #[test]
    fn matches_reference_on_ragged_shapes() {
        for precision in [Packing::F32, Packing::Int8, Packing::Int8Fast] {
            if !precision.supported() {
                eprintln!("SKIPPED: this CPU cannot run {precision}");
                continue;
            }
            for &(n, o, k) in &[
                (1, 32, 8),
                (13, 40, 7),
                (25, 96, 33),
                (100, 70, 384),
                (7, 5, 1),
            ] {
                let x = rand(n * k, 1 + n as u64);
                let w = rand(o * k, 2 + o as u64);
                let b = rand(o, 3);
                let init = rand(n * o, 4);
                let pw = PackedWeight::new(&w, o, k, precision).unwrap();
                assert_eq!(pw.packing(), precision);
                let exact = reference(&x, &w, n, o, k);
                let want = match precision {
                    Packing::F32 => exact.clone(),
                    p => {
                        let (xd, wd) = dequantized(&x, &w, n, o, k, p.weight_planes());
                        reference(&xd, &wd, n, o, k)
                    }
                };
                let mut y = init.clone();
                pw.matmul(&x, n, &mut y, true, Some(&b), 0.5);
                let tol = 1e-5 * (k as f32).sqrt() + 1e-6;
                for i in 0..n * o {
                    let e = init[i] + b[i % o] + 0.5 * want[i];
                    assert!(
                        (y[i] - e).abs() <= tol * (1.0 + e.abs()),
                        "{precision} {n}x{o}x{k} at {i}: {} vs {e}",
                        y[i]
                    );
                }
                let mut z = vec![f32::NAN; n * o];
                pw.matmul(&x, n, &mut z, false, None, 1.0);
                let (mut err, mut norm) = (0f64, 0f64);
                for i in 0..n * o {
                    assert!(
                        (z[i] - want[i]).abs() <= tol * (1.0 + want[i].abs()),
                        "{precision} no-acc at {i}"
                    );
                    err += ((z[i] - exact[i]) as f64).powi(2);
                    norm += (exact[i] as f64).powi(2);
                }
                // Against the true product: int8 rounding costs about 1% here.
                let rel = (err / norm).sqrt();
                assert!(rel < 0.03, "{precision} {n}x{o}x{k}: relative error {rel}");
            }
        }
    }

    #[test]
    fn writing_into_fresh_memory_with_a_fused_activation_matches_a_separate_pass() {
        for precision in [Packing::F32, Packing::Int8, Packing::Int8Fast] {
            if !precision.supported() {
                eprintln!("SKIPPED: this CPU cannot run {precision}");
                continue;
            }
            for &(n, o, k) in &[(1, 32, 8), (13, 40, 7), (100, 70, 384), (30, 1536, 384)] {
                let mut x = rand(n * k, 5 + n as u64);
                // A row with two far channels, which int8 computes through its f32
                // fallback (where k is large enough for that to matter).
                let r = n / 2;
                x[r * k] = 40.0;
                if k > 1 {
                    x[r * k + 1] = -40.0;
                }
                if precision.is_int8() && k >= 384 {
                    assert!(quantize_rows(&x, n, k, None).1[r].coarse);
                }
                let w = rand(o * k, 6 + o as u64);
                let b = rand(o, 7);
                let pw = PackedWeight::new(&w, o, k, precision).unwrap();
                for act in [Epilogue::None, Epilogue::Gelu, Epilogue::Tanh] {
                    let mut want = vec![0f32; n * o];
                    pw.matmul(&x, n, &mut want, false, Some(&b), 0.5);
                    activate(&mut want, act);
                    let mut got: Vec<f32> = Vec::with_capacity(n * o);
                    pw.matmul_into(
                        &x,
                        n,
                        &mut got.spare_capacity_mut()[..n * o],
                        Some(&b),
                        0.5,
                        act,
                    );
                    // SAFETY: matmul_into writes every element.
                    unsafe { got.set_len(n * o) };
                    assert_eq!(got, want, "{precision} {n}x{o}x{k} {act:?}");
                }
            }
        }
    }

    /// A row with far outlier channels is quantised to 16 bits (two uint8 rows): its
    /// product matches the exact activations against the dequantised weight.
    #[test]
    fn coarse_rows_run_at_sixteen_bits() {
        for precision in [Packing::Int8, Packing::Int8Fast] {
            if !precision.supported() {
                eprintln!("SKIPPED: this CPU cannot run {precision}");
                continue;
            }
            let (n, o, k) = (7, 70, 384);
            let mut x = rand(n * k, 11);
            for r in [0, 3] {
                x[r * k + 5] = 60.0;
                x[r * k + 17] = -45.0;
            }
            let rows = quantize_rows(&x, n, k, None).1;
            assert!(rows[0].coarse && rows[3].coarse && !rows[1].coarse);
            let w = rand(o * k, 12);
            let b = rand(o, 13);
            let init = rand(n * o, 14);
            let pw = PackedWeight::new(&w, o, k, precision).unwrap();
            let (_, wd) = dequantized(&x, &w, n, o, k, precision.weight_planes());
            let want = reference(&x, &wd, n, o, k);
            let mut y = init.clone();
            pw.matmul(&x, n, &mut y, true, Some(&b), 0.5);
            for r in [0, 3] {
                let row = &want[r * o..][..o];
                let size = row.iter().fold(0f32, |m, v| m.max(v.abs()));
                for c in 0..o {
                    let e = init[r * o + c] + b[c] + 0.5 * row[c];
                    let got = y[r * o + c];
                    assert!(
                        (got - e).abs() <= 2e-4 * size,
                        "{precision} row {r} col {c}: {got} vs {e}"
                    );
                }
            }
        }
    }
}
