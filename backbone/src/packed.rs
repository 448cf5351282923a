//! Prepacked matrix products for the frozen linears, `y = x Wᵀ`, on AVX-512.
//!
//! Each weight is packed once, when the model loads, into panels of [`NR`] output
//! columns laid out in the order the micro-kernel reads them, so a forward pass never
//! re-packs the shared weights. Three precisions:
//!
//! - [`Precision::F32`]: f32 fused multiply-adds (AVX-512F); results match an
//!   ordinary f32 matmul up to summation order.
//! - [`Precision::Int8`]: activations quantised per row at run time to uint8
//!   (asymmetric: scale and zero point from the row's min and max); weights packed
//!   once as two int8 planes per output column, `W ≈ s·(Q₁ + Q₂/254)` (the second
//!   plane holds the first's rounding error, so weights keep ~15 bits).
//!   `vpdpbusd` (AVX-512 VNNI) sums the products exactly in i32, four multiply-adds per lane and instruction, and the epilogue
//!   removes the zero point and applies the scales in f32. A row whose rounding
//!   error would exceed [`COARSE`] of its norm (a few channels far above the rest,
//!   as at [CLS] and [SEP]) is quantised to 16 bits instead, as two uint8 rows (high
//!   and low bytes) through the same int8 weight, summed after. BERT's hidden
//!   states have a few outlier channels (|x| ~10 where most are ~1), which would
//!   waste the row's 256 levels; given each input channel's typical range, the
//!   weight is packed with per-channel smoothing (SmoothQuant, α = ½): column `j` of
//!   `W` is multiplied by `s_j = √(range_j / max|W[:, j]|)` and activation channel
//!   `j` divided by it while it is quantised, which leaves `x Wᵀ` unchanged.
//! - [`Precision::Int8Fast`]: the same with the first weight plane alone (8 bits):
//!   half the multiply-adds and twice the rows per tile; the embeddings fall just
//!   below 0.999 cosine of f32 on some inputs (≥ 0.998 on the reference set), and
//!   SciFact's retrieval figures do not move.
//!
//! (bf16 was measured too: on Zen 4 `vdpbf16ps` retires at a quarter of the rate of
//! an f32 FMA, so a bf16 path is slower than f32 here and is not offered.)
//!
//! The micro-kernel keeps a tile of up to 12 (f32, one-plane int8) or 6 (two-plane
//! int8) rows × [`NR`] columns in 24 `zmm` accumulators over the whole `k`; rows are
//! split into chunks that stay in L2 and the (row chunk, panel group) jobs run on the
//! rayon pool.

use rayon::prelude::*;

use crate::kernels::Epilogue;

/// Output columns per packed panel: two `zmm` registers of f32.
pub const NR: usize = 32;
/// Rows per micro-tile: f32 and one-plane int8, and two-plane int8 (whose second
/// weight plane doubles the accumulators).
const MR: usize = 12;
const MR_INT8: usize = 6;
/// The second weight plane's step, as a fraction of the first's.
const LO: f32 = 254.0;

/// Arithmetic of the frozen linears on the CPU.
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
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Int8 => "int8",
            Precision::Int8Fast => "int8-fast",
        }
    }

    /// int8 weight planes per output column (0 for f32).
    fn weight_planes(self) -> usize {
        match self {
            Precision::F32 => 0,
            Precision::Int8 => 2,
            Precision::Int8Fast => 1,
        }
    }

    /// Whether the frozen linears run on the int8 kernels.
    pub fn is_int8(self) -> bool {
        self.weight_planes() > 0
    }

    /// Whether this CPU can run the packed kernels of this precision.
    pub fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let f = std::arch::is_x86_feature_detected!("avx512f");
            match self {
                Precision::F32 => f,
                Precision::Int8 | Precision::Int8Fast => {
                    f && std::arch::is_x86_feature_detected!("avx512bw")
                        && std::arch::is_x86_feature_detected!("avx512vnni")
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "int8" => Ok(Precision::Int8),
            "int8-fast" => Ok(Precision::Int8Fast),
            other => Err(format!(
                "unknown precision `{other}` (expected f32, int8 or int8-fast)"
            )),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

enum Data {
    /// Panel `p`, row `kk`, lane `j` at `(p·k + kk)·NR + j`: `W[p·NR + j, kk]`.
    F32(Vec<f32>),
    /// Panel `p`, quad `q`, plane `h`, lane `j` at `((p·k4 + q)·planes + h)·NR + j`:
    /// four int8 values (first in the low byte) of `W[p·NR + j, 4q .. 4q + 4]`: plane
    /// 0 `round(W / scale)`, plane 1 (when `planes` is 2) the remainder in steps of
    /// `scale / LO`.
    Int8 {
        q: Vec<u32>,
        /// 1 or 2.
        planes: usize,
        /// Per input channel: `1 / s_j` applied to the activations (None: no smoothing).
        smooth: Option<Vec<f32>>,
        /// Per output column (padded to whole panels): max |W[c, :]| / 127.
        scale: Vec<f32>,
        /// Per panel, plane and column (`(p·planes + h)·NR + j`): the sum of its int8
        /// values (for the zero point).
        colsum: Vec<i32>,
    },
}

/// A weight `[o, k]` (PyTorch layout) packed for `x Wᵀ`.
pub struct PackedWeight {
    o: usize,
    k: usize,
    data: Data,
}

impl std::fmt::Debug for PackedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PackedWeight({}×{}, {})",
            self.o,
            self.k,
            self.precision()
        )
    }
}

