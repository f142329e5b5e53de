//! Background upkeep of the database file, off the request path.
//!
//! After commits (woken by the store for this process's, bursts coalesced;
//! looking every second while idle for other processes'), one thread:
//! 1. once enough pages are free and requests have stopped writing, gives
//!    them back to the file system (`incremental_vacuum`, in small steps,
//!    stopping as soon as a request writes);
//! 2. checkpoints the WAL into the database file (PASSIVE, which never
//!    blocks writers) and then truncates it (TRUNCATE, which by then has
//!    little or nothing left to copy, but blocks writers while it cuts the
//!    file: a few ms per MiB). While requests keep writing, the truncation
//!    runs only every [`Pacing::truncate_every`], which bounds how long a
//!    deleted chat's bytes can stay in the WAL; when they stop, at once.
//!    Passes in between restart the WAL instead (RESTART: a short pause for
//!    writers), so that it is reused from its start and stays short.
//!
//! Together with `secure_delete=ON` this is what makes a deleted chat
//! unreadable in the files: the delete writes zeroed pages into the WAL, the
//! checkpoint copies them over the old ones in the database file, and the
//! truncation drops every older page version from the WAL. Request
//! connections have automatic checkpoints turned off, so this thread is also
//! what keeps the WAL from growing, and a request never pays for a checkpoint.
//!
//! A step blocked by a reader or writer is retried shortly after, never
//! forced; the thread also prunes expired sessions now and then, and once
//! the server is idle after writes, gives the memory they freed back to the
//! OS (see `memory`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::auth;
use crate::db::{self, Database, Step, Upkeep};

/// How the upkeep thread paces itself.
#[derive(Clone, Debug)]
pub struct Pacing {
    /// After the first commit of a burst, wait this long for more before
    /// working, so that a burst of deletes costs one checkpoint.
    pub coalesce: Duration,
    /// Wait this long before retrying a blocked step.
    pub retry: Duration,
    /// Free pages given back per vacuum step (4 KiB each). Small, so that no
    /// step holds the write lock long: moving pages rewrites their parents.
    pub vacuum_step_pages: u32,
    /// Start giving space back once this many pages are free. Erasure does
    /// not wait for it (`secure_delete` already zeroed them); only the file
    /// size does, and a few MiB of slack spares every small delete a vacuum.
    pub vacuum_threshold_pages: i64,
    /// Pause between vacuum steps, so that waiting requests get the lock.
    pub vacuum_pause: Duration,
    /// While giving space back, restart the WAL after this many pages: each
    /// page moved is written to it once more (see `vacuum`).
    pub vacuum_pages_per_restart: i64,
    /// How often the WAL is truncated while requests keep writing, and so
    /// the bound on how long deleted content stays in the WAL under load.
    /// Each truncation holds writers for a time that grows with the WAL's
    /// size, and the restarts between truncations keep the WAL at what is
    /// written between two passes, whatever this setting is: so the rarer
    /// the truncations, the fewer requests wait for one. README promises
    /// erasure within 1 s; the rest of that second is left for the
    /// coalescing and a blocked try or two.
    pub truncate_every: Duration,
    /// How often expired sessions are pruned.
    pub prune_every: Duration,
    /// While idle, how often to look whether another process (a command,
    /// a second server) left commits in the WAL: its commits do not wake
    /// this thread. Looking is one `stat` of the WAL file.
    pub look_for_others_every: Duration,
}

impl Default for Pacing {
    fn default() -> Pacing {
        Pacing {
            coalesce: Duration::from_millis(50),
            retry: Duration::from_millis(50),
            vacuum_step_pages: 64,
            vacuum_threshold_pages: 1024,
            vacuum_pause: Duration::from_millis(2),
            // About 4 MiB of WAL between two restarts.
            vacuum_pages_per_restart: 1024,
            // Not 250 ms, as until 2026-11-28: benches/README.md has the runs.
            truncate_every: Duration::from_millis(750),
            prune_every: Duration::from_secs(15 * 60),
            look_for_others_every: Duration::from_secs(1),
        }
    }
}

/// The running upkeep thread. [`Maintenance::stop`] runs a final pass.
pub struct Maintenance {
    stop: Arc<StopRequest>,
    db: Database,
    thread: JoinHandle<()>,
}

