//! A fork-join loop for decode-sized work: a few dozen microseconds per call, about sixty calls per
//! decoded token. Waking a sleeping rayon worker through the kernel costs about as much as the work
//! itself, so these loops use their own workers that spin briefly between calls (then park), and the
//! calling thread takes chunks too. A prompt's element-wise ops, norms and attention run here as
//! well ([`par_chunks_mut`]): between its matmuls these workers are still spinning, and handing
//! those ops to rayon's threads left one core to two busy threads (a 128-token int8 prompt 9–13 %
//! slower).
//!
//! One loop runs at a time; a caller that finds the pool busy (another thread's loop) runs its chunks
//! itself.

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Outputs up to this many values are decode-sized: a kernel runs them on this pool (or on the
/// calling thread) instead of rayon's, whose hand-off from a non-rayon thread costs more than the
/// work and whose workers would compete with this pool's spinning ones for the cores.
pub const SMALL: usize = 1 << 15;

/// How long an idle worker spins before it parks.
const SPIN: Duration = Duration::from_micros(200);

/// One published loop: chunk indices `0..n` handed out through `next`.
struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync),
    n: usize,
    next: AtomicUsize,
    done: AtomicUsize,
    /// A chunk panicked (on any thread); the caller re-raises it once every chunk is accounted for.
    panicked: AtomicBool,
}

impl Job<'_> {
    /// Claims and runs chunks until none are left.
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, SeqCst);
            if i >= self.n {
                return;
            }
            let run = std::panic::AssertUnwindSafe(|| (self.f)(i));
            if std::panic::catch_unwind(run).is_err() {
                self.panicked.store(true, SeqCst);
            }
            self.done.fetch_add(1, SeqCst);
        }
    }
}

struct Pool {
    /// The current job (type-erased `*const Job`), null when idle.
    job: AtomicPtr<()>,
    /// Bumped for every published job, so workers notice new work.
    epoch: AtomicUsize,
    /// Workers currently holding a pointer to the job.
    active: AtomicUsize,
    workers: usize,
    parked: Mutex<usize>,
    wake: Condvar,
    any_parked: AtomicBool,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<&'static Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let workers = candle_core::utils::get_num_threads().saturating_sub(1);
        let pool: &'static Pool = Box::leak(Box::new(Pool {
            job: AtomicPtr::new(std::ptr::null_mut()),
            epoch: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            workers,
            parked: Mutex::new(0),
            wake: Condvar::new(),
            any_parked: AtomicBool::new(false),
        }));
        for i in 0..workers {
            std::thread::Builder::new()
                .name(format!("minimind-loop-{i}"))
                .spawn(move || worker(pool))
                .expect("spawning a loop worker");
        }
        pool
    })
}

fn worker(pool: &'static Pool) {
    let mut seen = pool.epoch.load(SeqCst);
    loop {
        let start = Instant::now();
        let mut spins = 0u32;
        while pool.epoch.load(SeqCst) == seen {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(256) && start.elapsed() > SPIN {
                park(pool, seen);
            }
            std::hint::spin_loop();
        }
        seen = pool.epoch.load(SeqCst);
        // Announce before reading the pointer; the publisher waits for `active` to drop to zero
        // after clearing it, so a job is never touched after its caller returned.
        pool.active.fetch_add(1, SeqCst);
        let ptr = pool.job.load(SeqCst);
        if !ptr.is_null() {
            // SAFETY: non-null means the publisher is still inside `for_each` (it waits for us).
            let job = unsafe { &*(ptr as *const Job) };
            job.work();
        }
        pool.active.fetch_sub(1, SeqCst);
    }
}

fn park(pool: &Pool, seen: usize) {
    let mut parked = pool.parked.lock().unwrap_or_else(|e| e.into_inner());
    *parked += 1;
    pool.any_parked.store(true, SeqCst);
    while pool.epoch.load(SeqCst) == seen {
        parked = pool.wake.wait(parked).unwrap_or_else(|e| e.into_inner());
    }
    *parked -= 1;
    pool.any_parked.store(*parked > 0, SeqCst);
}

/// Threads of a parallel loop: the workers and the calling thread.
pub fn threads() -> usize {
    pool().workers + 1
}

/// Runs `f(i)` for every `i < n`, spread over the loop workers and the calling thread.
pub fn for_each(n: usize, f: &(dyn Fn(usize) + Sync)) {
    let pool = pool();
    if n <= 1 || pool.workers == 0 {
        return (0..n).for_each(f);
    }
    let job = Job { f, n, next: AtomicUsize::new(0), done: AtomicUsize::new(0), panicked: AtomicBool::new(false) };
    let ptr = &job as *const Job as *mut ();
    if pool.job.compare_exchange(std::ptr::null_mut(), ptr, SeqCst, SeqCst).is_err() {
        return (0..n).for_each(f); // another thread's loop is running
    }
    pool.epoch.fetch_add(1, SeqCst);
    if pool.any_parked.load(SeqCst) {
        let _guard = pool.parked.lock().unwrap_or_else(|e| e.into_inner());
        pool.wake.notify_all();
    }
    job.work();
    while job.done.load(SeqCst) < n {
        std::hint::spin_loop();
    }
    pool.job.store(std::ptr::null_mut(), SeqCst);
    while pool.active.load(SeqCst) > 0 {
        std::hint::spin_loop();
    }
    if job.panicked.load(SeqCst) {
        panic!("a parallel loop chunk panicked");
    }
}