impl PackedWeight {
    /// Packs `w` (`[o, k]` row-major). `None` when this CPU lacks the instructions.
    pub fn new(w: &[f32], o: usize, k: usize, precision: Precision) -> Option<Self> {
        Self::with_ranges(w, o, k, precision, None)
    }

    /// [`PackedWeight::new`]; for int8, `ranges` (max |x_j| of each input channel,
    /// measured on sample inputs) turns on per-channel smoothing.
    pub fn with_ranges(
        w: &[f32],
        o: usize,
        k: usize,
        precision: Precision,
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
            Precision::F32 => {
                let mut d = vec![0f32; panels * k * NR];
                d.par_chunks_mut(k * NR)
                    .enumerate()
                    .for_each(|(p, panel)| pack_panel(panel, w, k, p, o, k));
                Data::F32(d)
            }
            Precision::Int8 | Precision::Int8Fast => {
                let planes = precision.weight_planes();
                let s = ranges.map(|r| smoothing(w, o, k, r));
                let smoothed: Vec<f32>;
                let w = match &s {
                    Some(s) => {
                        smoothed = w
                            .chunks(k)
                            .flat_map(|row| row.iter().zip(s).map(|(v, s)| v * s))
                            .collect();
                        &smoothed[..]
                    }
                    None => w,
                };
                let k4 = k.div_ceil(4);
                let mut scale = vec![0f32; panels * NR];
                let mut colsum = vec![0i32; panels * planes * NR];
                let mut d = vec![0u32; panels * k4 * planes * NR];
                d.par_chunks_mut(k4 * planes * NR)
                    .zip(
                        scale
                            .par_chunks_mut(NR)
                            .zip(colsum.par_chunks_mut(planes * NR)),
                    )
                    .enumerate()
                    .for_each(|(p, (panel, (sc, cs)))| {
                        for j in 0..NR.min(o - p * NR) {
                            let row = &w[(p * NR + j) * k..][..k];
                            let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
                            let s = if amax > 0.0 && amax.is_finite() {
                                amax / 127.0
                            } else {
                                1.0
                            };
                            sc[j] = s;
                            let (mut sum_hi, mut sum_lo) = (0i32, 0i32);
                            for q in 0..k4 {
                                let (mut hi, mut lo) = (0u32, 0u32);
                                for b in 0..4 {
                                    let Some(v) = row.get(4 * q + b) else {
                                        continue;
                                    };
                                    let qh = (v / s).round().clamp(-127.0, 127.0);
                                    let ql = ((v / s - qh) * LO).round().clamp(-127.0, 127.0);
                                    let (qh, ql) = (qh as i32, ql as i32);
                                    sum_hi += qh;
                                    sum_lo += ql;
                                    hi |= ((qh as i8 as u8) as u32) << (8 * b);
                                    lo |= ((ql as i8 as u8) as u32) << (8 * b);
                                }
                                panel[(planes * q) * NR + j] = hi;
                                if planes == 2 {
                                    panel[(2 * q + 1) * NR + j] = lo;
                                }
                            }
                            cs[j] = sum_hi;
                            if planes == 2 {
                                cs[NR + j] = sum_lo;
                            }
                        }
                    });
                Data::Int8 {
                    q: d,
                    planes,
                    smooth: s.map(|s| s.iter().map(|v| 1.0 / v).collect()),
                    scale,
                    colsum,
                }
            }
        };
        Some(PackedWeight { o, k, data })
    }

    pub fn precision(&self) -> Precision {
        match self.data {
            Data::F32(_) => Precision::F32,
            Data::Int8 { planes: 2, .. } => Precision::Int8,
            Data::Int8 { .. } => Precision::Int8Fast,
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
            Data::Int8 {
                q,
                smooth,
                scale,
                colsum,
                ..
            } => {
                q.len() * 4
                    + scale.len() * 4
                    + colsum.len() * 4
                    + smooth.as_ref().map_or(0, |s| s.len() * 4)
            }
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
            Data::Int8 {
                q,
                planes,
                smooth,
                scale: col_scale,
                colsum,
            } => {
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
                    crate::kernels::activate_slice(&mut row, act);
                    // SAFETY: row r of `out` has o writable floats.
                    unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), out.add(r * o), o) };
                }
            }
        }
    }
}