impl Maintenance {
    /// Starts the upkeep thread on its own connection.
    pub fn start(db: Database, pacing: Pacing) -> std::io::Result<Maintenance> {
        let upkeep = db.upkeep_connection().map_err(std::io::Error::other)?;
        let stop = Arc::new(StopRequest::default());
        let thread = {
            let (db, stop) = (db.clone(), Arc::clone(&stop));
            thread::Builder::new()
                .name("maintenance".into())
                .spawn(move || run(&db, &upkeep, &pacing, &stop))?
        };
        Ok(Maintenance { stop, db, thread })
    }

    /// Stops the thread after a last pass that checkpoints and truncates the
    /// WAL (retried for a little while if a reader is still active).
    pub fn stop(self) {
        self.stop_after(true);
    }

    /// Stops the thread without that last pass: for a WAL that may hold
    /// commits this process cannot see (see
    /// [`Database::close_without_checkpoint`]).
    pub fn stop_without_checkpoint(self) {
        self.stop_after(false);
    }

    fn stop_after(self, final_pass: bool) {
        self.stop
            .skip_final_pass
            .store(!final_pass, Ordering::SeqCst);
        self.stop.requested.store(true, Ordering::SeqCst);
        // Wake the thread now rather than at its next timeout.
        self.db.wake_upkeep();
        if self.thread.join().is_err() {
            log::error!("the maintenance thread panicked");
        }
    }
}

/// What [`Maintenance`] asks of its thread.
#[derive(Default)]
struct StopRequest {
    requested: AtomicBool,
    skip_final_pass: AtomicBool,
}

fn run(db: &Database, upkeep: &Upkeep, pacing: &Pacing, stop: &StopRequest) {
    let mut next_prune = Instant::now();
    // Whether to come back after `retry` rather than `look_for_others_every`:
    // at start (the last run may have left work), after pruning, and after a
    // blocked or failed pass.
    let mut retry_soon = true;
    // What the WAL held at the last idle look, if anything.
    let mut left_in_wal = None;
    let mut last_truncation = Instant::now();
    let mut failures = Failures::default();
    let mut held_back = HeldBack::default();
    loop {
        if stop.requested.load(Ordering::SeqCst) {
            if !stop.skip_final_pass.load(Ordering::SeqCst) {
                final_pass(db, upkeep, pacing);
            }
            return;
        }
        if Instant::now() >= next_prune {
            prune(upkeep);
            next_prune = Instant::now() + pacing.prune_every;
            retry_soon = true;
        }
        let wait = if retry_soon {
            pacing.retry
        } else {
            pacing.look_for_others_every
        };
        let mut under_load = false;
        if db.wait_for_writes(wait) {
            // Let the rest of a burst commit first.
            thread::sleep(pacing.coalesce);
            under_load = db.wait_for_writes(Duration::ZERO);
        } else if !retry_soon {
            // Idle. Another process's commits are left for us once it has
            // stopped writing: the WAL unchanged since the last look. One
            // that still writes (a busy second server) has upkeep of its
            // own, which a pass from here, taking SQLite's write lock from
            // another process, would only get in the way of.
            let now = upkeep.wal_content();
            let left = now.is_some() && now == left_in_wal;
            left_in_wal = now;
            if !left {
                continue;
            }
        }
        // Woken, retrying, or another process left commits: a pass is due.
        if !stop.requested.load(Ordering::SeqCst) {
            let work = if under_load {
                Work {
                    vacuum: false,
                    truncate: last_truncation.elapsed() >= pacing.truncate_every,
                }
            } else {
                Work::ALL
            };
            retry_soon = match pass(db, upkeep, pacing, &work) {
                Ok(outcome) => {
                    log::debug!("upkeep pass ({work:?}): {outcome:?}");
                    if let Some(line) = failures.ended(Instant::now()) {
                        log::info!("{line}");
                    }
                    if outcome.truncated {
                        last_truncation = Instant::now();
                        if let Some(line) = held_back.ended(last_truncation) {
                            log::info!("{line}");
                        }
                    } else if outcome.truncation_blocked {
                        if let Some(line) = held_back.blocked(Instant::now()) {
                            log::warn!("{line}");
                        }
                    }
                    if outcome.finished && !under_load {
                        // Idle now, after writes: what a large delete
                        // allocated goes back to the OS.
                        crate::memory::give_back_freed_memory();
                    }
                    !outcome.finished
                }
                Err(e) => {
                    // A full or read-only disk, say: keep retrying, more
                    // slowly, so the work gets done when the fault goes away.
                    if let Some(line) = failures.failed(Instant::now(), &e.to_string()) {
                        log::error!("{line}");
                    }
                    db.wait_for_writes(ERROR_BACKOFF);
                    true
                }
            };
        }
    }
}

