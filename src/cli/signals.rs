//! Stop signals for the commands that take time: `serve`, `backup` and
//! `restore`. The first one asks the command to stop, cleanly; a second
//! one ends the process at once, with 130, for a stop that is stuck.

use super::Error;
use crate::stop::Stop;

/// A [`Stop`] that the first stop signal asks for: what `backup` and
/// `restore` look at between their steps.
pub(super) fn stop_on_signals() -> Result<Stop, Error> {
    let stop = Stop::default();
    on_stop_signals({
        let stop = stop.clone();
        move || stop.ask()
    })?;
    Ok(stop)
}

/// Calls `first` on the first SIGINT, SIGTERM or SIGHUP (Ctrl+C,
/// Ctrl+Break or the closing of the console, on Windows), from a thread of
/// its own; exits 130 on the second. A SIGHUP that the process started
/// with ignored, as under `nohup`, stays ignored. `first` is kept until
/// the process ends, and what it holds with it: `serve`'s shutdown handle
/// keeps the transport alive, which, dropped while the server finishes,
/// would answer the requests still queued with a bare `500`.
pub(super) fn on_stop_signals(mut first: impl FnMut() + Send + 'static) -> Result<(), Error> {
    let mut seen = 0;
    let on_signal = move || {
        seen += 1;
        if seen == 1 {
            first();
        } else {
            log::warn!("second signal: exiting without waiting");
            crate::logging::flush();
            std::process::exit(130);
        }
    };
    listen(on_signal)
}

#[cfg(unix)]
fn listen(mut on_signal: impl FnMut() + Send + 'static) -> Result<(), Error> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut stop_signals = vec![SIGINT, SIGTERM];
    // `nohup` starts a command with SIGHUP ignored so that it outlives the
    // terminal; a handler would undo that. (SIGINT, which a shell ignores in
    // its background jobs, is still heard: a script's `neptun-local &` then
    // stops with the script on Ctrl+C, instead of holding the port.)
    if ignored(SIGHUP) {
        log::debug!("SIGHUP is ignored (nohup?): a closed terminal does not stop this process");
    } else {
        stop_signals.push(SIGHUP);
    }
    let mut signals = signal_hook::iterator::Signals::new(stop_signals).map_err(Error::Io)?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || signals.forever().for_each(|_| on_signal()))
        .map_err(Error::Io)?;
    Ok(())
}

/// Whether `signal` is ignored, as a process inherits it from the one that
/// started it until a handler is set.
#[cfg(unix)]
fn ignored(signal: libc::c_int) -> bool {
    // SAFETY: with no new action, sigaction only writes the current one
    // into `current`, which is a valid, writable sigaction.
    let mut current: libc::sigaction = unsafe { std::mem::zeroed() };
    let read = unsafe { libc::sigaction(signal, std::ptr::null(), &mut current) };
    read == 0 && current.sa_sigaction == libc::SIG_IGN
}

#[cfg(windows)]
fn listen(on_signal: impl FnMut() + Send + 'static) -> Result<(), Error> {
    // ctrlc calls it on a thread of its own, one event after another.
    ctrlc::set_handler(on_signal).map_err(|e| Error::Io(std::io::Error::other(e)))
}
