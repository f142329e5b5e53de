//! Idle connection threads kept ready in tiny_http's pool (see
//! [`SpareThreads`]).

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rand::TryRng;
use rand::rngs::SysRng;

use super::open_connections;

/// How many idle connection threads are kept ready while the server is in
/// use. A browser opens up to 6 connections to one host, and the load
/// bench's largest burst is 64. A fresh server's RSS was 7.6 MiB with its
/// 64 spares and 7.2 MiB once they had exited. Under load they cost more:
/// a refresh while 64 connections are open makes 64 more threads at once,
/// and the bench's peak RSS was then 14.0–14.8 MiB, against about 12 MiB
/// in runs whose refresh missed those connections.
pub(super) const SPARE_CONNECTION_THREADS: usize = 64;

/// Less than tiny_http's 5 s idle timeout, so that the spares never exit
/// while the server is in use.
const REFRESH_EVERY: Duration = Duration::from_secs(4);

/// How often, besides the refreshes, connections of our own make sure that
/// threads come for whatever waits in tiny_http's queue (see
/// [`SpareThreads::threads_for_the_queue`]).
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// How many connections each such check opens where the open connections
/// cannot be counted (see [`SpareThreads::check_the_queue`]): each sets one
/// connection in the queue free. On a quiet server they go to tiny_http's 4
/// lasting threads, so a check starts no thread.
const CHECK_CONNECTIONS: usize = 4;

/// How long one refresh may take. Its requests wait behind the queued
/// requests of clients, so generous.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(2);

/// How long we wait for the answer on one of our connections before we
/// open the next anyway (see `hold_connections`). Under load from 64
/// clients an answer takes about 12 ms, rarely over 30 ms; a connection
/// held a little longer than needed only makes one more idle thread.
const PATIENCE: Duration = Duration::from_millis(50);

/// Keeps idle connection threads ready in tiny_http's pool, so that each
/// connection of a burst finds a thread instead of a queue.
///
/// tiny_http 0.12 queues a new connection, instead of starting a thread,
/// while it counts a pool thread as idle, and a thread counts as idle until
/// it wakes. So a burst of connections is queued onto the idle threads there
/// are, and the connections beyond their number wait until some connection
/// closes. The pool starts with 4 threads, and threads beyond those exit
/// after 5 s idle. Its API has no pool setting, but connections make
/// threads: a connection accepted while no thread is idle gets a new one.
/// So, at start and every [`REFRESH_EVERY`] while requests come, we open
/// `count` connections of our own, one after another, each held open until
/// a request on it is answered (so each holds a thread of its own; see
/// `hold_connections` for one that queued), and then close them all:
/// `count` threads are idle, and they pick up anything that queued
/// meanwhile. Measured with the load bench: the worst first answer at
/// 8 connections fell from 29–108 ms to 9–11 ms.
///
/// Our own requests are answered by a worker without the handler, the log
/// or the keep-alive rules ([`SpareThreads::is_ours`]). A server that gets
/// no requests makes no spares after the refresh at start-up.
///
/// The same thread also makes sure that no connection waits in tiny_http's
/// queue with no thread to come for it
/// ([`SpareThreads::threads_for_the_queue`]).
pub(super) struct SpareThreads {
    /// Where our connections go: the listener, on loopback if it listens on
    /// every address.
    target: SocketAddr,
    count: usize,
    /// [`REFRESH_EVERY`], shorter in tests.
    refresh_every: Duration,
    /// [`CHECK_EVERY`], other in tests.
    check_every: Duration,
    /// The path our own requests ask for, which no client can guess (128
    /// random bits): a request is known as ours by its path alone. By the
    /// connection it came on, a request that a worker took
    /// only after its refresh had ended and closed the connection (one
    /// that queued behind a burst) was served as a client's: with Host
    /// checks off (`--allow-remote`) it was logged as `HEAD / 404`.
    marker: String,
    /// The connections a refresh holds open, until it closes them all:
    /// [`SpareThreads::stop`] shuts them down to end a wait for an answer
    /// that will not come. Shared, so that the refresh can wait for an
    /// answer without the lock.
    ours: Mutex<Vec<Arc<TcpStream>>>,
    /// Set by every client request, cleared when a refresh is due.
    used: AtomicBool,
    /// Set when a pool thread died, cleared when a thread is sent for the
    /// queue.
    lost: AtomicBool,
    /// What the last check found (see [`SpareThreads::check_the_queue`]).
    checked: Mutex<Checked>,
    stopped: Mutex<bool>,
    wake: Condvar,
}