/// How long to wait after a failed pass before the next try.
const ERROR_BACKOFF: Duration = Duration::from_secs(1);

/// How often a failure that goes on is logged again. Retried every second,
/// a full disk left overnight would otherwise write 40,000 lines.
const REPEAT_FAILURE_LOG_EVERY: Duration = Duration::from_secs(60);

/// Upkeep failures since the last pass that worked: which of them to log.
#[derive(Default)]
struct Failures {
    /// When the first of them happened.
    since: Option<Instant>,
    /// When one was last logged, and its cause.
    last_logged: Option<(Instant, String)>,
    /// How many happened since then and were not logged.
    unlogged: u32,
}

impl Failures {
    /// The line to log for a failure at `now`, if any: the first, one with
    /// a new cause, and one a minute after the last logged.
    fn failed(&mut self, now: Instant, cause: &str) -> Option<String> {
        let since = *self.since.get_or_insert(now);
        let due = self.last_logged.as_ref().is_none_or(|(at, said)| {
            said != cause || now.duration_since(*at) >= REPEAT_FAILURE_LOG_EVERY
        });
        if !due {
            self.unlogged += 1;
            return None;
        }
        let line = match now.duration_since(since).as_secs() {
            0 => format!("database upkeep failed (will retry): {cause}"),
            secs => format!(
                "database upkeep still failing after {secs} s ({} failure(s) not logged; \
                 will retry): {cause}",
                self.unlogged
            ),
        };
        self.last_logged = Some((now, cause.to_owned()));
        self.unlogged = 0;
        Some(line)
    }

    /// The line to log for a pass that worked at `now`, if passes failed
    /// before it.
    fn ended(&mut self, now: Instant) -> Option<String> {
        let since = self.since.take()?;
        *self = Failures::default();
        Some(format!(
            "database upkeep works again, after {} s of failures",
            now.duration_since(since).as_secs()
        ))
    }
}

/// What the other connections that keep the WAL in use, beyond a moment,
/// most often are.
const OTHER_CONNECTIONS: &str = "a transaction left open in a `sqlite3` shell or a database \
     browser, a `backup` running, or another program's long write";

/// How long the WAL may stay uncut, another connection keeping it in use,
/// before the log says so. README promises erasure within a second; this
/// is well past it, so that a short read or an ordinary `backup` says
/// nothing.
const HELD_BACK_WARN_AFTER: Duration = Duration::from_secs(5);

/// Truncations that another connection kept from running since the last
/// one that ran. A reader's old snapshot (a transaction left open in a
/// `sqlite3` shell or a database browser, a `backup` running) needs the
/// frames the truncation would drop, and so does the write transaction of
/// another process; upkeep never forces either, so what was deleted
/// meanwhile stays in the files. Nothing else tells whoever runs the
/// server that erasure waits.
#[derive(Default)]
struct HeldBack {
    /// When the first of them was tried.
    since: Option<Instant>,
    /// Whether the warning was logged.
    warned: bool,
}

impl HeldBack {
    /// The line to log for a truncation kept from running at `now`: one,
    /// once it has been so for [`HELD_BACK_WARN_AFTER`].
    fn blocked(&mut self, now: Instant) -> Option<String> {
        let since = *self.since.get_or_insert(now);
        let held = now.duration_since(since);
        if self.warned || held < HELD_BACK_WARN_AFTER {
            return None;
        }
        self.warned = true;
        Some(format!(
            "the WAL has not been cut for {} s: another connection keeps using it \
             ({OTHER_CONNECTIONS}); until it ends, what was deleted meanwhile stays in the \
             database files",
            held.as_secs()
        ))
    }

    /// The line to log for a truncation that ran at `now`, if the warning
    /// was logged before it.
    fn ended(&mut self, now: Instant) -> Option<String> {
        let since = self.since.take();
        let warned = std::mem::take(&mut self.warned);
        let since = since.filter(|_| warned)?;
        Some(format!(
            "the WAL is cut again, after {} s: what was deleted meanwhile is gone from \
             the database files",
            now.duration_since(since).as_secs()
        ))
    }
}

