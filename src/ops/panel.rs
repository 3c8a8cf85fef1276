//! Panel-packed f32 weights for CPU inference: one matmul kernel for every number of rows.
//!
//! Decoding multiplies a few rows (one per running sequence) by every weight matrix. In PyTorch's
//! `[n, k]` layout a vectorized dot product runs along `k`, and every (row, feature) pair ends with a
//! reduction of its vector lanes. Packed as panels of 16 features, `[n/16, k, 16]` with
//! `panel[p][i][j] = W[16p + j][i]`, one load brings input `i`'s weights for 16 features, and the
//! product is the register tile of every BLAS: broadcast `x[r][i]`, multiply-add into one
//! accumulator vector per (row, 16 features), store — no reductions, each weight loaded once per
//! group of up to 8 rows.
//!
//! Every output is one chain of fused multiply-adds `acc ← x[r][i]·W[f][i] + acc` over
//! `i = 0, 1, …, k−1` from zero, whatever the number of rows, the tile or the vector width (AVX-512
//! and AVX2 give the same bits): a sequence's projections are the same bits alone, beside others in
//! a decode batch, or in a prompt. Inference only: there is no backward (training keeps `[n, k]`).

use super::cpu::f32_slice;
use super::pool;
use super::simd;
use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Result, Shape, Tensor};

/// Features per panel: one AVX-512 register, two AVX2 registers.
pub const WIDTH: usize = 16;

/// How many inputs ahead (64-byte lines of a panel) the tiles prefetch the weights.
pub(super) const AHEAD: usize = 32;

/// Panels per parallel task (64 output features).
const PANELS_PER_TASK: usize = 4;

/// Whether `w` is a packed weight `[n/16, k, 16]` (every unpacked weight is 2-D).
pub fn is_packed(w: &Tensor) -> bool {
    w.rank() == 3 && w.dtype() == DType::F32 && w.dims()[2] == WIDTH
}

/// Whether a weight `[n, k]` can be packed: f32, on the CPU, `n` a multiple of 16.
pub fn packable(w: &Tensor) -> bool {
    w.rank() == 2 && w.dtype() == DType::F32 && matches!(w.device(), Device::Cpu) && w.dims()[0].is_multiple_of(WIDTH)
}

/// `[n, k]` → panels `[n/16, k, 16]`, written straight from the weight's data (no autograd graph
/// holding the original alive).
pub fn pack(w: &Tensor) -> Result<Tensor> {
    let (n, k) = w.dims2()?;
    if !packable(w) {
        candle_core::bail!("panels: cannot pack a {:?} {n}×{k} weight on {:?}", w.dtype(), w.device());
    }
    let mut out = vec![0f32; n * k];
    super::cpu::with_f32(w, |data| {
        for (f, row) in data.chunks_exact(k).enumerate() {
            let (p, j) = (f / WIDTH, f % WIDTH);
            for (i, &v) in row.iter().enumerate() {
                out[(p * k + i) * WIDTH + j] = v;
            }
        }
    })?;
    Tensor::from_vec(out, (n / WIDTH, k, WIDTH), w.device())
}

/// Panels `[n/16, k, 16]` → the weight `[n, k]` they hold.
pub fn unpack(p: &Tensor) -> Result<Tensor> {
    let (panels, k, _) = p.dims3()?;
    p.transpose(1, 2)?.contiguous()?.reshape((panels * WIDTH, k))
}

/// `x · Wᵀ` `[m, n]` for `x` `[m, k]` and `W` packed as panels.
pub fn matmul_nt(x: &Tensor, panels: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&panels.contiguous()?, PanelMatmul)
}

