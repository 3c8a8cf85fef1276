use clap::Parser;
use minimind::cli::{run, Cli};

// glibc malloc returns large buffers to the OS and page-faults them back on every step;
// mimalloc keeps them, which is a large share of CPU training time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        // Read by candle's matmul and by rayon; must be set before either starts.
        std::env::set_var("RAYON_NUM_THREADS", n.max(1).to_string());
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
