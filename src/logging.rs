//! A minimal logger: one line per record on stderr, filtered by level.
//! The lines are written by a thread of their own, so that a reader of
//! stderr that stops reading never holds up a request (see `queue`).
//!
//! Small enough not to warrant a dependency. Callers are responsible for never
//! passing secrets (tokens, cookies) into a log record.
//!
//! Each line starts with the time in UTC, so that a log kept in a file says
//! when a chat was deleted. Under systemd, whose journal stamps every line
//! itself, it starts instead with the record's priority in the form the
//! journal reads (`<3>` for an error), so that `journalctl -p warning`
//! finds the warnings and errors.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::io::Write;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::utc;

mod queue;
use queue::Queue;
pub use queue::THREAD_NAME;

/// Lines that may wait for stderr's reader; beyond them, lines are dropped.
/// About 100 bytes each: half a MiB at most.
const QUEUE_LINES: usize = 4096;

/// How long [`flush`], or a message that waits for room in the queue, waits
/// for a reader that has stopped reading.
const WAIT_FOR_READER: Duration = Duration::from_secs(1);

struct StderrLogger {
    to_journal: bool,
    /// `None` if its thread could not start: lines are then written
    /// directly, as they were before there was a queue.
    queue: Option<Queue>,
}

impl StderrLogger {
    fn write(&self, line: String, wait_for_room: bool) {
        match &self.queue {
            Some(queue) if wait_for_room => queue.push_waiting(line, WAIT_FOR_READER),
            Some(queue) => queue.push(line),
            None => write_directly(&line),
        }
    }
}

/// One write per line, so that lines from different threads never interleave.
fn write_directly(line: &str) {
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if self.enabled(record.metadata()) {
            // Never waits: records come from the request path.
            self.write(line(self.to_journal, record.level(), record.args()), false);
        }
    }

    fn flush(&self) {
        if let Some(queue) = &self.queue {
            queue.flush(WAIT_FOR_READER);
        }
    }
}

/// A log line: the time in UTC, or for the journal the priority, then the
/// level and the message. A message of several lines (a panic's, with its
/// backtrace) has the priority on each of them for the journal, which takes
/// each line as an entry of its own.
fn line(to_journal: bool, level: Level, message: &fmt::Arguments) -> String {
    if to_journal {
        for_the_journal(&format!("{level:<5} {message}"), journal_priority(level))
    } else {
        format!(
            "{} {:<5} {}\n",
            utc::rfc3339_millis(SystemTime::now()),
            level,
            message
        )
    }
}

/// syslog's priorities, which the journal reads from a line's `<N>` prefix.
fn journal_priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// Whether stderr is the systemd journal. systemd says so in
/// `JOURNAL_STREAM` (`device:inode` of the stream it connected); the
/// variable alone is not enough, since child processes inherit it whatever
/// their stderr has become.
#[cfg(unix)]
pub fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;

    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    let Ok(stderr) = std::fs::File::from(fd).metadata() else {
        return false;
    };
    stream.to_str() == Some(format!("{}:{}", stderr.dev(), stderr.ino()).as_str())
}

#[cfg(not(unix))]
pub fn stderr_is_journal() -> bool {
    false
}

/// Text a client sent, made safe for a log line: control characters and
/// backslashes are written as `\xHH` (each byte of their UTF-8), as nginx
/// does. A raw ESC could otherwise reach the terminal of whoever reads the
/// log as a command, and a raw line break forge a line. So are the Unicode
/// controls of text direction, which rustc also refuses in source: a
/// terminal that honours them would show the rest of the line reordered.
pub fn printable(text: &str) -> Cow<'_, str> {
    let escaped = |c: char| c.is_control() || c == '\\' || is_bidi_control(c);
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

/// The characters that set or override the direction of text (Unicode's
/// Bidi_Control property).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

static LOGGER: OnceLock<StderrLogger> = OnceLock::new();

/// Installs the logger. Later calls only change the level.
pub fn init(level: LevelFilter) {
    let logger = LOGGER.get_or_init(|| {
        let to_journal = stderr_is_journal();
        let notice = move |dropped| {
            line(
                to_journal,
                Level::Warn,
                &format_args!("{dropped} log line(s) dropped: stderr was not read fast enough"),
            )
        };
        StderrLogger {
            to_journal,
            queue: Queue::start(std::io::stderr(), QUEUE_LINES, notice).ok(),
        }
    });
    let _ = log::set_logger(logger);
    log::set_max_level(level);
}

/// Writes `text` on stderr after the log lines queued before it, whatever
/// the level: a message for the person who ran the command. It waits for
/// room in the queue rather than be dropped, for a second at most (then
/// it is dropped and counted, as a log line is at once).
pub fn say(text: String) {
    match LOGGER.get() {
        Some(logger) => logger.write(text, true),
        None => write_directly(&text),
    }
}

/// Says `text`, the error that ends the process, as [`say`] does. For the
/// journal every line starts with an error's priority, since the journal
/// takes each line as an entry of its own (clap's usage and hint follow its
/// error), so that `journalctl -p err` shows why the server stopped or could
/// not start. Blank lines, which only space the text out on a terminal, are
/// left out there.
pub fn say_error(text: String) {
    let to_journal = LOGGER
        .get()
        .map_or_else(stderr_is_journal, |logger| logger.to_journal);
    say(if to_journal {
        for_the_journal(&text, journal_priority(Level::Error))
    } else {
        text
    })
}

/// `text` with `priority` in front of each of its lines but the blank ones,
/// which are left out; each line ends with a newline.
fn for_the_journal(text: &str, priority: u8) -> String {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| format!("<{priority}>{line}\n"))
        .collect()
}

/// Waits until what was logged or said so far is written, for a second at
/// most. The process calls it before it exits.
pub fn flush() {
    if let Some(logger) = LOGGER.get() {
        logger.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::{for_the_journal, printable};

    #[test]
    fn for_the_journal_every_line_but_a_blank_one_gets_the_priority() {
        let clap_error = "error: invalid value\n\nFor more information, try '--help'.\n";
        assert_eq!(
            for_the_journal(clap_error, 3),
            "<3>error: invalid value\n<3>For more information, try '--help'.\n"
        );
        assert_eq!(
            for_the_journal("neptun-local: error: cannot listen\n", 3),
            "<3>neptun-local: error: cannot listen\n"
        );
    }

    #[test]
    fn control_characters_and_backslashes_are_escaped() {
        assert_eq!(printable("/api/users/alice"), "/api/users/alice");
        assert_eq!(printable("/a\x1b[2J\0\r\nb"), "/a\\x1b[2J\\x00\\x0d\\x0ab");
        assert_eq!(printable("\\x1b"), "\\x5cx1b", "unambiguous");
        assert_eq!(printable("\u{85}\u{7f}é"), "\\xc2\\x85\\x7fé");
    }

    #[test]
    fn controls_of_text_direction_are_escaped() {
        // A right-to-left override, then an isolate and its end.
        assert_eq!(
            printable("chat\u{202E}gnp.exe"),
            "chat\\xe2\\x80\\xaegnp.exe"
        );
        assert_eq!(
            printable("\u{2067}x\u{2069}\u{200F}"),
            "\\xe2\\x81\\xa7x\\xe2\\x81\\xa9\\xe2\\x80\\x8f"
        );
        assert_eq!(printable("עברית and 日本語"), "עברית and 日本語");
    }
}