/// `x · Wᵢᵀ` for several panel weights that share the input `x` `[m, k]`, in one parallel loop.
pub fn matmul_nt_many(x: &Tensor, ws: &[&Tensor]) -> Result<Vec<Tensor>> {
    let (m, k) = x.dims2()?;
    let ws = ws.iter().map(|w| w.contiguous()).collect::<Result<Vec<_>>>()?;
    for w in &ws {
        let (_, k2, width) = w.dims3()?;
        if !is_packed(w) || k2 != k || width != WIDTH {
            candle_core::bail!("panel matmul: {m}×{k} · {:?} {:?}", w.dtype(), w.dims());
        }
    }
    let storages: Vec<_> = ws.iter().map(|w| w.storage_and_layout()).collect();
    let slices = storages
        .iter()
        .map(|(s, l)| match &**s {
            candle_core::Storage::Cpu(cpu) => f32_slice(cpu, l),
            _ => candle_core::bail!("panel matmul: panels live on the CPU"),
        })
        .collect::<Result<Vec<_>>>()?;
    let outs = super::cpu::with_f32(x, |x| product(x, &slices, m, k))?;
    outs.into_iter().zip(&ws).map(|(o, w)| Tensor::from_vec(o, (m, w.dim(0)? * WIDTH), x.device())).collect()
}

struct PanelMatmul;

impl CustomOp2 for PanelMatmul {
    fn name(&self) -> &'static str {
        "panel-matmul"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (m, k) = l1.shape().dims2()?;
        let (panels, k2, width) = l2.shape().dims3()?;
        if k != k2 || width != WIDTH {
            candle_core::bail!("panel matmul: {m}×{k} · panels {panels}×{k2}×{width}");
        }
        let out = product(f32_slice(s1, l1)?, &[f32_slice(s2, l2)?], m, k).remove(0);
        Ok((CpuStorage::F32(out), Shape::from((m, panels * WIDTH))))
    }
}

/// The instruction set the tiles use, with its row-group size: as many rows as leave registers for
/// the weights (AVX-512: 8 rows × 2 panels = 16 of 32 registers; AVX2: 6 rows × 2 halves of a
/// panel = 12 of 16).
#[derive(Clone, Copy, PartialEq)]
enum Isa {
    Avx512,
    Avx2,
    Portable,
}

impl Isa {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        match simd::level() {
            2 => return Isa::Avx512,
            1 => return Isa::Avx2,
            _ => {}
        }
        Isa::Portable
    }

    fn group(self) -> usize {
        match self {
            Isa::Avx512 => 8,
            Isa::Avx2 => 6,
            Isa::Portable => 4,
        }
    }
}

/// `x·Wᵢᵀ` as `[m, nᵢ]` for each weight of `ws` (panels `[nᵢ/16, k, 16]`). Each thread takes a run
/// of tasks of a few panels of one weight and runs every group of rows against them (a panel is read
/// from memory once, then from cache), writing their columns of that weight's output in place.
/// Weights that share an input (q, k and v; gate and up) go through one parallel loop.
fn product(x: &[f32], ws: &[&[f32]], m: usize, k: usize) -> Vec<Vec<f32>> {
    let isa = Isa::detect();
    let group = isa.group();
    let panel_len = k * WIDTH;
    let panels: Vec<usize> = ws.iter().map(|w| w.len() / panel_len).collect();
    let work = |i: usize, panels: std::ops::Range<usize>, out: &OutPtr, n: usize, _follows: bool| {
        let w = ws[i];
        let mut p = panels.start;
        while p < panels.end {
            let pair = isa == Isa::Avx512 && p + 1 < panels.end;
            let np = if pair { 2 } else { 1 };
            let ws = &w[p * panel_len..(p + np) * panel_len];
            for r0 in (0..m).step_by(group) {
                let rows = group.min(m - r0);
                // The first group streams this pair from memory: prefetch ahead in it. The
                // others find it in cache and prefetch the next pair instead, so memory is
                // never idle.
                let ahead = if r0 == 0 { AHEAD * WIDTH } else { np * panel_len };
                let pf = ws.as_ptr().wrapping_add(ahead);
                // SAFETY: rows r0..r0+rows of columns 16p..16(p+np) lie inside the output,
                // and no other task writes these columns.
                unsafe {
                    tile(isa, rows, pair, &x[r0 * k..(r0 + rows) * k], (ws, pf), k, out.at(r0 * n + p * WIDTH), n)
                };
            }
            p += np;
        }
    };
    // SAFETY: every task writes all m rows of its panels' columns.
    unsafe { for_each_panel_task(m, &panels, &work) }
}

