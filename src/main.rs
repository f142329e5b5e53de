use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = neptun_local::cli::Cli::parse();
    match neptun_local::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("neptun-local: error: {e}");
            ExitCode::FAILURE
        }
    }
}
