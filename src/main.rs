//! `portcullis`: parse the command line, run the command, exit with its code.

use clap::Parser as _;

#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    portcullis::cli::execute(portcullis::cli::Cli::parse())
}
