//! A decode step's attention for continuous batching, fused for the CPU: rotate, cache, attend.
//!
//! For each sequence b and KV head g, one task: the new key (row b, head g of the step's `k`
//! projection) is normalized (q/k norm, where the model has one) and rotated by RoPE at the
//! sequence's position, then stored with the new value at that position of the sequence's pool
//! slot; the query heads of group g are normalized and rotated the same way and attend over the
//! slot, the new position included ([`super::attention`]'s `decode_heads`). Composed, these are a
//! head split, a RoPE and a pool write per step and layer on the calling thread while the other
//! threads wait, the writes missing the cache where the attention reads them right after; here the
//! rows go where they are read next, by the thread that reads them, in the attention's own
//! parallel loop.
//!
//! Every row goes through the functions the separate ops use (the norm's row, the rotation, the
//! int8 quantizer), so a sequence's bits are those of single-sequence decoding.

use super::attention::decode_heads;
use super::int8_attention::on_stack_or_heap;
use super::kv_int8::{as_signed_mut, quantize_row, Stored, KEY_BLOCK};
use super::pool::Disjoint;
use super::simd_attention::Upcoming;
use candle_core::{CpuStorage, InplaceOp1, Layout, Result, Storage, Tensor};
use half::f16;
use std::cell::Cell;

/// Where each query row reads: its slot in the pool and how many positions it attends to.
#[derive(Debug, Clone, Copy)]
pub struct PoolRow {
    pub slot: usize,
    pub len: usize,
}