impl SpareThreads {
    /// # Errors
    /// If the operating system's random source fails.
    pub(super) fn new(listening: SocketAddr, count: usize) -> io::Result<SpareThreads> {
        let mut target = listening;
        if target.ip().is_unspecified() {
            target.set_ip(match target {
                SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
            });
        }
        let mut secret = [0u8; 16];
        SysRng
            .try_fill_bytes(&mut secret)
            .map_err(io::Error::other)?;
        Ok(SpareThreads {
            target,
            count,
            refresh_every: REFRESH_EVERY,
            check_every: CHECK_EVERY,
            marker: format!("/.spare/{:032x}", u128::from_be_bytes(secret)),
            ours: Mutex::new(Vec::new()),
            used: AtomicBool::new(false),
            lost: AtomicBool::new(false),
            checked: Mutex::new(Checked::default()),
            stopped: Mutex::new(false),
            wake: Condvar::new(),
        })
    }

    /// Whether a request for `url` (its request target) is one of our own.
    pub(super) fn is_ours(&self, url: &str) -> bool {
        url == self.marker
    }

    /// Called for every client request: keeps the refreshes going, and wakes
    /// them after a quiet spell (then threads have exited, and a burst may
    /// have queued connections that a refresh sets free).
    pub(super) fn request_received(&self) {
        if !self.used.load(Ordering::Relaxed) && !self.used.swap(true, Ordering::SeqCst) {
            // Under the lock, so that the refresh thread cannot miss it
            // between looking at `used` and waiting.
            let _stopped = lock(&self.stopped);
            self.wake.notify_one();
        }
    }

    /// Called when one of tiny_http's connection threads has died (a
    /// panic): a connection may be queued for it, so a thread comes for the
    /// queue at once ([`SpareThreads::threads_for_the_queue`]).
    pub(super) fn connection_thread_lost(&self) {
        if !self.lost.swap(true, Ordering::SeqCst) {
            // Under the lock, as in `request_received`.
            let _stopped = lock(&self.stopped);
            self.wake.notify_one();
        }
    }