/// Splits the product into (row chunk, panel group) jobs on the rayon pool; each job
/// applies `act` to what it wrote.
fn run(n: usize, job: &Tile, kind: Kind, act: Epilogue) {
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
                crate::kernels::activate_slice(row, act);
            }
        }
    });
}

/// Runs the micro-kernel over `rows` × `panels` of the product `t`, one panel at a
/// time (its packed weights stay in cache while the rows go by).
///
/// # Safety
/// As for [`Kind::tile`], for every tile of the ranges.
unsafe fn tiles(
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
fn pack_panel(panel: &mut [f32], src: &[f32], ld: usize, p: usize, n: usize, k: usize) {
    for j in 0..NR.min(n - p * NR) {
        let row = &src[(p * NR + j) * ld..][..k];
        for (kk, v) in row.iter().enumerate() {
            panel[kk * NR + j] = *v;
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
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

/// One attention head on the f32 micro-kernel: `softmax(scale · Q Kᵀ) V` for `len`
/// tokens, where row `i` of Q, K and V starts at `src[i·ld]`, `src[i·ld + kv]` and
/// `src[i·ld + 2·kv]` (`hd` values each); the context rows go to `out` at stride `ldo`.
/// K and Vᵀ are packed into panels in `buf`, the scores stay in it.
///
/// # Safety
/// The CPU has AVX-512F; `src` holds every row read; `out` has `len` rows of `hd`
/// writable values at stride `ldo`, written by no one else meanwhile.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn attend_head(
    src: &[f32],
    ld: usize,
    kv: usize,
    hd: usize,
    len: usize,
    scale: f32,
    out: *mut f32,
    ldo: usize,
    buf: &mut Vec<f32>,
) {
    let (pk, pv) = (len.div_ceil(NR), hd.div_ceil(NR));
    let (kp_len, vp_len) = (pk * hd * NR, pv * len * NR);
    buf.clear();
    buf.resize(kp_len + vp_len + len * len, 0.0);
    let (kp, rest) = buf.split_at_mut(kp_len);
    let (vp, scores) = rest.split_at_mut(vp_len);
    for (p, panel) in kp.chunks_mut(hd * NR).enumerate() {
        pack_panel(panel, &src[kv..], ld, p, len, hd);
    }
    for key in 0..len {
        let row = &src[key * ld + 2 * kv..][..hd];
        for (p, part) in row.chunks(NR).enumerate() {
            vp[(p * len + key) * NR..][..part.len()].copy_from_slice(part);
        }
    }
    // scores = scale · Q Kᵀ, then ctx = softmax(scores) V.
    let product = |a: *const f32, lda, b: *const f32, steps, c: *mut f32, ldc, cols, scale| Tile {
        a: a as *const u8,
        lda,
        b: b as *const u8,
        steps,
        c,
        ldc,
        cols,
        bias: std::ptr::null(),
        accumulate: false,
        scale,
        rows: std::ptr::null(),
        col_scale: std::ptr::null(),
        col_sum: std::ptr::null(),
    };
    let qk = product(
        src.as_ptr(),
        ld,
        kp.as_ptr(),
        hd,
        scores.as_mut_ptr(),
        len,
        len,
        scale,
    );
    // SAFETY: the tiles read rows inside `src`, `kp`, `vp` and `scores` and write the
    // valid columns of `scores` and `out` (the caller's contract).
    unsafe { tiles(&qk, Kind::F32, 0..len, 0..pk) };
    for row in scores.chunks_mut(len) {
        // SAFETY: the caller's contract (AVX-512F).
        unsafe { softmax_avx512(row) };
    }
    let av = product(scores.as_ptr(), len, vp.as_ptr(), len, out, ldo, hd, 1.0);
    // SAFETY: as above.
    unsafe { tiles(&av, Kind::F32, 0..len, 0..pv) };
}

/// `e^x` on 16 lanes: the scalar `kernels::simd::exp` (range reduction by ln 2, a
/// degree-6 polynomial, the exponent built with integer arithmetic).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn exp512(x: __m512) -> __m512 {
    const ROUND: f32 = 12_582_912.0;
    let s = _mm512_set1_ps;
    let x = _mm512_min_ps(_mm512_max_ps(x, s(-87.0)), s(88.0));
    let t = _mm512_fmadd_ps(x, s(std::f32::consts::LOG2_E), s(ROUND));
    let n = _mm512_sub_ps(t, s(ROUND));
    let r = _mm512_fnmadd_ps(n, s(0.693_145_75), x);
    let r = _mm512_fnmadd_ps(n, s(1.428_606_8e-6), r);
    let mut p = s(0.001_388_889);
    for c in [0.008_333_334, 0.041_666_668, 0.166_666_67, 0.5, 1.0, 1.0] {
        p = _mm512_fmadd_ps(p, r, s(c));
    }
    let bits = _mm512_slli_epi32::<23>(_mm512_add_epi32(
        _mm512_sub_epi32(_mm512_castps_si512(t), _mm512_set1_epi32(0x4B40_0000)),
        _mm512_set1_epi32(127),
    ));
    _mm512_mul_ps(p, _mm512_castsi512_ps(bits))
}

/// Exact (erf) GELU in place, 16 lanes at a time (masked tail). erf is a rational
/// minimax approximation, `x·P(x²) / Q(x²)` on [−4, 4] (degrees 13 and 8; within
/// 1e-7 of erf), its division a reciprocal estimate and one Newton step: no
/// exponential. Beyond ±3.9, where erf rounds to ±1 in f32, it is ±1 exactly.
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn gelu_avx512(xs: &mut [f32]) {
    const P: [f32; 7] = [
        -2.726_142_3e-10,
        2.770_681_4e-8,
        -2.101_024e-6,
        -5.692_506_4e-5,
        -7.349_906_3e-4,
        -2.954_600_1e-3,
        -1.609_603_3e-2,
    ];
    const Q: [f32; 5] = [
        -1.456_607_2e-5,
        -2.133_740_6e-4,
        -1.682_827e-3,
        -7.373_329e-3,
        -1.426_474e-2,
    ];
    let n = xs.len();
    let s = _mm512_set1_ps;
    let p = xs.as_mut_ptr();
    let mut i = 0;
    while i < n {
        let k = lane_mask(n - i);
        // SAFETY: the load and store are masked to the slice's n values.
        unsafe {
            let x = _mm512_maskz_loadu_ps(k, p.add(i));
            let u = _mm512_mul_ps(x, s(std::f32::consts::FRAC_1_SQRT_2));
            let u = _mm512_min_ps(_mm512_max_ps(u, s(-4.0)), s(4.0));
            let u2 = _mm512_mul_ps(u, u);
            let mut num = s(P[0]);
            for c in &P[1..] {
                num = _mm512_fmadd_ps(num, u2, s(*c));
            }
            num = _mm512_mul_ps(num, u);
            let mut den = s(Q[0]);
            for c in &Q[1..] {
                den = _mm512_fmadd_ps(den, u2, s(*c));
            }
            let r = _mm512_rcp14_ps(den);
            // One Newton step: r·(2 − d·r), to ~1e-7 relative.
            let r = _mm512_mul_ps(r, _mm512_fnmadd_ps(den, r, s(2.0)));
            // Beyond ±3.9 erf rounds to ±1 in f32: set it exactly, so that GELU is
            // exactly 0 far on the negative side, as the exact function.
            let one = _mm512_castsi512_ps(_mm512_or_si512(
                _mm512_and_si512(_mm512_castps_si512(u), _mm512_set1_epi32(i32::MIN)),
                _mm512_castps_si512(s(1.0)),
            ));
            let tail = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(_mm512_abs_ps(u), s(3.9));
            let erf = _mm512_mask_blend_ps(tail, _mm512_mul_ps(num, r), one);
            let half_x = _mm512_mul_ps(x, s(0.5));
            _mm512_mask_storeu_ps(p.add(i), k, _mm512_fmadd_ps(half_x, erf, half_x));
        }
        i += 16;
    }
}

/// The weights of one bottleneck laid out for [`bottleneck_rows_avx512`]: the down
/// projection transposed to `[d, rp]` and its bias to `[rp]` (`rp` = r rounded up
/// to 16 lanes, zeros beyond r), the up projection transposed to `[r, d]`.
pub(crate) struct BottleneckWeights {
    pub d: usize,
    pub r: usize,
    pub rp: usize,
    pub down_t: Vec<f32>,
    pub down_b: Vec<f32>,
    pub up_t: Vec<f32>,
    pub up_b: Vec<f32>,
}

impl BottleneckWeights {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        4 * (self.down_t.len() + self.down_b.len() + self.up_t.len() + self.up_b.len())
    }

    /// From `down` `[r, d]`, `down_b` `[r]`, `up` `[d, r]`, `up_b` `[d]`, row-major.
    pub fn new(down: &[f32], down_b: &[f32], up: &[f32], up_b: &[f32], r: usize, d: usize) -> Self {
        let rp = r.div_ceil(16) * 16;
        let mut down_t = vec![0f32; d * rp];
        let mut up_t = vec![0f32; r * d];
        for j in 0..r {
            for c in 0..d {
                down_t[c * rp + j] = down[j * d + c];
                up_t[j * d + c] = up[c * r + j];
            }
        }
        let mut db = vec![0f32; rp];
        db[..r].copy_from_slice(down_b);
        BottleneckWeights {
            d,
            r,
            rp,
            down_t,
            down_b: db,
            up_t,
            up_b: up_b.to_vec(),
        }
    }
}

/// `o = t + b_U + U act(D x + b_D)` for `rows` rows of `d` values (see
/// [`crate::kernels::bottleneck`]), four rows at a time so that every weight loaded
/// serves four rows: the down projection runs over the input's values (16 hidden
/// values per register, two independent sums per row), the up projection keeps four
/// 16-lane blocks of each of the four output rows in registers while the hidden
/// values go by.
///
/// # Safety
/// The CPU has AVX-512F; `o`, `t` and `xs` hold `rows · w.d` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn bottleneck_rows_avx512(
    o: *mut f32,
    t: *const f32,
    xs: *const f32,
    rows: usize,
    w: &BottleneckWeights,
    act: Epilogue,
) {
    let mut z = vec![0f32; 4 * w.rp];
    let mut i = 0;
    while i < rows {
        let m = (rows - i).min(4);
        let at = i * w.d;
        // SAFETY: rows i..i+m lie inside the caller's buffers.
        unsafe {
            let (o, t, x) = (o.add(at), t.add(at), xs.add(at));
            match m {
                4 => bottleneck_block::<4>(o, t, x, w, act, &mut z),
                3 => bottleneck_block::<3>(o, t, x, w, act, &mut z),
                2 => bottleneck_block::<2>(o, t, x, w, act, &mut z),
                _ => bottleneck_block::<1>(o, t, x, w, act, &mut z),
            }
        }
        i += m;
    }
}