/// Panels per task for a weight of `panels` panels over `threads` threads: [`PANELS_PER_TASK`], or
/// more (an even count, at most 16) while every thread still gets four tasks — a task streams its
/// panels one after the other, and only its first pair starts cold.
fn panels_per_task(panels: usize, threads: usize) -> usize {
    (panels / (4 * threads.max(1)) / 2 * 2).clamp(PANELS_PER_TASK, 16)
}

/// A task of [`for_each_panel_task`]: `(weight, its panels, that weight's output, output width,
/// follows)`, `follows` true when the same thread ran the task before it (the panels before these, or
/// the previous weight's last) just now: it has likely prefetched these panels.
pub(super) type PanelWork<'a> = dyn Fn(usize, std::ops::Range<usize>, &OutPtr, usize, bool) + Sync + 'a;

/// The parallel loop of a product over several weights sharing an input: each task takes
/// [`panels_per_task`] panels of one weight (weight after weight) and runs `work(weight, panels,
/// out, n, follows)`, which writes those panels' 16-column blocks of that weight's output `[m, n]`
/// (`n = 16 × its panels`) in place. Each thread takes a run of consecutive tasks
/// ([`pool::for_each_in_runs`]): it streams its share of the weights in order, so a task can
/// prefetch the panels after its own. Returns the outputs.
///
/// # Safety
/// `work` must write every row of every column of the panels it is given.
pub(super) unsafe fn for_each_panel_task(m: usize, panels: &[usize], work: &PanelWork) -> Vec<Vec<f32>> {
    let mut outs: Vec<Vec<f32>> = panels.iter().map(|p| Vec::with_capacity(m * p * WIDTH)).collect();
    let bases: Vec<OutPtr> = outs.iter_mut().map(|o| OutPtr(o.as_mut_ptr())).collect();
    // Each weight's panels per task, its first task, and the total at the end.
    let threads = pool::threads();
    let per_task = |i: usize| panels_per_task(panels[i], threads);
    let mut starts = vec![0];
    for (i, p) in panels.iter().enumerate() {
        starts.push(starts[i] + p.div_ceil(per_task(i)));
    }
    pool::for_each_in_runs(starts[panels.len()], &|t, follows| {
        let i = starts.partition_point(|&s| s <= t) - 1;
        let first = (t - starts[i]) * per_task(i);
        work(i, first..(first + per_task(i)).min(panels[i]), &bases[i], panels[i] * WIDTH, follows);
    });
    for (out, p) in outs.iter_mut().zip(panels) {
        // SAFETY: the tasks above wrote every (row, column) of the m·n values (the caller's
        // contract), and all have finished.
        unsafe { out.set_len(m * p * WIDTH) };
    }
    outs
}

/// The output, shared by the tasks that write disjoint columns of it.
pub(super) struct OutPtr(pub(super) *mut f32);
// SAFETY: each task writes only its own columns (see `product`).
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// # Safety
    /// `i` must lie inside the output.
    pub(super) unsafe fn at(&self, i: usize) -> *mut f32 {
        unsafe { self.0.add(i) }
    }
}

