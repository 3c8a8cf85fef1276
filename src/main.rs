use clap::Parser;
use minimind::cli::{run, Cli};

// glibc malloc returns large buffers to the OS and page-faults them back on every step;
// mimalloc keeps them, which is a large share of CPU training time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc option ids (v2 `mi_option_e`): purge delay and eager arena commit.
const MI_OPTION_ARENA_EAGER_COMMIT: i32 = 4;
const MI_OPTION_PURGE_DELAY: i32 = 15;

fn main() {
    // Keep freed memory mapped for reuse: returning it to the OS makes every training step
    // page-fault its large buffers back in (3-step forward bench: 5.1 s → 0.6 s of system time).
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1);
        libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 1);
    }
    minimind::ops::blas::configure_environment();
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        // Read by candle's matmul and by rayon; must be set before either starts.
        std::env::set_var("RAYON_NUM_THREADS", n.max(1).to_string());
    }
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