/// `R` rows of [`bottleneck_rows_avx512`]; `z` holds `R · w.rp` hidden values.
///
/// # Safety
/// The CPU has AVX-512F; `o`, `t` and `xs` hold `R · w.d` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn bottleneck_block<const R: usize>(
    o: *mut f32,
    t: *const f32,
    xs: *const f32,
    w: &BottleneckWeights,
    act: Epilogue,
    z: &mut [f32],
) {
    let (d, r, rp) = (w.d, w.r, w.rp);
    let (dt, db, ut, ub) = (
        w.down_t.as_ptr(),
        w.down_b.as_ptr(),
        w.up_t.as_ptr(),
        w.up_b.as_ptr(),
    );
    // SAFETY: the caller's contract for o, t, xs; the weights' lengths are d·rp, rp,
    // r·d and d; z holds R·rp; every access past d in a row is masked.
    unsafe {
        let zp = z.as_mut_ptr();
        for jb in (0..rp).step_by(16) {
            let mut acc = [[_mm512_setzero_ps(); 2]; R];
            let mut k = 0;
            while k + 2 <= d {
                let w0 = _mm512_loadu_ps(dt.add(k * rp + jb));
                let w1 = _mm512_loadu_ps(dt.add((k + 1) * rp + jb));
                for (rr, acc) in acc.iter_mut().enumerate() {
                    let x = xs.add(rr * d + k);
                    acc[0] = _mm512_fmadd_ps(_mm512_set1_ps(*x), w0, acc[0]);
                    acc[1] = _mm512_fmadd_ps(_mm512_set1_ps(*x.add(1)), w1, acc[1]);
                }
                k += 2;
            }
            if k < d {
                let w0 = _mm512_loadu_ps(dt.add(k * rp + jb));
                for (rr, acc) in acc.iter_mut().enumerate() {
                    acc[0] = _mm512_fmadd_ps(_mm512_set1_ps(*xs.add(rr * d + k)), w0, acc[0]);
                }
            }
            let bias = _mm512_loadu_ps(db.add(jb));
            for (rr, acc) in acc.iter().enumerate() {
                let sum = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), bias);
                _mm512_storeu_ps(zp.add(rr * rp + jb), sum);
            }
        }
        for rr in 0..R {
            crate::kernels::activate_slice(&mut z[rr * rp..][..r], act);
        }
        let zp = z.as_ptr();
        for cb in (0..d).step_by(64) {
            let masks: [u16; 4] =
                std::array::from_fn(|v| lane_mask((d - cb).saturating_sub(16 * v)));
            let col = |v: usize| (cb + 16 * v).min(d);
            let mut acc = [[_mm512_setzero_ps(); 4]; R];
            for (rr, acc) in acc.iter_mut().enumerate() {
                for (v, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm512_add_ps(
                        _mm512_maskz_loadu_ps(masks[v], t.add(rr * d + col(v))),
                        _mm512_maskz_loadu_ps(masks[v], ub.add(col(v))),
                    );
                }
            }
            for j in 0..r {
                let row = ut.add(j * d);
                let u: [__m512; 4] =
                    std::array::from_fn(|v| _mm512_maskz_loadu_ps(masks[v], row.add(col(v))));
                for (rr, acc) in acc.iter_mut().enumerate() {
                    let bz = _mm512_set1_ps(*zp.add(rr * rp + j));
                    for (v, acc) in acc.iter_mut().enumerate() {
                        *acc = _mm512_fmadd_ps(bz, u[v], *acc);
                    }
                }
            }
            for (rr, acc) in acc.iter().enumerate() {
                for (v, acc) in acc.iter().enumerate() {
                    _mm512_mask_storeu_ps(o.add(rr * d + col(v)), masks[v], *acc);
                }
            }
        }
    }
}

