//! `portcullis`: parse the command line, run the command, exit with its code.

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    portcullis::cli::execute(portcullis::cli::Cli::parse())
}