/// A decode step's new rows: its projections, row b for sequence b — queries `[B, H·D]`, keys and
/// values `[B, K·D]` — each row's RoPE table rows `[B, D]`, and the q and k norms (weight `[D]`,
/// ε) where the model has them.
pub struct NewRows<'a> {
    pub q: &'a Tensor,
    pub k: &'a Tensor,
    pub v: &'a Tensor,
    pub rope: (&'a Tensor, &'a Tensor),
    pub q_norm: Option<(&'a Tensor, f64)>,
    pub k_norm: Option<(&'a Tensor, f64)>,
}

/// Writes each sequence's new key and value into the pools `[S, K, C, D]` (f32, f16, or an int8
/// cache's codes with `row_scales` `[S, K, C]`) at position `rows[b].len − 1` of slot `rows[b].slot`,
/// and returns the attention of its queries over positions `0..rows[b].len`: `[1, B, H, D]`.
pub fn decode_step(
    new: &NewRows,
    pools: (&Tensor, &Tensor),
    row_scales: Option<(&Tensor, &Tensor)>,
    rows: &[PoolRow],
) -> Result<Tensor> {
    let shape = check(new, pools, row_scales, rows)?;
    let out = with_inputs(new, rows, shape, |step| {
        with_pools(pools, row_scales, |pools| match pools {
            Pools::F32(k, v) => step.run(k, v, None),
            Pools::F16(k, v) => step.run(k, v, None),
            Pools::Int8(k, v, scales) => step.run(k, v, Some(scales)),
        })
    })?;
    Tensor::from_vec(out, (1, rows.len(), shape.h, shape.d), pools.0.device())
}

/// The step's sizes, once its shapes agree: distinct slots, lengths within them, tables and norms
/// of the head size, pools that share no storage (borrowing one twice would wait on itself).
fn check(
    new: &NewRows,
    (k_pool, v_pool): (&Tensor, &Tensor),
    row_scales: Option<(&Tensor, &Tensor)>,
    rows: &[PoolRow],
) -> Result<Shape> {
    let (slots, kv, capacity, d) = k_pool.dims4()?;
    let ((b, hd), (bk, kd)) = (new.q.dims2()?, new.k.dims2()?);
    let h = hd / d.max(1);
    let shapes = d > 0 && d % 2 == 0 && hd == h * d && kv > 0 && h % kv == 0 && (bk, kd) == (b, kv * d);
    if !(shapes && b == rows.len() && new.v.dims() == new.k.dims() && v_pool.dims() == k_pool.dims()) {
        let (q, k, v) = (new.q.dims(), new.k.dims(), new.v.dims());
        candle_core::bail!("decode step: q {q:?}, k {k:?}, v {v:?} into pools {:?}", k_pool.dims());
    }
    let mut seen = vec![false; slots];
    let distinct = rows.iter().all(|r| r.slot < slots && !std::mem::replace(&mut seen[r.slot], true));
    let fits = rows.iter().all(|r| (1..=capacity).contains(&r.len));
    let tables = [new.rope.0, new.rope.1].iter().all(|t| t.dims() == [b, d]);
    let norms = [new.q_norm, new.k_norm].iter().flatten().all(|(w, _)| w.dims() == [d]);
    if !(distinct && fits && tables && norms) {
        candle_core::bail!(
            "decode step: rows {rows:?} (distinct slots of {capacity} positions), tables and norms of {d}"
        );
    }
    if let Some((k_scales, v_scales)) = row_scales {
        let dims = [slots, kv, capacity];
        if !super::kv_int8::holds_blocks(capacity, d) || k_scales.dims() != dims || v_scales.dims() != dims {
            candle_core::bail!("int8 decode step: codes {:?}, scales {:?}", k_pool.dims(), k_scales.dims());
        }
    }
    let written: Vec<&Tensor> =
        [k_pool, v_pool].into_iter().chain(row_scales.into_iter().flat_map(|(a, b)| [a, b])).collect();
    let guards: Vec<_> = written.iter().map(|t| t.storage_and_layout().0).collect();
    if guards.iter().enumerate().any(|(i, a)| guards[..i].iter().any(|b| std::ptr::eq(&**a, &**b))) {
        candle_core::bail!("decode step: the key and value pools (and scales) must not share storage");
    }
    Ok(Shape { h, kv, d, capacity })
}

/// Runs `f` on the step's inputs as f32 slices, borrowed from their tensors.
fn with_inputs<R>(new: &NewRows, rows: &[PoolRow], shape: Shape, f: impl FnOnce(&Step) -> Result<R>) -> Result<R> {
    let norms = [new.q_norm, new.k_norm];
    let mut inputs = vec![new.q, new.k, new.v, new.rope.0, new.rope.1];
    inputs.extend(norms.iter().flatten().map(|(w, _)| *w));
    let inputs: Vec<Tensor> = inputs.into_iter().map(|t| t.contiguous()).collect::<Result<_>>()?;
    let guards: Vec<_> = inputs.iter().map(|t| t.storage_and_layout()).collect();
    let data = guards
        .iter()
        .map(|(s, l)| match &**s {
            Storage::Cpu(cpu) => super::cpu::f32_slice(cpu, l),
            _ => candle_core::bail!("decode step: CPU tensors"),
        })
        .collect::<Result<Vec<_>>>()?;
    // The norms' weights follow the tables, the q norm's first.
    let q_weight = new.q_norm.map(|_| data[5]);
    let k_weight = new.k_norm.map(|_| data[5 + usize::from(new.q_norm.is_some())]);
    let step = Step {
        q: data[0],
        k: data[1],
        v: data[2],
        rope: (data[3], data[4]),
        q_norm: q_weight.zip(new.q_norm.map(|(_, eps)| eps as f32)),
        k_norm: k_weight.zip(new.k_norm.map(|(_, eps)| eps as f32)),
        rows,
        shape,
    };
    f(&step)
}

/// The pools' data, borrowed mutably: f32 or f16 rows, or an int8 cache's codes and scales.
enum Pools<'a> {
    F32(&'a mut [f32], &'a mut [f32]),
    F16(&'a mut [f16], &'a mut [f16]),
    Int8(&'a mut [i8], &'a mut [i8], (&'a mut [f32], &'a mut [f32])),
}

