//! `psmr`: run a replicated service.
//!
//! ```text
//! psmr local                                   a whole cluster on loopback (3 acceptors, 2 replicas)
//! psmr certs    --config cluster.toml          development CA and certificates for every node
//! psmr acceptor --config cluster.toml --id 1   one acceptor process
//! psmr replica  --config cluster.toml --id 101 one replica process
//! psmr client   --config cluster.toml get 42   one command, or `load` for a load generator
//! psmr status   --config cluster.toml          every node, its rings and lag; exit 1 if it cannot serve
//! psmr chaos                                   faults against a local cluster under load, per engine; a linearizability verdict
//! psmr sweep    experiments/fig2.toml          an experiment: clusters, load, CSV, summary, plots
//! psmr plot     results/fig2/<timestamp>       redraw a run's plots
//! ```
//!
//! Errors are printed as one line on standard error, with exit code 1 (2
//! for a command line that does not parse). Logs go to standard error,
//! quiet by default; `RUST_LOG=info` (or `debug`) shows more.

// A command-line program reports on standard output.
#![allow(clippy::print_stdout)]

mod chaos;
mod cli;
mod columns;
mod experiment;
mod load;
mod local;
mod machine;
mod plot;
mod results;
mod services;
mod status;
mod sweep;

use std::process::ExitCode;

use clap::Parser;

/// Every process of the cluster allocates per command (frames, batches,
/// replies) from several threads; mimalloc's thread-local free lists cost
/// less than glibc malloc's arenas there (a profile of the replica under
/// load showed malloc and free high among its costs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = cli::Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal, not in a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("psmr: {e}");
            ExitCode::FAILURE
        }
    }
}