/// Softmax of one row in place, 16 lanes at a time (masked tail).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn softmax_avx512(row: &mut [f32]) {
    let n = row.len();
    let mask = |i: usize| lane_mask(n - i);
    let p = row.as_mut_ptr();
    // SAFETY: every load and store is masked to the row's n values.
    unsafe {
        let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
        let mut i = 0;
        while i < n {
            let v = _mm512_mask_loadu_ps(m, mask(i), p.add(i));
            m = _mm512_max_ps(m, v);
            i += 16;
        }
        let mx = _mm512_set1_ps(_mm512_reduce_max_ps(m));
        let mut sum = _mm512_setzero_ps();
        let mut i = 0;
        while i < n {
            let k = mask(i);
            let v = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, p.add(i)), mx));
            sum = _mm512_mask_add_ps(sum, k, sum, v);
            _mm512_mask_storeu_ps(p.add(i), k, v);
            i += 16;
        }
        let inv = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(sum));
        let mut i = 0;
        while i < n {
            let k = mask(i);
            _mm512_mask_storeu_ps(
                p.add(i),
                k,
                _mm512_mul_ps(_mm512_maskz_loadu_ps(k, p.add(i)), inv),
            );
            i += 16;
        }
    }
}

/// Per-row quantisation of the activations: `x ≈ scale · (q − zero)`.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
struct RowQ {
    scale: f32,
    zero: i32,
    /// The rounding error (`scale·√(k/12)`) exceeds [`COARSE`] of the row's norm.
    coarse: bool,
}