/// Runs `f` on the pools (and an int8 cache's scales) borrowed mutably, each inside an in-place op.
fn with_pools<R>(
    (k_pool, v_pool): (&Tensor, &Tensor),
    row_scales: Option<(&Tensor, &Tensor)>,
    f: impl FnOnce(Pools) -> R,
) -> Result<R> {
    with_storage_mut(k_pool, |ks, kl| {
        with_storage_mut(v_pool, |vs, vl| {
            let (k0, v0) = (start(kl)?, start(vl)?);
            match (ks, vs, row_scales) {
                (CpuStorage::U8(k), CpuStorage::U8(v), Some((k_scales, v_scales))) => {
                    with_storage_mut(k_scales, |kss, ksl| {
                        with_storage_mut(v_scales, |vss, vsl| match (kss, vss) {
                            (CpuStorage::F32(kss), CpuStorage::F32(vss)) => {
                                let scales = (&mut kss[start(ksl)?..], &mut vss[start(vsl)?..]);
                                Ok(f(Pools::Int8(as_signed_mut(&mut k[k0..]), as_signed_mut(&mut v[v0..]), scales)))
                            }
                            _ => candle_core::bail!("int8 decode step: f32 scales"),
                        })
                    })
                }
                (_, _, Some(_)) => candle_core::bail!("int8 decode step: the pools must be U8"),
                (CpuStorage::F16(k), CpuStorage::F16(v), None) => Ok(f(Pools::F16(&mut k[k0..], &mut v[v0..]))),
                (CpuStorage::F32(k), CpuStorage::F32(v), None) => Ok(f(Pools::F32(&mut k[k0..], &mut v[v0..]))),
                _ => candle_core::bail!("decode step: f32 or f16 pools, or an int8 cache's U8 codes"),
            }
        })
    })
}

/// The sizes of a step: query heads, KV heads, head size, slot capacity.
#[derive(Clone, Copy)]
struct Shape {
    h: usize,
    kv: usize,
    d: usize,
    capacity: usize,
}

/// A step's inputs as slices.
struct Step<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    rope: (&'a [f32], &'a [f32]),
    q_norm: Option<(&'a [f32], f32)>,
    k_norm: Option<(&'a [f32], f32)>,
    rows: &'a [PoolRow],
    shape: Shape,
}

impl Step<'_> {
    /// Row `row`'s head `head` of `x` (`[B, n·D]`) normalized and rotated into `out`.
    fn prepare(&self, x: &[f32], n: usize, (row, head): (usize, usize), norm: Option<(&[f32], f32)>, out: &mut [f32]) {
        let d = self.shape.d;
        let x = &x[(row * n + head) * d..][..d];
        match norm {
            Some((w, eps)) => out.iter_mut().zip(super::norm::normalized(x, w, eps).1).for_each(|(o, v)| *o = v),
            None => out.copy_from_slice(x),
        }
        super::heads::rotate_row(out, &self.rope.0[row * d..][..d], &self.rope.1[row * d..][..d], 1.0);
    }

    /// Every (sequence, KV head) task: store the new key and value, attend. `[B·H·D]` out.
    fn run<T: Stores>(&self, k: &mut [T], v: &mut [T], scales: Option<(&mut [f32], &mut [f32])>) -> Vec<f32> {
        let Shape { h, kv, d, capacity } = self.shape;
        let (rep, scale) = (h / kv, 1.0 / (d as f32).sqrt());
        let (k, v) = (Disjoint::new(k), Disjoint::new(v));
        let scales = scales.map(|(ks, vs)| (Disjoint::new(ks), Disjoint::new(vs)));
        // Task i: row i / kv, and the pool's KV head of its slot and group i % kv.
        let head_of = |i: usize| self.rows[i / kv].slot * kv + i % kv;
        let tasks = self.rows.len() * kv;
        // Each thread takes a run of tasks, so its next task is most likely i + 1: that task's keys
        // (whole blocks of its positions) are asked for while task i reads its own.
        super::pool::filled_in_runs(tasks * rep * d, rep * d, |i, o| {
            let upcoming = match i + 1 < tasks {
                true => Upcoming {
                    from: k.address(head_of(i + 1) * capacity * d) as *const u8,
                    bytes: self.rows[(i + 1) / kv].len.div_ceil(KEY_BLOCK) * KEY_BLOCK * d * size_of::<T>(),
                },
                false => Upcoming::NONE,
            };
            let (row, group, head) = (i / kv, i % kv, head_of(i));
            let len = self.rows[row].len;
            // SAFETY: the slots are distinct, so each task owns its (slot, KV head) rows.
            let (k, v) =
                unsafe { (k.part(head * capacity * d, capacity * d), v.part(head * capacity * d, capacity * d)) };
            let scales = scales
                .as_ref()
                .map(|(ks, vs)| unsafe { (ks.part(head * capacity, len), vs.part(head * capacity, len)) });
            let (mut stack, mut heap) = ([0f32; 1024], Vec::new());
            let buffer = on_stack_or_heap(&mut stack, &mut heap, (rep + 1) * d);
            let (queries, new) = buffer.split_at_mut(rep * d);
            self.prepare(self.k, kv, (row, group), self.k_norm, new);
            let key_scale = T::store(new, k, len - 1, Stored::Keys);
            let value_scale = T::store(&self.v[(row * kv + group) * d..][..d], v, len - 1, Stored::Values);
            for (j, query) in queries.chunks_exact_mut(d).enumerate() {
                self.prepare(self.q, h, (row, group * rep + j), self.q_norm, query);
            }
            let (mut scores, mut lse) = (vec![0f32; rep * len], vec![0f32; rep]);
            let row_scales = scales.map(|(ks, vs)| {
                ks[len - 1] = key_scale;
                vs[len - 1] = value_scale;
                (&*ks, &*vs)
            });
            decode_heads(queries, (&*k, &*v), row_scales, len, d, scale, &mut scores, o, &mut lse, upcoming);
        })
    }
}

