//! A minimal logger: one line per record on stderr, filtered by level.
//!
//! Small enough not to warrant a dependency. Callers are responsible for never
//! passing secrets (tokens, cookies) into a log record.

use std::borrow::Cow;
use std::fmt::Write as _;
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

/// Text a client sent, made safe for a log line: control characters and
/// backslashes are written as `\xHH` (each byte of their UTF-8), as nginx
/// does. A raw ESC could otherwise reach the terminal of whoever reads the
/// log as a command, and a raw line break forge a line.
pub fn printable(text: &str) -> Cow<'_, str> {
    let escaped = |c: char| c.is_control() || c == '\\';
    if !text.chars().any(escaped) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if escaped(c) {
            for byte in c.encode_utf8(&mut [0; 4]).bytes() {
                let _ = write!(out, "\\x{byte:02x}");
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Installs the logger. Later calls only change the level.
pub fn init(level: LevelFilter) {
    let _ = log::set_logger(&StderrLogger);
    log::set_max_level(level);
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn control_characters_and_backslashes_are_escaped() {
        assert_eq!(printable("/api/users/alice"), "/api/users/alice");
        assert_eq!(printable("/a\x1b[2J\0\r\nb"), "/a\\x1b[2J\\x00\\x0d\\x0ab");
        assert_eq!(printable("\\x1b"), "\\x5cx1b", "unambiguous");
        assert_eq!(printable("\u{85}\u{7f}é"), "\\xc2\\x85\\x7fé");
    }
}