/// The relative rounding error of a row above which it is quantised to 16 bits. On
/// MiniLM over SciFact documents 2.5% sends 3–4% of the rows to f32 ([CLS], [SEP] and
/// a few others) and keeps every embedding within 0.9998 cosine of f32; 5% would
/// leave the rows of an empty text at 0.998.
const COARSE: f32 = 0.025;

/// A product `c = a · packed b`, or (after [`Tile::at`]) one micro-tile of it: up to
/// MR rows of `a` against one packed panel of `b`.
#[derive(Clone, Copy)]
struct Tile {
    /// f32 values, or uint8 quads (u32) for int8.
    a: *const u8,
    /// Row stride of `a` in 4-byte elements.
    lda: usize,
    /// The packed weight, or (in a tile) its panel: `steps` groups of NR lanes per
    /// plane.
    b: *const u8,
    /// k (f32) or k/4 rounded up (int8 quads).
    steps: usize,
    /// The output, or the tile's first output element.
    c: *mut f32,
    /// Row stride of `c`.
    ldc: usize,
    /// Valid output columns: all of them in a product, ≤ NR in a tile.
    cols: usize,
    /// Per output column, or null.
    bias: *const f32,
    accumulate: bool,
    scale: f32,
    /// int8: per row of `a`.
    rows: *const RowQ,
    /// int8: per output column (whole panels).
    col_scale: *const f32,
    /// int8: per panel, plane and column.
    col_sum: *const i32,
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

/// The mask of the first `min(n, 16)` lanes of a 16-lane register.
fn lane_mask(n: usize) -> u16 {
    if n >= 16 {
        0xFFFF
    } else {
        ((1u32 << n) - 1) as u16
    }
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

/// Quantises each row of `x` `[n, k]` to uint8 with its own scale and zero point
/// (covering the row's min..max, 0 included); returns the rows as `⌈k/4⌉` quads each.
fn quantize_rows(x: &[f32], n: usize, k: usize, smooth: Option<&[f32]>) -> (Vec<u32>, Vec<RowQ>) {
    let k4 = k.div_ceil(4);
    let mut q = vec![0u32; n * k4];
    let mut rows = vec![RowQ::default(); n];
    q.par_chunks_mut(k4 * 16)
        .zip(rows.par_chunks_mut(16).zip(x.par_chunks(k * 16)))
        .for_each(|(q, (rows, x))| quantize_chunk(q, rows, x, k, smooth));
    (q, rows)
}

/// [`quantize_rows`] for one chunk of rows, compiled for AVX-512 where the CPU has
/// it (the smoothing and norm loops then vectorise to it).
fn quantize_chunk(q: &mut [u32], rows: &mut [RowQ], x: &[f32], k: usize, smooth: Option<&[f32]>) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512bw") {
        #[target_feature(enable = "avx512f,avx512bw")]
        unsafe fn fast(
            q: &mut [u32],
            rows: &mut [RowQ],
            x: &[f32],
            k: usize,
            smooth: Option<&[f32]>,
        ) {
            quantize_chunk_body(q, rows, x, k, smooth)
        }
        // SAFETY: the CPU has the features `fast` was compiled for.
        return unsafe { fast(q, rows, x, k, smooth) };
    }
    quantize_chunk_body(q, rows, x, k, smooth)
}

