//! A stop asked of a command that takes time (`backup`, `restore`) by a
//! signal (Ctrl+C), which the command acts on at points where it can
//! still say what it left behind. Killed by the signal instead, a backup
//! left `OUT.partial` and its journal, and a restore said nothing of
//! whether the database had been replaced.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rusqlite::{Connection, InterruptHandle};

/// Asked from the signal thread, looked at by the command between steps;
/// a stop also interrupts SQLite's work on the connection the command
/// named, so that a check of a large file ends at once.
#[derive(Clone, Default)]
pub struct Stop(Arc<Mutex<State>>);

#[derive(Default)]
struct State {
    asked: bool,
    /// The connection whose work a stop interrupts.
    working: Option<InterruptHandle>,
}

/// A stop was asked for.
#[derive(Debug, PartialEq, Eq)]
pub struct Stopped;

impl Stop {
    /// Asks the command to stop, and returns at once.
    pub fn ask(&self) {
        let mut state = self.state();
        state.asked = true;
        if let Some(working) = &state.working {
            working.interrupt();
        }
    }

    /// Fails if a stop was asked for. Otherwise a stop from now on
    /// interrupts `conn`'s work, if given, and no connection's if not:
    /// work the command must finish (an erasure, say) is never cut short
    /// by a stop meant for the step before.
    pub fn go_on(&self, conn: Option<&Connection>) -> Result<(), Stopped> {
        let mut state = self.state();
        if state.asked {
            return Err(Stopped);
        }
        state.working = conn.map(Connection::get_interrupt_handle);
        Ok(())
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state is two plain fields, whole whatever a panic cut short.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts to `to` on `conn` (to 0: forever) while `stop` is asked
    /// 50 ms in.
    fn count_while_asked(stop: &Stop, conn: &Connection, to: i64) -> rusqlite::Result<i64> {
        let asker = std::thread::spawn({
            let stop = stop.clone();
            move || {
                std::thread::sleep(std::time::Duration::from_millis(50));
                stop.ask();
            }
        });
        let counted = conn.query_row(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n
             WHERE ?1 = 0 OR i < ?1) SELECT count(*) FROM n",
            [to],
            |r| r.get(0),
        );
        asker.join().unwrap();
        counted
    }

    #[test]
    fn a_stop_interrupts_the_work_named_and_fails_the_next_step() {
        let conn = Connection::open_in_memory().unwrap();
        let stop = Stop::default();
        stop.go_on(Some(&conn)).unwrap();
        let cut = count_while_asked(&stop, &conn, 0).unwrap_err();
        assert_eq!(
            cut.sqlite_error_code(),
            Some(rusqlite::ErrorCode::OperationInterrupted)
        );
        assert_eq!(stop.go_on(None), Err(Stopped));
    }

    /// Once the command has moved on (`go_on(None)`), the connection's
    /// work is left alone: a count that takes well over the 50 ms runs to
    /// its end.
    #[test]
    fn a_stop_leaves_alone_the_work_of_a_step_it_was_not_meant_for() {
        let conn = Connection::open_in_memory().unwrap();
        let stop = Stop::default();
        stop.go_on(Some(&conn)).unwrap();
        stop.go_on(None).unwrap();
        let started = std::time::Instant::now();
        assert_eq!(count_while_asked(&stop, &conn, 3_000_000), Ok(3_000_000));
        assert!(
            started.elapsed() > std::time::Duration::from_millis(100),
            "the count ended before the stop was asked: the test proves nothing"
        );
        assert_eq!(stop.go_on(None), Err(Stopped));
    }
}
