//! Optional BLAS for fp32 matrix products on the CPU, loaded at run time.
//!
//! On this project's 2-core AVX-512 machine, OpenBLAS's `cblas_sgemm` runs the model's shapes at
//! ≈ 300 GFLOP/s against ≈ 190 for candle's built-in gemm (docs/PERFORMANCE.md). The library is
//! opened with `dlopen`, so the build needs nothing and a machine without it still works: matmuls
//! then take candle's path. `MINIMIND_BLAS=/path/to/libopenblas.so` picks a library,
//! `MINIMIND_BLAS=none` disables BLAS.

use std::ffi::c_int;
use std::sync::OnceLock;

type SgemmFn = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    f32,
    *const f32,
    c_int,
    *const f32,
    c_int,
    f32,
    *mut f32,
    c_int,
);
type SetThreadsFn = unsafe extern "C" fn(c_int);

const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;

pub struct Blas {
    sgemm: SgemmFn,
    pub path: String,
    // Keeps the library mapped for the life of the process.
    _lib: libloading::Library,
}

const CANDIDATES: &[&str] = &[
    "libopenblas.so.0",
    "libopenblas.so",
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "libopenblas.dylib",
    "/opt/homebrew/opt/openblas/lib/libopenblas.dylib",
    "/usr/local/opt/openblas/lib/libopenblas.dylib",
];

static BLAS: OnceLock<Option<Blas>> = OnceLock::new();

/// The loaded BLAS, if any (loaded on first use).
pub fn blas() -> Option<&'static Blas> {
    BLAS.get_or_init(load).as_ref()
}

/// OpenBLAS worker threads spin for ~0.1 s after each call by default, stealing the cores the next
/// (non-BLAS) op needs; this lets them sleep almost at once. Candle's element-wise thread pool
/// (large adds and maps, e.g. a prompt's residuals) spins 25,000 rounds after each call, taking a
/// core from the decode loop's workers while a batch decodes; 1,000 rounds. Call before any thread
/// starts (it sets environment variables), unless the user chose values.
pub fn configure_environment() {
    for (name, value) in [("OPENBLAS_THREAD_TIMEOUT", "4"), ("CANDLE_BARRIER_POOL_SPIN_LIMIT", "1000")] {
        if std::env::var_os(name).is_none() {
            std::env::set_var(name, value);
        }
    }
    name_core_type();
}

/// An OpenBLAS older than the CPU does not recognize it and falls back to a generic SSE kernel:
/// Debian's 0.3.21 on a 2024 Xeon (Emerald Rapids) ran sgemm at 29–58 GFLOP/s instead of 202 with
/// the AVX-512 kernel (docs/PERFORMANCE.md). Names the kernel family from the CPU's features unless
/// the user chose one. OpenBLAS reads it when it is loaded: the binary sets it at start
/// ([`configure_environment`]), a library user gets it just before the load.
fn name_core_type() {
    if std::env::var_os("OPENBLAS_CORETYPE").is_none() {
        if let Some(core) = openblas_core() {
            std::env::set_var("OPENBLAS_CORETYPE", core);
        }
    }
}

/// OpenBLAS's kernel family for this CPU's vector extensions (its sgemm kernels depend only on them).
fn openblas_core() -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl") {
            return Some("SkylakeX");
        }
        if has!("avx2") && has!("fma") {
            return Some("Haswell");
        }
    }
    None
}

fn load() -> Option<Blas> {
    let candidates: Vec<String> = match std::env::var("MINIMIND_BLAS") {
        Ok(v) if v == "none" || v.is_empty() => return None,
        Ok(v) => vec![v],
        Err(_) => CANDIDATES.iter().map(|s| s.to_string()).collect(),
    };
    name_core_type();
    candidates.into_iter().find_map(|path| open(&path))
}

fn open(path: &str) -> Option<Blas> {
    // SAFETY: loading a shared library runs its initializers; OpenBLAS's are benign.
    let lib = unsafe { libloading::Library::new(path) }.ok()?;
    // SAFETY: the symbol has the standard CBLAS signature declared by `SgemmFn`.
    let sgemm: SgemmFn = unsafe { *lib.get::<SgemmFn>(b"cblas_sgemm\0").ok()? };
    // SAFETY: OpenBLAS's thread-count setter takes one int.
    if let Ok(set_threads) = unsafe { lib.get::<SetThreadsFn>(b"openblas_set_num_threads\0") } {
        unsafe { set_threads(candle_core::utils::get_num_threads() as c_int) };
    }
    Some(Blas { sgemm, path: path.to_string(), _lib: lib })
}

impl Blas {
    /// `C = alpha·op(A)·op(B) + beta·C` on row-major buffers with leading dimensions, as CBLAS.
    ///
    /// # Safety
    /// The pointers and leading dimensions must describe buffers holding the whole operands.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn sgemm_raw(
        &self,
        (trans_a, trans_b): (bool, bool),
        (m, n, k): (usize, usize, usize),
        alpha: f32,
        (a, lda): (*const f32, usize),
        (b, ldb): (*const f32, usize),
        beta: f32,
        (c, ldc): (*mut f32, usize),
    ) {
        let flag = |t: bool| if t { TRANS } else { NO_TRANS };
        let int = |v: usize| c_int::try_from(v).expect("matrix dimension exceeds BLAS's 32-bit integers");
        (self.sgemm)(
            ROW_MAJOR,
            flag(trans_a),
            flag(trans_b),
            int(m),
            int(n),
            int(k),
            alpha,
            a,
            int(lda),
            b,
            int(ldb),
            beta,
            c,
            int(ldc),
        )
    }

    /// `op(a)·op(b)` as a new row-major `m×n` buffer, for row-major contiguous `a` (`m×k`, or `k×m`
    /// if `trans_a`) and `b` (`k×n`, or `n×k` if `trans_b`).
    #[allow(clippy::too_many_arguments)]
    pub fn sgemm(&self, trans_a: bool, trans_b: bool, m: usize, n: usize, k: usize, a: &[f32], b: &[f32]) -> Vec<f32> {
        assert!(a.len() >= m * k && b.len() >= k * n, "sgemm: buffers too small");
        if m == 0 || n == 0 || k == 0 {
            return vec![0.0; m * n]; // BLAS may reject empty shapes without writing C
        }
        // With beta = 0 BLAS writes every element of C, so it need not be zeroed first.
        let mut c = Vec::<f32>::with_capacity(m * n);
        let lda = if trans_a { m } else { k };
        let ldb = if trans_b { k } else { n };
        // SAFETY: sizes and leading dimensions describe the checked buffers.
        unsafe {
            let (a, b, c_out) = ((a.as_ptr(), lda), (b.as_ptr(), ldb), (c.as_mut_ptr(), n));
            self.sgemm_raw((trans_a, trans_b), (m, n, k), 1.0, a, b, 0.0, c_out);
            c.set_len(m * n);
        }
        c
    }
}