/// Runs `f(i, follows)` for every `i < n` as [`for_each`] does, except that each thread takes a run
/// of consecutive indices — the j-th of [`threads`] equal shares, front to back — and, done with it,
/// takes over the back half of what another has left, so a late thread still finds work. `follows`
/// is true only when the same thread ran `i − 1` just before: a task streaming memory in index order
/// can then prefetch the next task's data, which is most likely its own next. (Single indices
/// claimed in turn send each thread's next task to where another left off, so every task would
/// start cold.)
pub fn for_each_in_runs(n: usize, f: &(dyn Fn(usize, bool) + Sync)) {
    let runs = threads().min(n);
    // One run, or the pool busy with another thread's loop (which would leave every chunk to this
    // thread, out of order): in order here.
    if runs <= 1 || !pool().job.load(SeqCst).is_null() {
        return (0..n).for_each(|i| f(i, i > 0));
    }
    if n > u32::MAX as usize {
        return for_each(n, &|i| f(i, false)); // the ranges below hold 32-bit indices
    }
    // Chunk c's indices not taken yet, `front..back`, in one atomic (front in the low half), each on
    // its own cache line. Chunks below `runs` start with a share; the others (a thread that came
    // late) start empty.
    let bounds: Vec<Range> = (0..2 * runs)
        .map(|c| Range(AtomicU64::new(if c < runs { pack(c * n / runs, (c + 1) * n / runs) } else { 0 })))
        .collect();
    for_each(2 * runs, &|chunk| {
        let mine = &bounds[chunk].0;
        let mut last: Option<usize> = None;
        loop {
            while let Some(i) = take_front(mine) {
                f(i, last.is_some_and(|l| l + 1 == i));
                last = Some(i);
            }
            // Only this chunk adds to its own range, and only while it is empty (no other chunk
            // writes an empty range), so a plain store is safe.
            match (1..bounds.len()).find_map(|d| split_back(&bounds[(chunk + d) % bounds.len()].0)) {
                Some(stolen) => mine.store(stolen, SeqCst),
                None => return,
            }
        }
    });
}

/// A run's remaining indices, alone on its cache line (threads taking from their own runs do not
/// contend for one line).
#[repr(align(64))]
struct Range(AtomicU64);

/// `front..back` as one atomic word.
fn pack(front: usize, back: usize) -> u64 {
    front as u64 | (back as u64) << 32
}

fn unpack(range: u64) -> (usize, usize) {
    (range as u32 as usize, (range >> 32) as usize)
}

/// The first index left in `range`.
fn take_front(range: &AtomicU64) -> Option<usize> {
    claim(range, |front, back| (pack(front + 1, back), front))
}

/// The back half of what is left in `range` (at least one index), taken out of it.
fn split_back(range: &AtomicU64) -> Option<u64> {
    claim(range, |front, back| {
        let middle = front + (back - front) / 2;
        (pack(front, middle), pack(middle, back))
    })
}

/// Replaces a non-empty `range` by `take(front, back).0` and returns `.1`, retrying while other
/// threads change it first; `None` once it is empty.
fn claim<T>(range: &AtomicU64, take: impl Fn(usize, usize) -> (u64, T)) -> Option<T> {
    let mut current = range.load(SeqCst);
    loop {
        let (front, back) = unpack(current);
        if front >= back {
            return None;
        }
        let (rest, taken) = take(front, back);
        match range.compare_exchange_weak(current, rest, SeqCst, SeqCst) {
            Ok(_) => return Some(taken),
            Err(seen) => current = seen,
        }
    }
}

/// Runs `f(i, chunk)` for the `chunk`-sized pieces of `out` (the last may be shorter), in parallel.
pub fn for_each_chunk_mut<T: Send>(out: &mut [T], chunk: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let len = out.len();
    let n = len.div_ceil(chunk.max(1));
    let pieces = Disjoint::new(out);
    for_each(n, &|i| {
        let start = i * chunk;
        let end = (start + chunk).min(len);
        // SAFETY: chunk i covers out[start..end]; chunks are disjoint and each index runs once.
        f(i, unsafe { pieces.part(start, end - start) });
    });
}

/// Values up to which [`par_chunks_mut`] runs on this pool (a decode step's tensors, and a prompt's
/// of a few hundred tokens: MiniMind2-Small's SwiGLU up to 372); larger ones (training batches) go to
/// rayon's.
const PROMPT: usize = 1 << 19;