    /// Ends [`SpareThreads::run`], also in the middle of a refresh.
    pub(super) fn stop(&self) {
        *lock(&self.stopped) = true;
        self.wake.notify_one();
        for stream in lock(&self.ours).iter() {
            // Not connected any more is as good as shut down.
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Refreshes the spares while the server is in use, and sends threads
    /// for tiny_http's queue, until stopped.
    pub(super) fn run(&self) {
        let mut due = Due::Refresh;
        let mut next_refresh = Instant::now();
        loop {
            match due {
                Due::Refresh => {
                    match self.refresh() {
                        Ok(ready) => log::debug!("{ready} spare connection threads ready"),
                        Err(e) => {
                            log::debug!("could not refresh the spare connection threads: {e}");
                        }
                    }
                    next_refresh = Instant::now() + self.refresh_every;
                }
                Due::ThreadLost => {
                    self.threads_for_the_queue(1);
                }
                Due::Check => self.check_the_queue(),
            }
            match self.wait_for_what_is_due(next_refresh) {
                Some(next) => due = next,
                None => return,
            }
        }
    }

    /// Waits until something is due: threads for the queue, at once after
    /// a connection thread died, and else [`CHECK_EVERY`] after the last
    /// while no client request comes; or a refresh, at `next_refresh` or
    /// after, once a client request came since the last. Without spares,
    /// only the first. `None` once stopped.
    fn wait_for_what_is_due(&self, next_refresh: Instant) -> Option<Due> {
        let next_check = Instant::now() + self.check_every;
        let mut stopped = lock(&self.stopped);
        loop {
            if *stopped {
                return None;
            }
            if self.lost.swap(false, Ordering::SeqCst) {
                return Some(Due::ThreadLost);
            }
            if self.count == 0 {
                // Only a lost thread or the stop is ever due.
                stopped = self.wake.wait(stopped).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            let now = Instant::now();
            if now >= next_refresh && self.used.swap(false, Ordering::SeqCst) {
                return Some(Due::Refresh);
            }
            // A request that came wakes us. Until the refresh it brings,
            // which sets more threads free than a check, no check runs.
            let used = self.used.load(Ordering::SeqCst);
            if !used && now >= next_check {
                return Some(Due::Check);
            }
            let until = if used { next_refresh } else { next_check };
            let (woken, _) = self
                .wake
                .wait_timeout(stopped, until.saturating_duration_since(now))
                .unwrap_or_else(|e| e.into_inner());
            stopped = woken;
        }
    }

    /// Sends threads for tiny_http's queue, as many as connections could
    /// wait there. Where the open connections can be counted: one for each
    /// (no more can wait, and each of ours sets one free), at most
    /// `self.count` a check, until one has been sent for each since they
    /// last changed. So a quiet server sleeps while no connection opens,
    /// whether none is open or a browser keeps its idle ones (for
    /// minutes): each check that sends wakes about a dozen threads.
    ///
    /// A connection can wait in the queue only from its accept on, so
    /// once a thread has been sent for each that is open, only one that
    /// opens later can wait there. One that opens from the address of one
    /// that closed since is missed until the next client request, whose
    /// refresh frees the queue: the addresses are read a second apart, and
    /// a peer's port is seldom taken again that soon.
    fn check_the_queue(&self) {
        let Some(open) = open_connections::accepted_on(self.target.port()) else {
            self.threads_for_the_queue(CHECK_CONNECTIONS);
            return;
        };
        let sent_before = {
            let checked = lock(&self.checked);
            if checked.open == open {
                checked.threads_sent
            } else {
                0
            }
        };
        let wanted = open.len().saturating_sub(sent_before).min(self.count);
        let sent = if wanted == 0 {
            sent_before
        } else {
            // Unless all were answered, count none: some may not have
            // reached a thread.
            match self.threads_for_the_queue(wanted) {
                Some(answered) if answered == wanted => sent_before + wanted,
                _ => 0,
            }
        };
        *lock(&self.checked) = Checked {
            open,
            threads_sent: sent,
        };
    }

    /// Makes `self.count` spares: returns how many are ready.
    fn refresh(&self) -> io::Result<usize> {
        self.hold_then_close(self.count)
    }

    /// Opens `count` connections of our own, so that threads come for
    /// whatever waits in tiny_http's queue: each pool thread that serves
    /// one (a new thread, when none is idle) takes up the next connection
    /// in the queue once we close ours.
    ///
    /// tiny_http queues a new connection for a pool thread that it counts
    /// as idle, and it counts a thread as idle until the thread wakes. So
    /// connections can be queued behind the threads woken for a burst,
    /// and wait there until one of those is done with its own connection.
    /// Two kinds of burst left a request there, unanswered, for as long as
    /// the test waited:
    /// - connections reset before their accept, whose threads each die
    ///   (see `log_panics_and_exit_if_the_transport_panics`): one thread
    ///   comes at once ([`SpareThreads::connection_thread_lost`]);
    /// - connections that send nothing, which hold their threads until
    ///   they close: threads come every [`CHECK_EVERY`] while no client
    ///   request comes (one brings a refresh, which sets up to `count`
    ///   free), if the server keeps spares (see
    ///   [`SpareThreads::check_the_queue`]). Behind 70 or 100 such
    ///   connections, the next request was answered within 1.05 s in 40
    ///   rounds (2026-11-28). With 4 threads a check, as earlier that day
    ///   and still where the open connections cannot be counted, it took
    ///   up to 2 s behind 70 and 10 s behind 100, in a quarter to half of
    ///   the rounds. Without spares (the process may start few threads),
    ///   no check runs: each starts threads.
    ///
    /// Returns how many of ours were answered, `None` on an error.
    fn threads_for_the_queue(&self, count: usize) -> Option<usize> {
        self.hold_then_close(count)
            .inspect_err(|e| log::debug!("could not send a thread for tiny_http's queue: {e}"))
            .ok()
    }

    /// Holds connections until `count` are answered (see
    /// `hold_connections`), then closes them all: their threads are idle.
    /// Returns how many were answered.
    ///
    /// Those answered are reset, so that they leave no socket in
    /// TIME_WAIT. One not answered is closed the usual way: it may not be
    /// accepted yet, and a connection reset before its accept kills the
    /// thread that takes it (see `log_panics_and_exit_if_the_transport_panics`).
    fn hold_then_close(&self, count: usize) -> io::Result<usize> {
        let mut answered = Vec::with_capacity(count);
        let result = self.hold_connections(count, &mut answered);
        lock(&self.ours).clear();
        for stream in &answered {
            reset_on_close(stream);
        }
        result.map(|()| answered.len())
    }

    /// Opens connections one after another, each held (in `ours`) once a
    /// request on it is answered (then a tiny_http thread is busy with it
    /// until we close it), until `count` are answered (and in `answered`)
    /// or we are stopped.
    ///
    /// One that gets no answer within [`PATIENCE`] is held too, but we go
    /// on to the next: it may have queued in tiny_http behind the very burst
    /// this refresh is to set free, and it would wait there until some
    /// connection closes. The next one arrives when no thread is idle, and
    /// gets a thread of its own.
    fn hold_connections(&self, count: usize, answered: &mut Vec<Arc<TcpStream>>) -> io::Result<()> {
        let give_up = Instant::now() + REFRESH_TIMEOUT;
        while answered.len() < count {
            let held = lock(&self.ours).len();
            if held >= 2 * count || Instant::now() >= give_up {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{} of {held} connections answered", answered.len()),
                ));
            }
            let stream = Arc::new(TcpStream::connect_timeout(&self.target, REFRESH_TIMEOUT)?);
            lock(&self.ours).push(Arc::clone(&stream));
            // After registering: `stop` sets the flag before it shuts down
            // what is registered, so one of the two stops us.
            if *lock(&self.stopped) {
                return Ok(());
            }
            // Not under the lock: the answer may take PATIENCE, and `stop`
            // must not wait for it.
            if send_and_await_answer(&stream, &self.marker)? {
                answered.push(stream);
            }
        }
        Ok(())
    }
}

/// Sends one request for `marker` and waits up to [`PATIENCE`] for the head
/// of its answer: whether it came.
fn send_and_await_answer(mut stream: &TcpStream, marker: &str) -> io::Result<bool> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(PATIENCE))?;
    stream.set_write_timeout(Some(REFRESH_TIMEOUT))?;
    stream.write_all(format!("HEAD {marker} HTTP/1.1\r\nHost: spare\r\n\r\n").as_bytes())?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// The open connections at the last check, and how many threads checks