#[inline(always)]
fn quantize_chunk_body(
    q: &mut [u32],
    rows: &mut [RowQ],
    x: &[f32],
    k: usize,
    smooth: Option<&[f32]>,
) {
    let k4 = k.div_ceil(4);
    let mut scaled = Vec::new();
    for ((qrow, rq), xrow) in q.chunks_mut(k4).zip(rows).zip(x.chunks(k)) {
        let row = match smooth {
            None => xrow,
            Some(inv) => {
                scaled.clear();
                scaled.extend(xrow.iter().zip(inv).map(|(v, s)| v * s));
                &scaled[..]
            }
        };
        *rq = quantize_row(qrow, row);
        rq.coarse = rq.scale * (k as f32 / 12.0).sqrt() > COARSE * norm(row);
    }
}

/// Quantises the rows `which` of `x` `[n, k]` (after smoothing) to 16 bits,
/// `x ≈ s·(v − z)` with `v` in 0..=65535, and splits each into two uint8 rows of
/// `⌈k/4⌉` quads: the high bytes (scale 256·s, zero z >> 8) and the low bytes (scale
/// s, zero z & 255), whose products with a weight sum to the 16-bit one.
fn quantize_rows16(
    x: &[f32],
    which: &[usize],
    k: usize,
    smooth: Option<&[f32]>,
) -> (Vec<u32>, Vec<RowQ>) {
    let k4 = k.div_ceil(4);
    let mut q = vec![0u32; 2 * which.len() * k4];
    let mut rows = Vec::with_capacity(2 * which.len());
    for (i, r) in which.iter().enumerate() {
        let xrow = &x[r * k..][..k];
        let row: Vec<f32> = match smooth {
            None => xrow.to_vec(),
            Some(inv) => xrow.iter().zip(inv).map(|(v, s)| v * s).collect(),
        };
        let (lo, hi) = row
            .iter()
            .fold((0f32, 0f32), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
        let scale = if hi > lo { (hi - lo) / 65535.0 } else { 1.0 };
        let zero = (-lo / scale).round().clamp(0.0, 65535.0) as i32;
        let inv = 1.0 / scale;
        let (qh, ql) = q[2 * i * k4..][..2 * k4].split_at_mut(k4);
        // SAFETY: reinterpreting the u32 quads as their bytes (same memory).
        let bh = unsafe { std::slice::from_raw_parts_mut(qh.as_mut_ptr() as *mut u8, k4 * 4) };
        let bl = unsafe { std::slice::from_raw_parts_mut(ql.as_mut_ptr() as *mut u8, k4 * 4) };
        for ((h, l), v) in bh.iter_mut().zip(bl.iter_mut()).zip(&row) {
            let u = ((v * inv).round_ties_even() + zero as f32).clamp(0.0, 65535.0) as u32;
            *h = (u >> 8) as u8;
            *l = (u & 255) as u8;
        }
        rows.push(RowQ {
            scale: 256.0 * scale,
            zero: zero >> 8,
            coarse: false,
        });
        rows.push(RowQ {
            scale,
            zero: zero & 255,
            coarse: false,
        });
    }
    (q, rows)
}

fn quantize_row(q: &mut [u32], x: &[f32]) -> RowQ {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512bw") {
        // SAFETY: AVX-512BW (and F) present; `q` has ⌈len/4⌉ quads.
        return unsafe { quantize_row_avx512(q, x) };
    }
    let (lo, hi) = x
        .iter()
        .fold((0f32, 0f32), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    let rq = row_params(lo, hi);
    let inv = 1.0 / rq.scale;
    // SAFETY: reinterpreting the u32 quads as their bytes (same memory, u8 alignment).
    let bytes = unsafe { std::slice::from_raw_parts_mut(q.as_mut_ptr() as *mut u8, q.len() * 4) };
    for (b, v) in bytes.iter_mut().zip(x) {
        *b = quantize_one(*v, inv, rq.zero);
    }
    rq
}

/// SmoothQuant factors (α = ½): `s_j = √(range_j / max_i |W[i, j]|)`, kept within
/// [1/64, 64] and 1 where a channel or column is all zero.
fn smoothing(w: &[f32], o: usize, k: usize, ranges: &[f32]) -> Vec<f32> {
    let mut wmax = vec![0f32; k];
    for row in w.chunks(k).take(o) {
        for (m, v) in wmax.iter_mut().zip(row) {
            *m = m.max(v.abs());
        }
    }
    ranges
        .iter()
        .zip(&wmax)
        .map(|(r, m)| {
            if *r > 0.0 && *m > 0.0 && r.is_finite() {
                (r / m).sqrt().clamp(1.0 / 64.0, 64.0)
            } else {
                1.0
            }
        })
        .collect()
}

/// The Euclidean norm, with independent partial sums so that it vectorises.
#[inline(always)]
fn norm(x: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = x.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v * v;
        }
    }
    (acc.iter().sum::<f32>() + tail).sqrt()
}