/// One register tile: `rows` rows (`x` `[rows, k]`) against one panel, or two when `pair` (`w` the
/// panels one after the other, `[k][16]` each). Row r's 16 products with panel q go to
/// `out + r·row_stride + 16q`.
///
/// # Safety
/// `out` must be valid for those writes, and no other thread may access them meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    isa: Isa,
    rows: usize,
    pair: bool,
    x: &[f32],
    (w, pf): (&[f32], *const f32),
    k: usize,
    out: *mut f32,
    row_stride: usize,
) {
    let np = if pair { 2 } else { 1 };
    assert!(
        (1..=isa.group()).contains(&rows) && x.len() == rows * k && w.len() == np * k * WIDTH,
        "panel tile: bad sizes"
    );
    macro_rules! rows {
        ($f:ident, $($r:literal)*) => {
            match rows { $($r => $f::<$r>(x, (w, pf), k, out, row_stride, pair),)* _ => unreachable!("rows ≤ group") }
        };
    }
    // SAFETY: the instruction set was detected; the sizes were checked above; `out` is the caller's.
    unsafe {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => rows!(tile_avx512, 1 2 3 4 5 6 7 8),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => rows!(tile_avx2, 1 2 3 4 5 6),
            _ => rows!(tile_portable, 1 2 3 4),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_avx512<const R: usize>(
    x: &[f32],
    w: (&[f32], *const f32),
    k: usize,
    out: *mut f32,
    stride: usize,
    pair: bool,
) {
    if pair {
        unsafe { tile_avx512_np::<R, 2>(x, w, k, out, stride) }
    } else {
        unsafe { tile_avx512_np::<R, 1>(x, w, k, out, stride) }
    }
}

/// AVX-512: one register per (row, panel).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_avx512_np<const R: usize, const NP: usize>(
    x: &[f32],
    (w, pf): (&[f32], *const f32),
    k: usize,
    out: *mut f32,
    stride: usize,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); NP]; R];
    let (xp, wp) = (x.as_ptr(), w.as_ptr());
    for i in 0..k {
        let mut wv = [_mm512_setzero_ps(); NP];
        for q in 0..NP {
            // The panels stream from memory once per step; ask for them ahead of the hardware.
            _mm_prefetch::<_MM_HINT_T0>(pf.wrapping_add(q * k * WIDTH + i * WIDTH) as *const i8);
        }
        for (q, v) in wv.iter_mut().enumerate() {
            // SAFETY (all loads): `tile` checked x = k·R values, w = NP·k·16; `out` is the caller's.
            *v = unsafe { _mm512_loadu_ps(wp.add(q * k * WIDTH + i * WIDTH)) };
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            let xv = _mm512_set1_ps(unsafe { *xp.add(r * k + i) });
            for q in 0..NP {
                acc[q] = _mm512_fmadd_ps(xv, wv[q], acc[q]);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (q, v) in acc.iter().enumerate() {
            unsafe { _mm512_storeu_ps(out.add(r * stride + q * WIDTH), *v) };
        }
    }
}

/// AVX2: a panel's 16 features as two registers per row.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2<const R: usize>(
    x: &[f32],
    (w, pf): (&[f32], *const f32),
    k: usize,
    out: *mut f32,
    stride: usize,
    _pair: bool,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    let (xp, wp) = (x.as_ptr(), w.as_ptr());
    for i in 0..k {
        // SAFETY (all loads): `tile` checked x = k·R values, w = k·16; `out` is the caller's.
        _mm_prefetch::<_MM_HINT_T0>(pf.wrapping_add(i * WIDTH) as *const i8);
        let lo = unsafe { _mm256_loadu_ps(wp.add(i * WIDTH)) };
        let hi = unsafe { _mm256_loadu_ps(wp.add(i * WIDTH + 8)) };
        for (r, acc) in acc.iter_mut().enumerate() {
            let xv = _mm256_set1_ps(unsafe { *xp.add(r * k + i) });
            acc[0] = _mm256_fmadd_ps(xv, lo, acc[0]);
            acc[1] = _mm256_fmadd_ps(xv, hi, acc[1]);
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        unsafe {
            _mm256_storeu_ps(out.add(r * stride), acc[0]);
            _mm256_storeu_ps(out.add(r * stride + 8), acc[1]);
        }
    }
}

/// Without AVX2/FMA: the same chain with a separate multiply and add.
unsafe fn tile_portable<const R: usize>(
    x: &[f32],
    (w, _): (&[f32], *const f32),
    k: usize,
    out: *mut f32,
    stride: usize,
    _pair: bool,
) {
    let mut acc = [[0f32; WIDTH]; R];
    for i in 0..k {
        let wi = &w[i * WIDTH..(i + 1) * WIDTH];
        for (r, acc) in acc.iter_mut().enumerate() {
            let xv = x[r * k + i];
            for j in 0..WIDTH {
                acc[j] += xv * wi[j];
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        // SAFETY: the caller's contract (see `tile`).
        unsafe { std::ptr::copy_nonoverlapping(acc.as_ptr(), out.add(r * stride), WIDTH) };
    }
}
