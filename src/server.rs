//! The HTTP transport: the only module that uses tiny_http.
//!
//! tiny_http runs its own accept thread and one thread per connection, and
//! queues parsed requests; our `workers` threads take requests off that queue
//! with `recv()`, convert them to our plain [`Request`], call the handler
//! inside `catch_unwind`, and write the plain [`Response`] back.
//!
//! Workarounds for tiny_http 0.12 defects that its public API allows:
//! - a panicking handler would kill the worker thread (tiny_http answers an
//!   empty 500 and the worker is gone): we catch the panic, answer a JSON 500
//!   and keep the worker;
//! - `unblock()` releases only one thread blocked in `recv()`: shutdown calls
//!   it once per worker;
//! - when `accept()` fails, tiny_http's accept thread queues one error and
//!   exits, leaving a process that no longer accepts connections: the worker
//!   that receives that error stops the whole server, so the process exits
//!   with an error instead of staying up as a zombie;
//! - when the process runs out of file descriptors, the accept thread panics
//!   instead (`try_clone().unwrap()`), queueing nothing: see
//!   [`exit_when_a_transport_thread_panics`]; and the soft descriptor limit
//!   is raised at start-up ([`raise_open_file_limit`]) to make that rarer.
//! - a new connection can wait, unanswered, behind threads that each hold a
//!   keep-alive connection, for as long as those connections stay open:
//!   so some answers close their connection ([`KeepAlive`]).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener};
use std::ops::RangeInclusive;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::http::{ApiError, Request, Response};

/// How long a keep-alive connection is kept at most (why: [`KeepAlive`]).
/// Each connection's lifetime lies between a tenth of this and this, spread
/// by its peer address. Spread, because the connections of a burst would
/// otherwise all close, and reconnect in a new burst, at once.
///
/// How long, measured with the load bench (64 busy connections; the worst
/// first answer, and how many of 10,000 requests opened a new connection):
/// one fixed 250 ms: 537 ms (two generations of the burst); 125–250 ms:
/// 191 ms; 25–250 ms: 65–107 ms, ~800; 10–100 ms: 30–85 ms, ~1,700; 5–50 ms:
/// 27–39 ms, ~2,500. Throughput did not move beyond the noise. We take
/// 10–100 ms: most of the gain, and half the reconnects of 5–50 ms. Every
/// reconnect leaves a socket in TIME_WAIT on the client, which Linux reuses
/// on loopback but not for a remote client (`--allow-remote`).
pub const KEEP_ALIVE_LIFETIME: Duration = Duration::from_millis(100);

/// A bound HTTP server, not yet serving.
pub struct HttpServer {
    inner: Arc<tiny_http::Server>,
    local_addr: SocketAddr,
    stop: Arc<Stop>,
    keep_alive: Arc<KeepAlive>,
}

/// Shared stop state: set once, by a signal or by a fatal transport error.
struct Stop {
    requested: AtomicBool,
    fatal: Mutex<Option<io::Error>>,
}

/// Asks a running [`HttpServer`] to stop: queued and in-flight requests are
/// answered, then the workers exit. Cheap to clone and safe to call from any
/// thread, any number of times.
#[derive(Clone)]
pub struct ShutdownHandle {
    inner: Arc<tiny_http::Server>,
    stop: Arc<Stop>,
    workers: usize,
}

impl ShutdownHandle {
    pub fn shutdown(&self) {
        if self.stop.requested.swap(true, Ordering::SeqCst) {
            return;
        }
        // Each unblock() wakes exactly one worker, after the requests already
        // queued ahead of it; so every worker finishes what it holds first.
        for _ in 0..self.workers {
            self.inner.unblock();
        }
    }
}