/// A pool element type that stores one f32 row at a position of one KV head's rows.
trait Stores: super::simd::KvElem {
    /// Stores `x` at position `at` of `to` (laid out as `stored` for int8 codes); returns the row's
    /// int8 scale (1 for the others).
    fn store(x: &[f32], to: &mut [Self], at: usize, stored: Stored) -> f32;
}

impl Stores for f32 {
    fn store(x: &[f32], to: &mut [f32], at: usize, _: Stored) -> f32 {
        to[at * x.len()..][..x.len()].copy_from_slice(x);
        1.0
    }
}

impl Stores for f16 {
    fn store(x: &[f32], to: &mut [f16], at: usize, _: Stored) -> f32 {
        use half::slice::HalfFloatSliceExt;
        to[at * x.len()..][..x.len()].convert_from_f32_slice(x);
        1.0
    }
}

impl Stores for i8 {
    fn store(x: &[f32], to: &mut [i8], at: usize, stored: Stored) -> f32 {
        let (mut stack, mut heap) = ([0u8; 256], Vec::new());
        let codes = on_stack_or_heap(&mut stack, &mut heap, x.len());
        let scale = quantize_row(x, codes);
        stored.place(super::kv_int8::as_signed(codes), at, to);
        scale
    }
}

/// Where a contiguous tensor's data starts in its storage.
fn start(layout: &Layout) -> Result<usize> {
    match layout.contiguous_offsets() {
        Some((start, _)) => Ok(start),
        None => candle_core::bail!("decode step: the pools must be contiguous"),
    }
}

/// Runs `f` on `t`'s CPU storage borrowed mutably — inside an in-place op, which holds the
/// storage's write lock meanwhile (nested calls borrow several tensors at once).
fn with_storage_mut<R>(t: &Tensor, f: impl FnOnce(&mut CpuStorage, &Layout) -> Result<R>) -> Result<R> {
    struct Borrow<F, R> {
        f: Cell<Option<F>>,
        out: Cell<Option<Result<R>>>,
    }
    impl<F: FnOnce(&mut CpuStorage, &Layout) -> Result<R>, R> InplaceOp1 for Borrow<F, R> {
        fn name(&self) -> &'static str {
            "borrow-storage"
        }

        fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
            if let Some(f) = self.f.take() {
                self.out.set(Some(f(storage, layout)));
            }
            Ok(())
        }
    }
    let borrow = Borrow { f: Cell::new(Some(f)), out: Cell::new(None) };
    t.inplace_op1(&borrow)?;
    match borrow.out.into_inner() {
        Some(out) => out,
        None => candle_core::bail!("decode step: a CPU tensor"),
    }
}
