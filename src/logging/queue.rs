//! Lines on their way to stderr, written by a thread of their own.
//!
//! A write to stderr blocks while no one reads it: a parent process that
//! piped the server's stderr and reads only its stdout (a test fixture
//! waiting for the `listening on` line), a pager, a terminal paused with
//! Ctrl+S. Written from the request path, such a write held every worker
//! in turn: the server stopped answering once the pipe was full, after
//! about 700 requests. Lines now go into a bounded queue, and one that
//! finds it full is dropped and counted, as `tracing-appender`'s
//! non-blocking writer does by default. The count is written with the
//! next lines, once the reader is back.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Up to this many bytes of waiting lines go out in one write.
const BATCH_BYTES: usize = 64 * 1024;

/// The name of the thread that writes the lines.
pub const THREAD_NAME: &str = "log";

pub(super) struct Queue {
    lines: SyncSender<String>,
    counts: Arc<Counts>,
}

#[derive(Default)]
struct Counts {
    /// Lines that found the queue full since the last notice.
    dropped: AtomicU64,
    /// Lines taken into the queue.
    queued: AtomicU64,
    /// Lines the writer is done with (written, or failed to write).
    written: Mutex<u64>,
    progress: Condvar,
}

impl Queue {
    /// Starts the writer thread. `notice` makes the line that says how many
    /// lines were dropped.
    pub(super) fn start(
        sink: impl Write + Send + 'static,
        capacity: usize,
        notice: impl Fn(u64) -> String + Send + 'static,
    ) -> io::Result<Queue> {
        let (lines, waiting) = mpsc::sync_channel(capacity);
        let counts = Arc::new(Counts::default());
        let shared = Arc::clone(&counts);
        thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn(move || write_lines(&waiting, &shared, sink, notice))?;
        Ok(Queue { lines, counts })
    }

