//! Int8 panel tiles on AMX, the matrix unit of recent Intel Xeons.
//!
//! One `tdpbsud` multiplies a tile of up to 16 activation rows × 64 inputs (signed bytes) by 16
//! features × 64 inputs of an int8 panel (the unsigned bytes `q + 128`, already the unit's operand
//! layout: 16 rows of 16 features × 4 inputs) into 16 × 16 exact i32 sums — 16,384 multiply-adds in
//! 16 cycles, where `vpdpbusd` does 64 per instruction (measured here: the unit alone 2.2 int8 TMAC/s
//! on one core, the vector unit 0.26). The sums of a group of 128 inputs (two steps) leave the unit
//! through memory, and the vector unit applies the same f32
//! operations as the AVX-512 tiles (`dot` less `128·Σa`, `fma(dot·scale, s, acc)`, group after group),
//! so every output has the same bits as on the other instruction sets. Groups of 32 inputs would
//! send the sums through memory four times as often, which costs more than the unit saves (measured):
//! only weights with 128-input groups use it.
//!
//! Linux hands a process the (8 KiB) tile state only when asked: [`available`] asks once.

use super::int8_rows::TileRows;
use super::panel::WIDTH;
use std::arch::asm;
use std::arch::x86_64::*;
use std::cell::Cell;

/// Inputs per scale of the weights this kernel takes.
pub(super) const GROUP: usize = 128;
/// Inputs per `tdpbsud`: 64 bytes per tile row.
const STEP: usize = 64;
/// Weight bytes per (panel, group) block, then 16 f32 scales.
const CODES: usize = GROUP * WIDTH;
const BLOCK: usize = super::panel_int8::block_bytes(GROUP);
/// Rows of an activation tile (the unit's most).
pub(super) const ROWS: usize = 16;

/// Whether the CPU has AMX int8 and Linux grants this process the tile state (asked once).
pub(super) fn available() -> bool {
    use std::sync::OnceLock;
    static GRANTED: OnceLock<bool> = OnceLock::new();
    *GRANTED.get_or_init(|| {
        // CPUID leaf 7: EDX bit 24 AMX-TILE, bit 25 AMX-INT8.
        let edx = __cpuid_count(7, 0).edx;
        let has = edx & (1 << 24) != 0 && edx & (1 << 25) != 0;
        has && request_tile_state()
    })
}

/// `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`: without it, the first tile instruction
/// faults.
#[cfg(target_os = "linux")]
fn request_tile_state() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a request for a permission; it touches no memory of ours.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

#[cfg(not(target_os = "linux"))]
fn request_tile_state() -> bool {
    false
}

/// The tile configuration (palette 1): `tmm0` an activation step (`rows` × 64 bytes), `tmm1`–`tmm4`
/// two panels' two steps (16 × 64 bytes each), `tmm5`/`tmm6` the sums with the two panels (`rows` ×
/// 16 i32).
#[repr(C, align(64))]
struct Config {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
    reserved_rows: [u8; 16],
}

thread_local! {
    /// The activation rows this thread's tiles are configured for (0: not configured).
    static CONFIGURED: Cell<usize> = const { Cell::new(0) };
}

/// Loads the configuration for `rows`-row tiles, unless this thread already has it.
fn configure(rows: usize) {
    if CONFIGURED.get() == rows {
        return;
    }
    let mut c = Config {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        bytes_per_row: [0; 16],
        rows: [0; 16],
        reserved_rows: [0; 16],
    };
    for t in 0..7 {
        c.rows[t] = if (1..5).contains(&t) { (STEP / 4) as u8 } else { rows as u8 };
        c.bytes_per_row[t] = 64;
    }
    // SAFETY: a valid palette-1 configuration; `available` obtained the tile state.
    unsafe { asm!("ldtilecfg [{}]", in(reg) &c, options(nostack, readonly)) };
    CONFIGURED.set(rows);
}

/// i32 sums of a tile of up to 16 rows with 16 features, 64-byte aligned for the tile stores.
#[repr(C, align(64))]
struct Sums([[i32; WIDTH]; ROWS]);

/// Activation tiles (16 rows each, the last one fewer) against `P` (1 or 2) panels one after the
/// other in `w`: row r's 16 products with panel q go to `out + r·stride + 16q`. Each group's weights
/// are loaded into the unit once (`tmm1`–`tmm4`: two steps of each panel) and multiplied by every
/// tile's rows, which the output accumulates. The weights `ahead` bytes past each block are
/// prefetched.
///
/// # Safety
/// [`available`] must have returned true; `k` must be a multiple of 128, every tile `k`-input rows
/// quantized per 128 inputs, `w` `P` panels of `k/128` blocks; `out` must be valid for those writes
/// and not accessed by other threads meanwhile.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn product<const P: usize>(
    tiles: &[TileRows<'_>],
    (w, ahead): (&[u8], usize),
    k: usize,
    out: *mut f32,
    stride: usize,
) {
    let groups = k / GROUP;
    let full = tiles.iter().take_while(|t| t.rows == ROWS).count();
    assert!(
        (1..=2).contains(&P)
            && k.is_multiple_of(GROUP)
            && w.len() == P * groups * BLOCK
            && tiles[full..].len() <= 1
            && tiles.iter().all(|t| (1..=ROWS).contains(&t.rows)
                && t.codes.len() == t.rows * k
                && t.scales.len() == t.rows * groups
                && t.neg_offsets.len() == t.rows * groups),
        "amx product: bad sizes"
    );
    // Full tiles share one configuration; the last, shorter one needs its own (which clears the
    // weights from the unit, so it takes a second pass).
    for (first, part) in [(0, &tiles[..full]), (full, &tiles[full..])] {
        if let Some(t) = part.first() {
            configure(t.rows);
            // SAFETY: the caller's contract; tile i starts at row 16·i.
            unsafe { pass::<P>(part, (w, ahead), groups, out.add(first * ROWS * stride), stride) };
        }
    }
}

