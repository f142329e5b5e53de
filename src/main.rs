use std::process::ExitCode;

fn main() -> ExitCode {
    neptun_local::memory::limit_malloc_arenas();
    // SAFETY: no thread has started yet.
    unsafe { neptun_local::cli::forget_empty_environment_variables() };
    let cli = neptun_local::cli::parse();
    let code = match neptun_local::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            neptun_local::logging::say_error(format!("neptun-local: error: {e}\n"));
            ExitCode::from(e.exit_code())
        }
    };
    // Log lines are written by a thread of their own.
    neptun_local::logging::flush();
    code
}