/// Scale and zero point of a row whose values span `lo..=hi` (with `lo ≤ 0 ≤ hi`).
fn row_params(lo: f32, hi: f32) -> RowQ {
    let scale = if hi > lo { (hi - lo) / 255.0 } else { 1.0 };
    RowQ {
        scale,
        zero: (-lo / scale).round().clamp(0.0, 255.0) as i32,
        coarse: false,
    }
}

/// One value: round to nearest (ties to even, as the vector path), clamp to 0..=255.
fn quantize_one(v: f32, inv: f32, zero: i32) -> u8 {
    ((v * inv).round_ties_even() + zero as f32).clamp(0.0, 255.0) as u8
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantize_row_avx512(q: &mut [u32], x: &[f32]) -> RowQ {
    // SAFETY: loads stay inside `x` (tails are scalar); stores of 16 bytes go to
    // quad 4i..4i+4 of `q`, which holds ⌈len/4⌉ ≥ 4i + 4 quads for full blocks.
    unsafe {
        let full = x.len() / 16;
        let (mut lo, mut hi) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        for i in 0..full {
            let v = _mm512_loadu_ps(x.as_ptr().add(16 * i));
            lo = _mm512_min_ps(lo, v);
            hi = _mm512_max_ps(hi, v);
        }
        let (mut l, mut h) = (_mm512_reduce_min_ps(lo), _mm512_reduce_max_ps(hi));
        for v in &x[16 * full..] {
            l = l.min(*v);
            h = h.max(*v);
        }
        let rq = row_params(l, h);
        let inv = 1.0 / rq.scale;
        let (vinv, vz) = (_mm512_set1_ps(inv), _mm512_set1_epi32(rq.zero));
        let (vmin, vmax) = (_mm512_setzero_si512(), _mm512_set1_epi32(255));
        let out = q.as_mut_ptr() as *mut u8;
        for i in 0..full {
            let v = _mm512_loadu_ps(x.as_ptr().add(16 * i));
            // cvtps rounds to nearest even (the default MXCSR mode).
            let r = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(v, vinv)), vz);
            let r = _mm512_min_epi32(_mm512_max_epi32(r, vmin), vmax);
            _mm_storeu_si128(out.add(16 * i) as *mut __m128i, _mm512_cvtepi32_epi8(r));
        }
        for (j, v) in x.iter().enumerate().skip(16 * full) {
            *out.add(j) = quantize_one(*v, inv, rq.zero);
        }
        rq
    }
}

#[cfg(test)]
mod tests {
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
        for precision in [Precision::F32, Precision::Int8, Precision::Int8Fast] {
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
                assert_eq!(pw.precision(), precision);
                let exact = reference(&x, &w, n, o, k);
                let want = match precision {
                    Precision::F32 => exact.clone(),
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
        for precision in [Precision::F32, Precision::Int8, Precision::Int8Fast] {
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
                    crate::kernels::activate_slice(&mut want, act);
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
        for precision in [Precision::Int8, Precision::Int8Fast] {
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

    #[test]
    fn quantized_rows_round_trip_within_half_a_step() {
        let x: Vec<f32> = (0..37).map(|i| (i as f32 - 10.0) * 0.37).collect();
        let mut q = vec![0u32; 10];
        let rq = quantize_row(&mut q, &x);
        let bytes: Vec<u8> = q.iter().flat_map(|v| v.to_le_bytes()).collect();
        for (v, b) in x.iter().zip(&bytes) {
            let back = rq.scale * (*b as i32 - rq.zero) as f32;
            assert!((back - v).abs() <= 0.5 * rq.scale + 1e-6, "{v} → {back}");
        }
        // A zero row stays zero.
        let rq = quantize_row(&mut q, &[0.0; 37]);
        assert_eq!(rq.zero, 0);
    }

    #[test]
    fn precision_parses_and_names() {
        assert_eq!("int8".parse::<Precision>().unwrap(), Precision::Int8);
        assert_eq!("f32".parse::<Precision>().unwrap(), Precision::F32);
        for p in [Precision::F32, Precision::Int8, Precision::Int8Fast] {
            assert_eq!(p.name().parse::<Precision>().unwrap(), p);
        }
        assert!("fp8".parse::<Precision>().unwrap_err().contains("fp8"));
    }
}