/// [`product`] over tiles of equal rows (the unit configured for them).
///
/// # Safety
/// As [`product`].
#[target_feature(enable = "avx512f")]
unsafe fn pass<const P: usize>(
    tiles: &[TileRows<'_>],
    (w, ahead): (&[u8], usize),
    groups: usize,
    out: *mut f32,
    stride: usize,
) {
    let rows = tiles[0].rows;
    let panel_len = groups * BLOCK;
    let mut sums = std::mem::MaybeUninit::<[Sums; 2]>::uninit();
    let sums = sums.as_mut_ptr() as *mut Sums;
    // SAFETY: the unit was configured for these tiles.
    unsafe { asm!("tilezero tmm5", "tilezero tmm6", options(nostack)) };
    for g in 0..groups {
        let at: [*const u8; P] = std::array::from_fn(|p| w.as_ptr().wrapping_add(p * panel_len + g * BLOCK));
        for at in at {
            for line in 0..BLOCK / 64 {
                // Into L2 (the tile loads read it there; measured ≈ 1.5 % faster than into L1).
                _mm_prefetch::<_MM_HINT_T1>(at.wrapping_add(ahead + line * 64) as *const i8);
            }
        }
        // SAFETY: the blocks lie inside `w` (checked by `product`): each step is 16 rows of 64 bytes.
        // With one panel, its blocks stand in for the second too (the odd last panel of a weight).
        unsafe {
            asm!(
                "tileloadd tmm1, [{a} + {stride}*1]",
                "tileloadd tmm2, [{a} + {stride}*1 + 1024]",
                "tileloadd tmm3, [{b} + {stride}*1]",
                "tileloadd tmm4, [{b} + {stride}*1 + 1024]",
                a = in(reg) at[0],
                b = in(reg) at[P - 1],
                stride = in(reg) 64usize,
                options(nostack),
            );
        }
        // SAFETY: each block's 16 scales follow its codes.
        let scale: [__m512; P] = std::array::from_fn(|p| unsafe { _mm512_loadu_ps(at[p].add(CODES) as *const f32) });
        for (t, x) in tiles.iter().enumerate() {
            // SAFETY: group g's activations `[group][row][128]` lie inside the tile (checked); each
            // step is loaded once for both panels; the sums' tiles are the two `Sums` (1 KiB each).
            unsafe {
                asm!(
                    "tileloadd tmm0, [{a} + {stride}*1]",
                    "tdpbsud tmm5, tmm0, tmm1",
                    "tdpbsud tmm6, tmm0, tmm3",
                    "tileloadd tmm0, [{a} + {stride}*1 + 64]",
                    "tdpbsud tmm5, tmm0, tmm2",
                    "tdpbsud tmm6, tmm0, tmm4",
                    "tilestored [{s} + {row}*1], tmm5",
                    "tilestored [{s} + {row}*1 + 1024], tmm6",
                    "tilezero tmm5",
                    "tilezero tmm6",
                    a = in(reg) x.codes.as_ptr().add(g * rows * GROUP),
                    stride = in(reg) GROUP,
                    s = in(reg) sums,
                    row = in(reg) 64usize,
                    options(nostack),
                );
            }
            for r in 0..rows {
                // SAFETY: row r < rows of group g (the tile's `[group][row]` scales and offsets).
                let (s, neg_offset) =
                    unsafe { (*x.scales.get_unchecked(g * rows + r), *x.neg_offsets.get_unchecked(g * rows + r)) };
                let (s, neg_offset) = (_mm512_set1_ps(s), _mm512_set1_epi32(neg_offset));
                for (p, scale) in scale.iter().enumerate() {
                    // SAFETY: row r of the stored sums; the output row of tile t, row r (the caller's).
                    unsafe {
                        let dot = _mm512_add_epi32(
                            _mm512_load_si512((*sums.add(p)).0[r].as_ptr() as *const __m512i),
                            neg_offset,
                        );
                        let product = _mm512_mul_ps(_mm512_cvtepi32_ps(dot), *scale);
                        let o = out.add((t * ROWS + r) * stride + p * WIDTH);
                        let acc = if g == 0 { _mm512_setzero_ps() } else { _mm512_loadu_ps(o) };
                        _mm512_storeu_ps(o, _mm512_fmadd_ps(product, s, acc));
                    }
                }
            }
        }
    }
}