/// `f(i, chunk)` for the `chunk`-sized pieces of `out`, in parallel: on this pool for up to
/// [`PROMPT`] values — so that a prompt's element-wise ops run on the workers that run its matmuls
/// instead of waking rayon's while these spin — and on rayon's pool beyond.
fn par_chunks_mut<T: Send>(out: &mut [T], chunk: usize, f: impl Fn(usize, &mut [T]) + Sync + Send) {
    if out.len() <= PROMPT {
        for_each_chunk_mut(out, chunk, f);
    } else {
        use rayon::prelude::*;
        out.par_chunks_mut(chunk.max(1)).enumerate().for_each(|(i, c)| f(i, c));
    }
}

/// A new vector of `n` values, the `chunk`-sized pieces computed by `f(i, piece)` as
/// [`par_chunks_mut`] runs them. Each piece is zeroed by the task that fills it, in its cache, just
/// before `f` writes it — instead of the whole vector by the calling thread up front while the
/// other workers wait (`vec![0.0; n]`: 7 % of a 128-token int8 prompt's calling thread; prompts
/// 4–5 % faster without it).
pub fn par_filled(n: usize, chunk: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) -> Vec<f32> {
    // SAFETY: every piece is zeroed before `f` sees it.
    unsafe { par_written(n, chunk, |i, piece| f(i, zeroed(piece))) }
}

/// As [`par_filled`], each thread taking a run of consecutive pieces ([`for_each_in_runs`]), so a
/// piece's task can prefetch what piece `i + 1` reads, most likely its own next.
pub fn filled_in_runs(n: usize, chunk: usize, f: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    assert!(n == 0 || chunk > 0, "filled_in_runs: {n} values in pieces of 0");
    let mut out: Vec<f32> = Vec::with_capacity(n);
    let pieces = Disjoint::new(&mut out.spare_capacity_mut()[..n]);
    for_each_in_runs(n.div_ceil(chunk.max(1)), &|i, _| {
        let start = i * chunk;
        // SAFETY: piece i covers out[start..start + chunk] (the last shorter), and runs once.
        f(i, zeroed(unsafe { pieces.part(start, chunk.min(n - start)) }));
    });
    // SAFETY: the pieces cover `0..n`, each zeroed, and all have run.
    unsafe { out.set_len(n) };
    out
}

/// As [`par_filled`] for kernels that write every value of their piece: the pieces are handed over
/// unwritten, so nothing is zeroed first (for the residual adds, SwiGLU, RMSNorm and RoPE: 128-token
/// int8 prompts 2–5 % faster, 16-row decode steps 0–2 %).
///
/// # Safety
/// `f` must write every value of each piece it is given.
pub unsafe fn par_written(
    n: usize,
    chunk: usize,
    f: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync + Send,
) -> Vec<f32> {
    // Pieces of no values would leave the vector unwritten.
    assert!(n == 0 || chunk > 0, "par_written: {n} values in pieces of 0");
    let mut out: Vec<f32> = Vec::with_capacity(n);
    par_chunks_mut(&mut out.spare_capacity_mut()[..n], chunk, f);
    // SAFETY: the pieces cover `0..n`, and `f` wrote each (the loop returns after all have run;
    // a panic in one propagates before this line).
    unsafe { out.set_len(n) };
    out
}

/// As [`par_written`], except that outputs of up to [`SMALL`] values (a decode step's few rows) are
/// written on the calling thread, piece after piece: for them a fork-join costs more than the work.
///
/// # Safety
/// `f` must write every value of each piece it is given.
pub unsafe fn written(n: usize, chunk: usize, f: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync + Send) -> Vec<f32> {
    if n > SMALL {
        return unsafe { par_written(n, chunk, f) };
    }
    let mut out: Vec<f32> = Vec::with_capacity(n);
    out.spare_capacity_mut()[..n].chunks_mut(chunk.max(1)).enumerate().for_each(|(i, piece)| f(i, piece));
    // SAFETY: the pieces cover `0..n`, and `f` wrote each.
    unsafe { out.set_len(n) };
    out
}

/// A piece zeroed, as the `f32`s it now holds.
fn zeroed(piece: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    piece.fill(MaybeUninit::new(0.0));
    // SAFETY: every value of the piece was just written.
    unsafe { &mut *(piece as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// A slice that parallel chunks write disjoint parts of (borrowed mutably while it lives).
pub struct Disjoint<'a, T>(*mut T, usize, std::marker::PhantomData<&'a mut [T]>);
// SAFETY: the users write disjoint ranges only (see `part`).
unsafe impl<T: Send> Sync for Disjoint<'_, T> {}
unsafe impl<T: Send> Send for Disjoint<'_, T> {}

impl<'a, T> Disjoint<'a, T> {
    pub fn new(v: &'a mut [T]) -> Self {
        Disjoint(v.as_mut_ptr(), v.len(), std::marker::PhantomData)
    }

    /// The address of `v[at]`, for prefetch hints (never read through it).
    pub fn address(&self, at: usize) -> *const T {
        self.0.wrapping_add(at)
    }

    /// `v[at..at + len]`.
    ///
    /// # Safety
    /// No two live parts may overlap.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn part(&self, at: usize, len: usize) -> &mut [T] {
        assert!(at + len <= self.1, "disjoint part out of range");
        unsafe { std::slice::from_raw_parts_mut(self.0.add(at), len) }
    }
}