impl HttpServer {
    /// Serves on an already-bound listener (bind first, so that callers and
    /// tests know the real port before anything runs).
    pub fn from_listener(listener: TcpListener) -> io::Result<HttpServer> {
        let local_addr = listener.local_addr()?;
        let inner = tiny_http::Server::from_listener(listener, None).map_err(io::Error::other)?;
        Ok(HttpServer {
            inner: Arc::new(inner),
            local_addr,
            stop: Arc::new(Stop {
                requested: AtomicBool::new(false),
                fatal: Mutex::new(None),
            }),
            keep_alive: Arc::new(KeepAlive::new(
                KEEP_ALIVE_LIFETIME / 10..=KEEP_ALIVE_LIFETIME,
            )),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle that stops [`HttpServer::run`] when `workers` workers run.
    pub fn shutdown_handle(&self, workers: usize) -> ShutdownHandle {
        ShutdownHandle {
            inner: Arc::clone(&self.inner),
            stop: Arc::clone(&self.stop),
            workers,
        }
    }

    /// Answers requests with `handler` on `workers` threads until shut down.
    /// Returns an error if the transport failed (the listener stopped
    /// accepting connections), `Ok` after a requested shutdown.
    pub fn run<H>(self, workers: usize, handler: H) -> io::Result<()>
    where
        H: Fn(&Request) -> Response + Send + Sync + 'static,
    {
        let handler = Arc::new(handler);
        let shutdown = self.shutdown_handle(workers);
        let threads: Vec<_> = (0..workers)
            .map(|i| {
                let handler = Arc::clone(&handler);
                let shutdown = shutdown.clone();
                let keep_alive = Arc::clone(&self.keep_alive);
                thread::Builder::new()
                    .name(format!("worker-{i}"))
                    .spawn(move || worker_loop(&shutdown, &keep_alive, &*handler))
            })
            .collect::<io::Result<_>>()?;
        for t in threads {
            // A worker never panics (handler panics are caught), but if one
            // did, the others still have to be joined.
            let _ = t.join();
        }
        match self
            .stop
            .fatal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

fn worker_loop(
    shutdown: &ShutdownHandle,
    keep_alive: &KeepAlive,
    handler: &(dyn Fn(&Request) -> Response + Sync),
) {
    loop {
        match shutdown.inner.recv() {
            Ok(request) => serve_one(request, keep_alive, handler),
            Err(_) if shutdown.stop.requested.load(Ordering::SeqCst) => return,
            Err(e) => {
                log::error!("the listener stopped accepting connections: {e}");
                *shutdown
                    .stop
                    .fatal
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(e);
                shutdown.shutdown();
                return;
            }
        }
    }
}

fn serve_one(
    request: tiny_http::Request,
    keep_alive: &KeepAlive,
    handler: &(dyn Fn(&Request) -> Response + Sync),
) {
    let started = Instant::now();
    keep_alive.request_received();
    let ours = Request {
        method: request.method().as_str().to_owned(),
        target: request.url().to_owned(),
        headers: request
            .headers()
            .iter()
            .map(|h| {
                (
                    h.field.as_str().as_str().to_owned(),
                    h.value.as_str().to_owned(),
                )
            })
            .collect(),
        http_version: {
            let version = request.http_version();
            (version.0, version.1)
        },
    };
    let response = call_catching_panics(handler, &ours);
    // Path only: the query is the client's business, and cookies are never logged.
    log::info!(
        "{} {} {} {:.1}ms",
        ours.method,
        ours.path(),
        response.status,
        started.elapsed().as_secs_f64() * 1000.0
    );
    let closes = keep_alive.answer_closes(request.remote_addr().copied(), &ours, Instant::now());
    let result = if request.body_length().is_some_and(|n| n > UNDRAINABLE_BODY) {
        refuse_without_draining(request, response)
    } else if closes {
        respond_and_close(request, response)
    } else {
        request.respond(to_tiny_http(response))
    };
    if let Err(e) = result {
        log::debug!("could not write a response: {e}");
    }
}

/// Decides which answers say `Connection: close`, so that no connection
/// waits unanswered in tiny_http's queue.
///
/// tiny_http 0.12 gives each connection one thread from a pool for the
/// connection's whole life, and hands a new connection to a queue instead of
/// a new thread while it counts a pool thread as idle. Threads count as idle
/// until they wake, so in a burst of connections several queue behind the
/// same few idle threads, which then each keep a keep-alive connection. A
/// queued connection waits until one of those closes. tiny_http decides on
/// its own whether to keep a connection and has no timeouts, so an answer
/// that tells the client to close is the one lever its API gives: the
/// client closes, and the freed thread takes the oldest queued connection.
/// Two rules, each with a test in `tests/it/transport.rs` that fails
/// without it:
/// - **Busy connections are closed once old** (their first answer after
///   their lifetime, [`KEEP_ALIVE_LIFETIME`]). Without it, a busy client
///   never closes: 2–27 of 64 busy connections went unanswered for 5 s.
/// - **A new connection's first answer closes it when the server falls idle
///   with it** (no other request in flight, and other connections open).
///   This is the browser's case: a page sends a few requests at once on new
///   connections, then keeps them open and idle, so no lifetime ever ends;
///   up to 12 of a burst of 16 went unanswered for 3 s. When the server
///   falls idle, the last answer frees a thread for whatever queued, and the
///   connection that thread takes closes the same way. Only first answers,
///   because with 8 busy clients the server falls idle between two
///   requests for two answers in three, and closing any connection then
///   drove the 401 path from ~37,000 to ~20,000 answers/s; and only with
///   other connections open, so that a lone client keeps its connection.
///   "Open"
///   means seen and not closed by us: a client's own close is invisible
///   here, so its closed connections count until swept, and sequential
///   `curl` calls each get `Connection: close`, which costs them nothing.
struct KeepAlive {
    lifetimes: RangeInclusive<Duration>,
    /// When each open keep-alive connection is done, by peer address: the
    /// one thing tiny_http tells us about a request's connection.
    done_at: Mutex<HashMap<SocketAddr, Instant>>,
    /// Requests received from tiny_http and not yet answered.
    in_flight: AtomicUsize,
}

/// Above this many tracked connections, the ones past their lifetime are
/// forgotten: their clients closed them, or their next answer closes them
/// a lifetime later than it would have. Keeps the map small without a
/// signal for closed connections, which tiny_http does not give.
const MAX_TRACKED_CONNECTIONS: usize = 1024;

impl KeepAlive {
    fn new(lifetimes: RangeInclusive<Duration>) -> KeepAlive {
        KeepAlive {
            lifetimes,
            done_at: Mutex::new(HashMap::new()),
            in_flight: AtomicUsize::new(0),
        }
    }

    /// Called for every request taken from tiny_http.
    fn request_received(&self) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
    }

    /// A lifetime in `lifetimes`, the same for the same peer: a hash of the
    /// address spreads the connections of a burst (they differ by port).
    fn lifetime_of(&self, peer: SocketAddr) -> Duration {
        let (shortest, longest) = (*self.lifetimes.start(), *self.lifetimes.end());
        let span = longest.saturating_sub(shortest).as_micros() as u64;
        let mut hasher = std::hash::DefaultHasher::new();
        peer.hash(&mut hasher);
        shortest + Duration::from_micros(hasher.finish() % (span + 1))
    }

    /// Called once for every received request, just before its answer is
    /// written: whether the answer to `request`, which came from `peer` at
    /// `now`, closes its connection.
    fn answer_closes(&self, peer: Option<SocketAddr>, request: &Request, now: Instant) -> bool {
        // Counted down for every request, whatever follows, so that the
        // count stays exact; fetch_sub makes exactly one of several answers
        // that finish together the last.
        let in_flight_before = self.in_flight.fetch_sub(1, Ordering::SeqCst);
        debug_assert!(
            in_flight_before > 0,
            "an answer to a request never received"
        );
        let server_falls_idle = in_flight_before == 1;
        let Some(peer) = peer else {
            return false;
        };
        let mut done_at = self.done_at.lock().unwrap_or_else(|e| e.into_inner());
        if !keeps_connection(request) {
            // tiny_http closes it after this answer anyway.
            done_at.remove(&peer);
            return false;
        }
        if done_at.len() >= MAX_TRACKED_CONNECTIONS {
            done_at.retain(|_, &mut done| now < done);
        }
        let first_answer = !done_at.contains_key(&peer);
        if first_answer && server_falls_idle && !done_at.is_empty() {
            return true;
        }
        let done = now
            >= *done_at
                .entry(peer)
                .or_insert_with(|| now + self.lifetime_of(peer));
        if done {
            done_at.remove(&peer);
        }
        done
    }
}

/// Whether tiny_http keeps the connection open after answering `request`
/// (its rule, from `ClientConnection::next`).
fn keeps_connection(request: &Request) -> bool {
    let connection = request
        .header_values("Connection")
        .next()
        .map(str::to_ascii_lowercase);
    match (request.http_version, connection) {
        (_, Some(c)) if c.contains("close") || c.contains("upgrade") => false,
        ((1, 0), Some(c)) => c.contains("keep-alive"),
        ((1, 0), None) => false,
        _ => true,
    }
}

/// Answers with `Connection: close`, which tiny_http's `respond` cannot send
/// (it drops that header): tiny_http writes the response into a buffer, we
/// add the header after the status line and write it through `into_writer`.
/// tiny_http still reads on until the client closes, which a client told
/// `close` does (RFC 9112 §9.6).
fn respond_and_close(request: tiny_http::Request, response: Response) -> io::Result<()> {
    let head_only = request.method() == &tiny_http::Method::Head;
    let version = request.http_version().clone();
    let mut raw = Vec::with_capacity(256 + response.body.len());
    to_tiny_http(response).raw_print(&mut raw, version, &[], head_only, None)?;
    let status_line_end = raw
        .windows(2)
        .position(|w| w == b"\r\n")
        .map_or(0, |i| i + 2);
    raw.splice(
        status_line_end..status_line_end,
        b"Connection: close\r\n".iter().copied(),
    );
    let mut writer = request.into_writer();
    writer.write_all(&raw)?;
    writer.flush()
}

/// Declared bodies larger than this are never dropped (see below).
const UNDRAINABLE_BODY: usize = 16 * 1024 * 1024;

/// Sends the answer to a request that declared a huge body we did not read.
///
/// Dropping such a request makes tiny_http 0.12 drain the body into one
/// zeroed allocation of the declared size (`EqualReader::drop`), which
/// aborts the whole process when the size is absurd (e.g. 100 GB). The one
/// way around it in its public API: `upgrade()` writes the response and hands
/// over the connection's streams, and we never drop them. The cost is one
/// tiny_http connection thread and socket left parked for the life of the
/// process, per such request.
fn refuse_without_draining(request: tiny_http::Request, mut response: Response) -> io::Result<()> {
    log::warn!(
        "refused a request declaring a {} byte body; its connection is parked, not drained",
        request.body_length().unwrap_or_default()
    );
    // In upgrade mode tiny_http writes only the head: no length, no body.
    let body = std::mem::take(&mut response.body);
    let response = response.with_header("Content-Length", &body.len().to_string());
    let mut stream = request.upgrade("neptun-refused", to_tiny_http(response));
    let written = stream.write_all(&body).and_then(|()| stream.flush());
    std::mem::forget(stream);
    written
}

/// Calls the handler; a panic becomes a JSON 500 instead of a dead worker.
pub fn call_catching_panics(
    handler: &(dyn Fn(&Request) -> Response + Sync),
    request: &Request,
) -> Response {
    // AssertUnwindSafe: the handler shares only the pool (which recovers from
    // a connection dropped mid-transaction by rolling it back) and immutable
    // configuration, so no broken invariant outlives the panic.
    panic::catch_unwind(AssertUnwindSafe(|| handler(request))).unwrap_or_else(|_| {
        log::error!("handler panicked on {} {}", request.method, request.path());
        ApiError::Internal.into_response()
    })
}

fn to_tiny_http(response: Response) -> tiny_http::Response<io::Cursor<Vec<u8>>> {
    let mut out = tiny_http::Response::from_data(response.body).with_status_code(response.status);
    for (name, value) in &response.headers {
        match tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()) {
            Ok(header) => out.add_header(header),
            Err(()) => log::error!("dropped an invalid response header {name}"),
        }
    }
    out
}

/// Makes a panic on any thread that is not ours (tiny_http's accept and
/// connection threads, which are unnamed; ours all have names) end the
/// process with exit code 70 after the usual panic message. A panicked accept
/// thread takes the listener with it, and a process that stays up without
/// accepting connections is worse than one that exits for its supervisor.
pub fn exit_when_a_transport_thread_panics() {
    let default_hook = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        default_hook(info);
        if thread::current().name().is_none() {
            log::error!(
                "an HTTP transport thread panicked; exiting because the server cannot recover"
            );
            std::process::exit(70);
        }
    }));
}

