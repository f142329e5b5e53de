//! A minimal logger: one line per record on stderr, filtered by level.
//!
//! Small enough not to warrant a dependency. Callers are responsible for never
//! passing secrets (tokens, cookies) into a log record.

use std::io::Write;

use log::{LevelFilter, Log, Metadata, Record};

struct StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if self.enabled(record.metadata()) {
            // One write per line, so lines from different threads never interleave.
            let line = format!("{:<5} {}\n", record.level(), record.args());
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
    }

    fn flush(&self) {}
}

/// Installs the logger. Later calls only change the level.
pub fn init(level: LevelFilter) {
    let _ = log::set_logger(&StderrLogger);
    log::set_max_level(level);
}