/// Which parts of a pass to run.
#[derive(Debug)]
struct Work {
    vacuum: bool,
    truncate: bool,
}

impl Work {
    const ALL: Work = Work {
        vacuum: true,
        truncate: true,
    };
}

/// What a pass got done.
#[derive(Debug)]
struct Outcome {
    /// The WAL was truncated: nothing deleted is left in it.
    truncated: bool,
    /// The truncation was tried, and another connection kept it from
    /// running (see [`HeldBack`]).
    truncation_blocked: bool,
    /// Nothing is left for a later pass; otherwise come back soon.
    finished: bool,
}

/// One round of upkeep: the `work` asked for, as far as it can go now.
fn pass(db: &Database, upkeep: &Upkeep, pacing: &Pacing, work: &Work) -> db::Result<Outcome> {
    const UNFINISHED: Outcome = Outcome {
        truncated: false,
        truncation_blocked: false,
        finished: false,
    };
    let free = upkeep.free_pages()?;
    let vacuum_due = free >= pacing.vacuum_threshold_pages;
    if vacuum_due && work.vacuum && vacuum(db, upkeep, pacing, free)? == Step::Blocked {
        return Ok(UNFINISHED);
    }
    if upkeep.copy_wal()? == Step::Blocked {
        return Ok(UNFINISHED);
    }
    if !work.truncate {
        upkeep.restart_wal()?;
        return Ok(UNFINISHED); // the truncation is still due
    }
    let truncated = upkeep.truncate_wal()? == Step::Done;
    Ok(Outcome {
        truncated,
        truncation_blocked: !truncated,
        // A vacuum skipped under load is still due once requests stop.
        finished: truncated && (work.vacuum || !vacuum_due),
    })
}

/// Gives the `free` pages back to the file system, step by step; `Blocked`
/// if it gave way to requests or to a lock before the end.
fn vacuum(db: &Database, upkeep: &Upkeep, pacing: &Pacing, mut free: i64) -> db::Result<Step> {
    let mut given_back_since_restart = 0;
    while free > 0 {
        // Space can wait; requests cannot. Each step holds the write lock
        // for a commit (with its sync), so stop while they write.
        if db.writes_pending() || upkeep.vacuum_step(pacing.vacuum_step_pages)? == Step::Blocked {
            return Ok(Step::Blocked);
        }
        let before = std::mem::replace(&mut free, upkeep.free_pages()?);
        if free >= before {
            break; // not an INCREMENTAL auto_vacuum file: nothing to give back
        }
        // Every page a step moves goes into the WAL once more. Left alone,
        // the WAL grew to 21-51 MiB while the pages of 10,000 deleted chats
        // were given back, and the truncation that ends the pass then held
        // writers for 10-26 ms while the file system freed the file. Reused
        // from its start, it stays near what one interval writes. A restart
        // blocked by a reader only lets the WAL grow until the next one.
        given_back_since_restart += before - free;
        if given_back_since_restart >= pacing.vacuum_pages_per_restart {
            given_back_since_restart = 0;
            if upkeep.copy_wal()? == Step::Done {
                upkeep.restart_wal()?;
            }
        }
        thread::sleep(pacing.vacuum_pause);
    }
    Ok(Step::Done)
}

fn final_pass(db: &Database, upkeep: &Upkeep, pacing: &Pacing) {
    // The stop waits for this; past a moment, whoever waits is told why.
    if let Some(mib) = much_to_give_back(upkeep) {
        log::info!(
            "giving the {mib} MiB that deleted chats took back to the file system before \
             exiting ({UNTIL_NEXT_START} gives it back)"
        );
    }
    let deadline = Instant::now() + FINAL_PASS_WAITS_FOR_OTHERS;
    let mut said_why = false;
    loop {
        // The requests are done: commits they made must not make the
        // vacuum give way now.
        db.wait_for_writes(Duration::ZERO);
        match pass(db, upkeep, pacing, &Work::ALL) {
            Ok(outcome) if outcome.finished => return,
            Ok(_) if Instant::now() < deadline => {
                if !std::mem::replace(&mut said_why, true) {
                    log::info!(
                        "another connection keeps the WAL in use ({OTHER_CONNECTIONS}): \
                         waiting up to {} s for it, to leave the file checkpointed \
                         ({UNTIL_NEXT_START} checkpoints it)",
                        FINAL_PASS_WAITS_FOR_OTHERS.as_secs()
                    );
                }
                thread::sleep(pacing.retry);
            }
            Ok(_) => break,
            Err(e) => {
                log::error!("final database upkeep failed: {e}");
                break;
            }
        }
    }
    log::warn!("could not checkpoint the WAL before exiting; the next start will do it");
}