/// have sent for the queue since they last changed.
#[derive(Default)]
struct Checked {
    open: HashSet<SocketAddr>,
    threads_sent: usize,
}

/// What [`SpareThreads::run`] does next.
enum Due {
    Refresh,
    /// One connection of our own, for a connection thread that died (see
    /// `threads_for_the_queue`).
    ThreadLost,
    /// Connections of our own, as many as could wait in the queue (see
    /// `check_the_queue`).
    Check,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Makes closing `stream` send a reset (SO_LINGER 0), so that our own
/// short connections leave no socket in TIME_WAIT.
fn reset_on_close(stream: &TcpStream) {
    // A connection that cannot take the option closes the usual way.
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn a_server_on_every_address_is_reached_over_loopback() {
        let v4 = SpareThreads::new("0.0.0.0:7150".parse().unwrap(), 1).unwrap();
        assert_eq!(v4.target, "127.0.0.1:7150".parse().unwrap());
        let v6 = SpareThreads::new("[::]:7150".parse().unwrap(), 1).unwrap();
        assert_eq!(v6.target, "[::1]:7150".parse().unwrap());
        let one = SpareThreads::new("192.0.2.1:80".parse().unwrap(), 1).unwrap();
        assert_eq!(one.target, "192.0.2.1:80".parse().unwrap());
    }

    /// Our requests are known by their target alone, whenever a worker
    /// takes them, and each server draws its own.
    #[test]
    fn the_refresh_asks_for_a_target_that_only_this_server_knows() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (spares, other) = (
            SpareThreads::new(addr, 1).unwrap(),
            SpareThreads::new(addr, 1).unwrap(),
        );
        while_running(&spares, || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut head = [0u8; 256];
            let read = stream.read(&mut head).unwrap();
            let head = String::from_utf8_lossy(&head[..read]);
            let target = head.split(' ').nth(1).unwrap();
            assert!(spares.is_ours(target), "{head}");
            assert!(!other.is_ours(target), "{head}");
            assert!(!spares.is_ours("/"));
        });
    }

    /// A listener that answers every request on every connection, and
    /// counts the connections.
    fn answering_listener() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        std::thread::spawn(move || {
            for mut stream in listener.incoming().map_while(Result::ok) {
                counter.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let mut buf = [0u8; 256];
                    while matches!(stream.read(&mut buf), Ok(n) if n > 0) {
                        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
                        if stream.write_all(answer).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    /// Waits up to `within` for `accepted` to reach `count`.
    fn connections_reach(accepted: &AtomicUsize, count: usize, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while accepted.load(Ordering::SeqCst) < count {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// After a quiet spell tiny_http's extra threads have exited, and the
    /// next client request must bring the spares back at once, not at the
    /// next interval: a burst that comes with it would otherwise queue.
    #[test]
    fn refreshes_stop_in_a_quiet_spell_and_the_next_request_wakes_them() {
        let (addr, accepted) = answering_listener();
        let spares = spares_for(addr, 3, Duration::from_millis(50), NEVER);
        while_running(&spares, || {
            let patient = Duration::from_secs(5);
            assert!(
                connections_reach(&accepted, 3, patient),
                "the refresh at start"
            );

            std::thread::sleep(spares.refresh_every * 6);
            assert_eq!(
                accepted.load(Ordering::SeqCst),
                3,
                "no refresh while nobody asks"
            );

            let asked = Instant::now();
            spares.request_received();
            assert!(
                connections_reach(&accepted, 6, patient),
                "no refresh after a request"
            );
            // Woken at once: the interval was long over.
            assert!(asked.elapsed() < patient / 2, "{:?}", asked.elapsed());

            spares.request_received();
            assert!(
                connections_reach(&accepted, 9, patient),
                "no refresh one interval after the next request"
            );
        });
    }

    /// Long enough for no check to come during a test.
    const NEVER: Duration = Duration::from_secs(3600);

    /// A lost connection thread is replaced at once, by one connection,
    /// also by a server that keeps no spares.
    #[test]
    fn a_lost_connection_thread_is_replaced_at_once_without_spares_too() {
        let (addr, accepted) = answering_listener();
        let spares = spares_for(addr, 0, REFRESH_EVERY, Duration::from_millis(10));
        while_running(&spares, || {
            std::thread::sleep(Duration::from_millis(100));
            assert_eq!(
                accepted.load(Ordering::SeqCst),
                0,
                "no spares to make, and no checks without them"
            );

            spares.connection_thread_lost();
            assert!(connections_reach(&accepted, 1, Duration::from_secs(5)));
            std::thread::sleep(Duration::from_millis(100));
            assert_eq!(accepted.load(Ordering::SeqCst), 1, "one is enough");
        });
    }

    /// A quiet server with spares still sends threads for the queue now
    /// and then while a connection is open: at every check where the open
    /// connections are not counted, and on Linux when one has opened since
    /// the last check. Once a client request came, it waits for the
    /// refresh instead.
    #[test]
    fn threads_come_for_the_queue_while_no_request_comes() {
        let (addr, accepted) = answering_listener();
        let spares = spares_for(addr, 2, NEVER, Duration::from_millis(50));
        // A client's, which sends nothing (the answering listener is in
        // this process, like a server's connections).
        let _idle = TcpStream::connect(addr).unwrap();
        assert!(connections_reach(&accepted, 1, Duration::from_secs(5)));
        // The number of connections once it has stayed the same for 10
        // checks.
        let settled = || {
            let mut last = accepted.load(Ordering::SeqCst);
            for _ in 0..10 {
                std::thread::sleep(10 * spares.check_every);
                let now = accepted.load(Ordering::SeqCst);
                if now == last {
                    return now;
                }
                last = now;
            }
            panic!("checks for the same open connection never stopped: {last}");
        };
        while_running(&spares, || {
            let started = Instant::now();
            if cfg!(target_os = "linux") {
                // The idle one, the 2 spares at start, then a check: one
                // connection, as one is open.
                assert!(connections_reach(&accepted, 4, Duration::from_secs(5)));
                let before = settled();
                let _another = TcpStream::connect(addr).unwrap();
                // The new one, and a check for the two now open.
                assert!(connections_reach(
                    &accepted,
                    before + 3,
                    Duration::from_secs(5)
                ));
            } else {
                // The idle one, the spares at start, then two checks.
                let checked_twice = 3 + 2 * CHECK_CONNECTIONS;
                assert!(connections_reach(
                    &accepted,
                    checked_twice,
                    Duration::from_secs(5)
                ));
                // A check apart, not all at once.
                assert!(started.elapsed() >= 2 * spares.check_every);
            }

            spares.request_received();
            // Time for a check already under way to end.
            std::thread::sleep(2 * spares.check_every);
            let before = accepted.load(Ordering::SeqCst);
            std::thread::sleep(10 * spares.check_every);
            assert_eq!(
                accepted.load(Ordering::SeqCst),
                before,
                "no checks once a request came"
            );
        });
    }

    /// A check sends as many threads for the queue as connections are
    /// open, so that one check frees it whatever waits there, and none
    /// while none is: a quiet server sleeps. (Elsewhere than on Linux, the
    /// open connections are not counted, and each check sends 4.)
    #[cfg(target_os = "linux")]
    #[test]
    fn a_check_sends_a_thread_for_each_open_connection() {
        let (addr, accepted) = answering_listener();
        let spares = SpareThreads::new(addr, SPARE_CONNECTION_THREADS).unwrap();
        spares.check_the_queue();
        assert_eq!(accepted.load(Ordering::SeqCst), 0, "none open, none sent");

        // Clients', which send nothing (the answering listener is in this
        // process, like a server's connections); more than 4.
        let open = 10;
        let _idle: Vec<_> = (0..open)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        assert!(connections_reach(&accepted, open, Duration::from_secs(5)));
        // Each of ours was answered before the check returned.
        spares.check_the_queue();
        assert_eq!(accepted.load(Ordering::SeqCst), 2 * open);

        // Once ours have closed, the same connections are open as when
        // that check freed the queue: none can wait there.
        only_theirs_open(addr, open);
        spares.check_the_queue();
        assert_eq!(accepted.load(Ordering::SeqCst), 2 * open, "sent again");

        // A new one may wait there: threads for all that are open.
        let _new = TcpStream::connect(addr).unwrap();
        assert!(connections_reach(
            &accepted,
            2 * open + 1,
            Duration::from_secs(5)
        ));
        only_theirs_open(addr, open + 1);
        spares.check_the_queue();
        assert_eq!(accepted.load(Ordering::SeqCst), 3 * open + 2);
    }

    /// More connections than one check sends threads for get threads over
    /// as many checks as it takes, and then no more.
    #[cfg(target_os = "linux")]
    #[test]
    fn checks_send_a_thread_for_each_of_more_connections_than_one_check_can() {
        let (addr, accepted) = answering_listener();
        let spares = SpareThreads::new(addr, 4).unwrap();
        let open = 10;
        let _idle: Vec<_> = (0..open)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        assert!(connections_reach(&accepted, open, Duration::from_secs(5)));
        for sent in [4, 8, 10, 10] {
            only_theirs_open(addr, open);
            spares.check_the_queue();
            assert_eq!(accepted.load(Ordering::SeqCst), open + sent);
        }
    }

    /// Waits until `count` connections to `addr` are open in this process,
    /// with any of ours closed.
    #[cfg(target_os = "linux")]
    fn only_theirs_open(addr: SocketAddr, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while open_connections::accepted_on(addr.port()).map(|peers| peers.len()) != Some(count) {
            assert!(Instant::now() < deadline, "ours never closed");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Spares for `addr` that refresh and check at these intervals.
    fn spares_for(
        addr: SocketAddr,
        count: usize,
        refresh_every: Duration,
        check_every: Duration,
    ) -> SpareThreads {
        SpareThreads {
            refresh_every,
            check_every,
            ..SpareThreads::new(addr, count).unwrap()
        }
    }

    /// Runs `spares` on a thread of its own during `test`.
    fn while_running(spares: &SpareThreads, test: impl FnOnce()) {
        std::thread::scope(|s| {
            s.spawn(|| spares.run());
            // Stops the spares also when an assertion fails: the scope
            // waits for `run` before it passes the panic on.
            let _stop = StopOnDrop(spares);
            test();
        });
    }

    struct StopOnDrop<'a>(&'a SpareThreads);

    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.stop();
        }
    }

    #[test]
    fn stop_ends_a_refresh_that_waits_for_an_answer_that_never_comes() {
        // Connections complete in the backlog, but nothing ever answers.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let spares = SpareThreads::new(listener.local_addr().unwrap(), 4).unwrap();
        std::thread::scope(|s| {
            let running = s.spawn(|| spares.run());
            let deadline = Instant::now() + REFRESH_TIMEOUT;
            while lock(&spares.ours).is_empty() {
                assert!(Instant::now() < deadline, "the refresh never connected");
                std::thread::sleep(Duration::from_millis(1));
            }
            let asked = Instant::now();
            spares.stop();
            running.join().unwrap();
            assert!(
                asked.elapsed() < REFRESH_TIMEOUT / 4,
                "{:?}",
                asked.elapsed()
            );
        });
        assert!(lock(&spares.ours).is_empty(), "forgotten once closed");
    }
}