/// Raises the soft limit on open files to the hard limit, so that a burst of
/// connections does not run the process out of descriptors (which tiny_http
/// cannot survive). Returns the new soft limit.
pub fn raise_open_file_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(io::Error::last_os_error());
        }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    const LIFETIME: Duration = Duration::from_millis(100);

    /// A policy with one request held in flight, so that the server never
    /// falls idle and only the lifetime rule acts.
    fn busy_policy() -> KeepAlive {
        let policy = KeepAlive::new(LIFETIME..=LIFETIME);
        policy.request_received();
        policy
    }

    /// Receives and answers one request from `port`: whether it closes.
    fn answer(policy: &KeepAlive, port: u16, request: &Request, at: Instant) -> bool {
        policy.request_received();
        policy.answer_closes(Some(peer(port)), request, at)
    }

    #[test]
    fn a_busy_connection_is_closed_by_its_first_answer_past_its_lifetime_and_only_that_one() {
        let policy = busy_policy();
        let keep_alive = Request::new("GET", "/", &[]);
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        assert!(!answer(&policy, 1, &keep_alive, at(0)));
        assert!(!answer(&policy, 1, &keep_alive, at(99)));
        assert!(!answer(&policy, 2, &keep_alive, at(99)));
        assert!(answer(&policy, 1, &keep_alive, at(100)));
        // The next connection from the same port starts a new life.
        assert!(!answer(&policy, 1, &keep_alive, at(101)));
        assert!(!answer(&policy, 2, &keep_alive, at(150)));
        assert!(answer(&policy, 2, &keep_alive, at(199)));
    }

    #[test]
    fn a_connection_that_closes_anyway_is_forgotten_and_not_told_twice() {
        let policy = busy_policy();
        let t0 = Instant::now();
        assert!(!answer(&policy, 1, &Request::new("GET", "/", &[]), t0));
        let closing = Request::new("GET", "/", &[("Connection", "close")]);
        assert!(!answer(&policy, 1, &closing, t0 + LIFETIME * 2));
        let keep_alive = Request::new("GET", "/", &[]);
        assert!(!answer(&policy, 1, &keep_alive, t0 + LIFETIME * 3));
    }

    #[test]
    fn connections_past_their_lifetime_are_forgotten_when_too_many_are_tracked() {
        let policy = busy_policy();
        let keep_alive = Request::new("GET", "/", &[]);
        let t0 = Instant::now();
        for port in 0..MAX_TRACKED_CONNECTIONS as u16 {
            answer(&policy, port, &keep_alive, t0);
        }
        let young = u16::MAX;
        answer(&policy, young, &keep_alive, t0 + LIFETIME / 2);
        assert_eq!(
            policy.done_at.lock().unwrap().len(),
            MAX_TRACKED_CONNECTIONS + 1
        );
        answer(&policy, young - 1, &keep_alive, t0 + LIFETIME);
        let tracked = policy.done_at.lock().unwrap();
        assert_eq!(tracked.len(), 2, "only the young ones are left");
    }

    #[test]
    fn a_new_connection_is_closed_by_its_first_answer_when_the_server_falls_idle_with_others_open()
    {
        let policy = KeepAlive::new(LIFETIME..=LIFETIME);
        let keep_alive = Request::new("GET", "/", &[]);
        let t0 = Instant::now();
        // A lone client keeps its connection, on every answer.
        assert!(!answer(&policy, 1, &keep_alive, t0));
        assert!(!answer(&policy, 1, &keep_alive, t0));
        // With 1 open, a new connection's first answer closes it when
        // nothing else is in flight...
        assert!(answer(&policy, 2, &keep_alive, t0));
        // ...and it is not tracked, so its port's next connection is new too.
        assert!(answer(&policy, 2, &keep_alive, t0));
        // Not while another request is in flight.
        policy.request_received();
        assert!(!answer(&policy, 3, &keep_alive, t0));
        // Of answers that finish together, exactly the last falls idle.
        policy.request_received();
        policy.request_received();
        assert!(!policy.answer_closes(Some(peer(4)), &keep_alive, t0));
        assert!(!policy.answer_closes(Some(peer(5)), &keep_alive, t0));
        assert!(policy.answer_closes(Some(peer(6)), &keep_alive, t0));
    }

    #[test]
    fn lifetimes_are_spread_over_the_range_and_fixed_per_peer() {
        let policy = KeepAlive::new(LIFETIME / 2..=LIFETIME);
        let lifetimes: Vec<Duration> = (40_000..40_064)
            .map(|p| policy.lifetime_of(peer(p)))
            .collect();
        assert!(
            lifetimes
                .iter()
                .all(|l| (LIFETIME / 2..=LIFETIME).contains(l))
        );
        assert_eq!(lifetimes[0], policy.lifetime_of(peer(40_000)));
        // Consecutive ports, as a burst gets, land in every quarter of the range.
        for quarter in 0..4 {
            let from = LIFETIME / 2 + LIFETIME / 8 * quarter;
            let count = lifetimes
                .iter()
                .filter(|&&l| l >= from && l < from + LIFETIME / 8)
                .count();
            assert!(
                count >= 4,
                "{count} of 64 in quarter {quarter}: {lifetimes:?}"
            );
        }
    }

    #[test]
    fn keeps_connection_follows_tiny_http_and_http_1_0_rules() {
        let with = |version: (u8, u8), connection: Option<&str>| {
            let mut request = Request::new("GET", "/", &[]);
            request.http_version = version;
            if let Some(value) = connection {
                request
                    .headers
                    .push(("connection".to_owned(), value.to_owned()));
            }
            keeps_connection(&request)
        };
        assert!(with((1, 1), None));
        assert!(with((1, 1), Some("keep-alive")));
        assert!(!with((1, 1), Some("Close")));
        assert!(!with((1, 1), Some("keep-alive, close")));
        assert!(!with((1, 1), Some("Upgrade")));
        assert!(!with((1, 0), None));
        assert!(with((1, 0), Some("Keep-Alive")));
    }

    #[test]
    fn a_panicking_handler_becomes_a_json_500() {
        let handler = |_: &Request| -> Response { panic!("boom") };
        let r = call_catching_panics(&handler, &Request::new("GET", "/", &[]));
        assert_eq!(r.status, 500);
        assert_eq!(r.header("Content-Type"), Some("application/json"));
        assert!(
            String::from_utf8(r.body)
                .unwrap()
                .contains("\"statusCode\":500")
        );
    }
}