/// How long the last pass retries while another connection keeps it from
/// finishing.
const FINAL_PASS_WAITS_FOR_OTHERS: Duration = Duration::from_secs(5);

/// From how much free space giving it back is said first: about half a
/// second here (a 930 MB chat's space took 9 s).
const SAY_WHEN_GIVING_BACK: i64 = 64 << 20;

/// The MiB of free pages, if at least [`SAY_WHEN_GIVING_BACK`].
fn much_to_give_back(upkeep: &Upkeep) -> Option<i64> {
    let free = upkeep.free_bytes().ok()?;
    (free >= SAY_WHEN_GIVING_BACK).then_some(free >> 20)
}

/// What someone waiting for the stop can do instead.
const UNTIL_NEXT_START: &str = "a second Ctrl+C or stop signal exits at once, and the next start";

/// Does at once what the server's upkeep does after its own commits: the
/// WAL checkpointed and truncated, free pages given back. For a command
/// that deletes (`user remove`): a running server would come to it within
/// a second or so, but none may run, and the command's own close does not
/// checkpoint while another connection (an `sqlite3` shell) is open.
/// Retried for a second while a reader holds old frames; returns whether
/// it finished. Calls `long` first, with the MiB to give back, if that
/// will take a while (930 MB took 9 s).
pub fn erase_now(db: &Database, long: impl FnOnce(i64)) -> db::Result<bool> {
    let upkeep = db.upkeep_connection()?;
    if let Some(mib) = much_to_give_back(&upkeep) {
        long(mib);
    }
    let pacing = Pacing::default();
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        // The command's own commit (the delete it ran) must not make the
        // vacuum give way: no request waits here. It did, so that no space
        // was given back and the command blamed a reader.
        db.wait_for_writes(Duration::ZERO);
        if pass(db, &upkeep, &pacing, &Work::ALL)?.finished {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        thread::sleep(pacing.retry);
    }
}