    /// Queues `line` without waiting: if the queue is full, it is dropped
    /// and counted.
    pub(super) fn push(&self, line: String) {
        match self.lines.try_send(line) {
            Ok(()) => {
                self.counts.queued.fetch_add(1, Ordering::SeqCst);
            }
            Err(TrySendError::Full(_)) => {
                self.counts.dropped.fetch_add(1, Ordering::SeqCst);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Queues `line`, waiting for room rather than dropping it, for `limit`
    /// at most: then it is dropped and counted. A reader that never comes
    /// back must not keep the process from going on, or from exiting with
    /// its last word.
    pub(super) fn push_waiting(&self, mut line: String, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            match self.lines.try_send(line) {
                Ok(()) => {
                    self.counts.queued.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                Err(TrySendError::Disconnected(_)) => return,
                Err(TrySendError::Full(back)) => line = back,
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.counts.dropped.fetch_add(1, Ordering::SeqCst);
                return;
            }
            // Woken when the writer has written a batch; the timeout
            // covers a batch written between try_send and this wait.
            let written = self
                .counts
                .written
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let _ = self
                .counts
                .progress
                .wait_timeout(written, left.min(Duration::from_millis(10)));
        }
    }

    /// Waits until every line queued before the call is written, or for
    /// `limit` at most (a reader that never comes back must not keep the
    /// process from exiting). Returns whether they were.
    pub(super) fn flush(&self, limit: Duration) -> bool {
        let target = self.counts.queued.load(Ordering::SeqCst);
        let written = self
            .counts
            .written
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (written, _) = self
            .counts
            .progress
            .wait_timeout_while(written, limit, |written| *written < target)
            .unwrap_or_else(|e| e.into_inner());
        *written >= target
    }
}

/// The writer thread: takes what is waiting, writes it in one go, and
/// ends when the queue is dropped.
fn write_lines(
    waiting: &Receiver<String>,
    counts: &Counts,
    mut sink: impl Write,
    notice: impl Fn(u64) -> String,
) {
    while let Ok(first) = waiting.recv() {
        let mut batch = first;
        let mut taken = 1;
        while batch.len() < BATCH_BYTES {
            let Ok(line) = waiting.try_recv() else { break };
            batch.push_str(&line);
            taken += 1;
        }
        let dropped = counts.dropped.swap(0, Ordering::SeqCst);
        if dropped > 0 {
            batch.insert_str(0, &notice(dropped));
        }
        // A reader that has gone for good (EPIPE) is no reason to stop:
        // the lines are let go, as a direct write's would be.
        let _ = sink.write_all(batch.as_bytes()).and_then(|()| sink.flush());
        *counts.written.lock().unwrap_or_else(|e| e.into_inner()) += taken;
        counts.progress.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::Sender;

    /// A sink that holds each write until the test lets it through, as a
    /// pipe that no one reads does, and passes on what it was given.
    struct Gate {
        entered: Sender<()>,
        open: Receiver<()>,
        out: Sender<String>,
    }

    impl Write for Gate {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            let _ = self.entered.send(());
            let _ = self.open.recv();
            let _ = self.out.send(String::from_utf8_lossy(bytes).into_owned());
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    struct Gated {
        queue: Queue,
        entered: Receiver<()>,
        open: Sender<()>,
        written: Receiver<String>,
    }

    fn gated(capacity: usize) -> Gated {
        let (entered, entered_rx) = mpsc::channel();
        let (open, gate) = mpsc::channel();
        let (out, written) = mpsc::channel();
        let sink = Gate {
            entered,
            open: gate,
            out,
        };
        Gated {
            queue: Queue::start(sink, capacity, |n| format!("{n} dropped\n")).unwrap(),
            entered: entered_rx,
            open,
            written,
        }
    }

    impl Gated {
        /// Queues `line` and waits until the writer holds it at the gate.
        fn hold(&self, line: &str) {
            self.queue.push(line.into());
            self.entered.recv().unwrap();
        }

        /// Lets `writes` writes through the gate, and returns all that got
        /// out once the queue is flushed.
        fn let_through(&self, writes: usize) -> String {
            for _ in 0..writes {
                self.open.send(()).unwrap();
            }
            assert!(self.queue.flush(Duration::from_secs(5)));
            self.written.try_iter().collect()
        }
    }

    #[test]
    fn a_stuck_reader_costs_lines_not_waiting_and_the_count_is_written_later() {
        let gated = gated(2);
        let queue = &gated.queue;
        // The writer takes "a" and waits at the gate; two more fill the queue.
        gated.hold("a\n");
        for line in ["b\n", "c\n", "d\n", "e\n"] {
            queue.push(line.into());
        }
        assert_eq!(queue.counts.dropped.load(Ordering::SeqCst), 2);
        assert!(!queue.flush(Duration::from_millis(20)), "nothing got out");

        assert_eq!(gated.let_through(2), "a\n2 dropped\nb\nc\n");
    }

    #[test]
    fn a_waiting_push_to_a_slow_reader_is_not_dropped_and_order_is_kept() {
        let Gated {
            queue,
            open,
            written,
            ..
        } = gated(1);
        let opener = thread::spawn(move || {
            for _ in 0..10 {
                thread::sleep(Duration::from_millis(5));
                if open.send(()).is_err() {
                    break;
                }
            }
        });
        for n in 0..5 {
            queue.push_waiting(format!("{n}\n"), Duration::from_secs(5));
        }
        opener.join().unwrap();
        assert!(queue.flush(Duration::from_secs(5)));
        let text: String = written.try_iter().collect();
        assert_eq!(text, "0\n1\n2\n3\n4\n");
        assert_eq!(queue.counts.dropped.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_waiting_push_gives_up_on_a_reader_that_never_comes_back() {
        let gated = gated(1);
        let queue = &gated.queue;
        gated.hold("a\n");
        queue.push("b\n".into());
        let started = Instant::now();
        queue.push_waiting("c\n".into(), Duration::from_millis(50));
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(queue.counts.dropped.load(Ordering::SeqCst), 1);

        assert_eq!(gated.let_through(2), "a\n1 dropped\nb\n");
    }
}