fn prune(upkeep: &Upkeep) {
    match upkeep.prune_sessions(auth::now_unix()) {
        Ok(0) => {}
        Ok(n) => log::info!("pruned {n} expired sessions"),
        Err(e) => log::warn!("could not prune expired sessions: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{self, Actor, Settings};

    /// What the idle loop relies on: a pass that finished leaves the WAL
    /// file empty, even when it had pages to give back (whose moves go
    /// through the WAL), and another process's commit does not.
    #[test]
    fn a_finished_pass_leaves_the_wal_empty_and_a_commit_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let db = Database::open(&path, &Settings::default()).unwrap();
        let upkeep = db.upkeep_connection().unwrap();
        db.add_user("u", None).unwrap();
        let text = "x".repeat(3000);
        let chat = db
            .write(|tx| {
                let chat = db::insert_chat(tx, "u", "chat", "model")?;
                for _ in 0..2000 {
                    db::insert_message(tx, chat, Actor::User, &text)?;
                }
                Ok(chat)
            })
            .unwrap();
        let session = db::tests::signed_in(&db, "u");
        assert_eq!(
            db.delete_chat("u", chat, &session).unwrap(),
            db::Deletion::Deleted
        );
        assert!(upkeep.wal_content().is_some());

        db.wait_for_writes(Duration::ZERO);
        let outcome = pass(&db, &upkeep, &Pacing::default(), &Work::ALL).unwrap();
        assert!(outcome.finished, "{outcome:?}");
        assert_eq!(upkeep.free_pages().unwrap(), 0, "the vacuum ran");
        assert_eq!(upkeep.wal_content(), None, "after its own pass");

        // Another process: a plain connection, as the commands open one.
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute("INSERT INTO users (id) VALUES ('v')", [])
            .unwrap();
        assert!(
            upkeep.wal_content().is_some(),
            "after another process's commit"
        );
    }

    #[test]
    fn a_failure_that_goes_on_is_logged_once_a_minute_and_its_end_once() {
        let start = Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        let mut failures = Failures::default();
        assert_eq!(failures.ended(at(0)), None);
        assert_eq!(
            failures.failed(at(0), "disk full").as_deref(),
            Some("database upkeep failed (will retry): disk full")
        );
        for secs in 1..60 {
            assert_eq!(failures.failed(at(secs), "disk full"), None, "{secs} s");
        }
        assert_eq!(
            failures.failed(at(60), "disk full").as_deref(),
            Some(
                "database upkeep still failing after 60 s (59 failure(s) not logged; \
                 will retry): disk full"
            )
        );
        // A new cause is logged at once.
        let line = failures.failed(at(61), "readonly database").unwrap();
        assert!(line.starts_with("database upkeep still failing after 61 s (0 failure"));
        assert_eq!(failures.failed(at(62), "readonly database"), None);
        assert_eq!(
            failures.ended(at(70)).as_deref(),
            Some("database upkeep works again, after 70 s of failures")
        );
        assert_eq!(failures.ended(at(71)), None);
        // The next failure is a first one again.
        assert_eq!(
            failures.failed(at(80), "disk full").as_deref(),
            Some("database upkeep failed (will retry): disk full")
        );
    }

    #[test]
    fn a_truncation_held_back_is_logged_once_after_five_seconds_and_its_end_once() {
        let start = Instant::now();
        let at = |millis| start + Duration::from_millis(millis);
        let mut held_back = HeldBack::default();
        // A truncation blocked for a moment, as by a request's read, and
        // then done, says nothing.
        assert_eq!(held_back.blocked(at(0)), None);
        assert_eq!(held_back.blocked(at(4_900)), None);
        assert_eq!(held_back.ended(at(4_950)), None);
        // The next episode counts from its own start.
        assert_eq!(held_back.blocked(at(10_000)), None);
        let line = held_back.blocked(at(15_000)).unwrap();
        assert!(
            line.starts_with("the WAL has not been cut for 5 s: another connection"),
            "{line}"
        );
        assert_eq!(held_back.blocked(at(75_000)), None);
        assert_eq!(
            held_back.ended(at(80_000)).as_deref(),
            Some(
                "the WAL is cut again, after 70 s: what was deleted meanwhile is gone \
                 from the database files"
            )
        );
        assert_eq!(held_back.ended(at(81_000)), None);
    }

    /// Giving back a deleted chat's space moves the pages of what comes
    /// after it, and writes each one to the WAL again. Without restarts the
    /// WAL grew to the size of the space given back (21 MiB here), and its
    /// truncation held writers for 10-26 ms in the bench.
    #[test]
    fn giving_space_back_reuses_the_wal_instead_of_growing_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let db = Database::open(&path, &Settings::default()).unwrap();
        db.add_user("u", None).unwrap();
        // About one message per page; the second chat stays, after the first.
        let text = "x".repeat(3000);
        let add_chat = || {
            db.write(|tx| {
                let chat = db::insert_chat(tx, "u", "chat", "model")?;
                for _ in 0..5000 {
                    db::insert_message(tx, chat, Actor::User, &text)?;
                }
                Ok(chat)
            })
            .unwrap()
        };
        let deleted = add_chat();
        add_chat();
        let session = db::tests::signed_in(&db, "u");
        assert_eq!(
            db.delete_chat("u", deleted, &session).unwrap(),
            db::Deletion::Deleted
        );
        let upkeep = db.upkeep_connection().unwrap();
        assert_eq!(upkeep.copy_wal().unwrap(), Step::Done);
        assert_eq!(upkeep.truncate_wal().unwrap(), Step::Done);
        db.wait_for_writes(Duration::ZERO); // or the vacuum gives way at once

        let pacing = Pacing::default();
        let free = upkeep.free_pages().unwrap();
        assert!(
            free > 4 * pacing.vacuum_pages_per_restart,
            "{free} free pages"
        );
        assert_eq!(vacuum(&db, &upkeep, &pacing, free).unwrap(), Step::Done);
        assert_eq!(upkeep.free_pages().unwrap(), 0);
        let wal = std::fs::metadata(format!("{}-wal", path.display()))
            .unwrap()
            .len();
        eprintln!("{free} pages given back, WAL now {wal} bytes");
        assert!(wal < 8 << 20, "{free} pages given back, WAL {wal} bytes");
    }
}
