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
//!   [`log_panics_and_exit_if_the_transport_panics`]; and the soft descriptor limit
//!   is raised at start-up ([`raise_open_file_limit`]) to make that rarer;
//! - a connection reset before its accept makes tiny_http's thread for it
//!   panic at its first request (the peer address it could not take is
//!   unwrapped): that panic drops only the connection, and the server
//!   serves on (also in [`log_panics_and_exit_if_the_transport_panics`]);
//!   the thread is replaced at once, since a connection queued for it
//!   would wait for no one (`SpareThreads::connection_thread_lost`);
//! - after answering a request whose body it has not read, tiny_http waits
//!   for that body until the client sends it or closes: such requests are
//!   answered on a thread of their own (`answer_off_the_worker`), so that
//!   no worker waits;
//! - a new connection can wait, unanswered, behind threads that each hold a
//!   keep-alive connection, for as long as those connections stay open: so
//!   idle connection threads are kept ready by connecting to ourselves
//!   (`SpareThreads`), and some answers close their connection
//!   (`KeepAlive`) for bursts larger than that; connections queued behind
//!   threads that no client frees (each holding a connection that sends
//!   nothing) get threads of our own every second while no request
//!   comes: one per open connection (on Linux; 4 elsewhere), none while
//!   none is open (`SpareThreads::check_the_queue`).
//! - tiny_http queues a connection's next request as soon as it is read,
//!   so two requests pipelined on one connection would run at the same
//!   time, and the second could take effect first: a connection's requests
//!   are handled one after another, in order (`InOrder`).

use std::backtrace::{Backtrace, BacktraceStatus};
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread;
use std::time::Instant;

use crate::http::{ApiError, Request, Response};
use crate::logging::{self, printable};

mod in_order;
mod keep_alive;
mod limits;
mod open_connections;
mod spare_threads;

use in_order::{InOrder, Next};
use keep_alive::KeepAlive;
pub use keep_alive::{KEEP_ALIVE_LIFETIME, RECENTLY_ANSWERED};
use limits::default_spares;
pub use limits::raise_open_file_limit;
use spare_threads::SpareThreads;

/// A bound HTTP server, not yet serving.
pub struct HttpServer {
    inner: Arc<tiny_http::Server>,
    local_addr: SocketAddr,
    stop: Arc<Stop>,
    keep_alive: Arc<KeepAlive>,
    spares: Arc<SpareThreads>,
    in_order: Arc<InOrder<tiny_http::Request>>,
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
    spares: Arc<SpareThreads>,
    workers: usize,
}

impl ShutdownHandle {
    pub fn shutdown(&self) {
        if self.stop.requested.swap(true, Ordering::SeqCst) {
            return;
        }
        self.spares.stop();
        // Each unblock() wakes exactly one worker, after the requests already
        // queued ahead of it; so every worker finishes what it holds first.
        for _ in 0..self.workers {
            self.inner.unblock();
        }
    }
}

impl HttpServer {
    /// Serves on an already-bound listener (bind first, so that callers and
    /// tests know the real port before anything runs), with the default
    /// number of spare connection threads.
    pub fn from_listener(listener: TcpListener) -> io::Result<HttpServer> {
        HttpServer::from_listener_with_spares(listener, default_spares())
    }

    /// Like [`HttpServer::from_listener`], keeping `spares` idle connection
    /// threads ready instead of the default (why: `SpareThreads`). Tests
    /// use 0, to see the keep-alive rules alone.
    pub fn from_listener_with_spares(
        listener: TcpListener,
        spares: usize,
    ) -> io::Result<HttpServer> {
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
            spares: Arc::new(SpareThreads::new(local_addr, spares)?),
            in_order: Arc::default(),
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
            spares: Arc::clone(&self.spares),
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
        let _registered = Registered::while_serving(&self.spares);
        let handler = Arc::new(handler);
        let shutdown = self.shutdown_handle(workers);
        let threads: Vec<_> = (0..workers)
            .map(|i| {
                let handler = Arc::clone(&handler);
                let shutdown = shutdown.clone();
                let keep_alive = Arc::clone(&self.keep_alive);
                let spares = Arc::clone(&self.spares);
                let in_order = Arc::clone(&self.in_order);
                thread::Builder::new()
                    .name(format!("worker-{i}"))
                    .spawn(move || {
                        worker_loop(&shutdown, &in_order, &keep_alive, &spares, &*handler)
                    })
            })
            .collect::<io::Result<_>>()?;
        let spares = Arc::clone(&self.spares);
        // Without it the server still serves (the keep-alive rules bound
        // every wait; a connection queued for a lost thread waits until
        // another connection ends), so a failed spawn is not fatal.
        let refresher = thread::Builder::new()
            .name("spare-threads".to_owned())
            .spawn(move || spares.run())
            .inspect_err(|e| log::warn!("running without spare connection threads: {e}"))
            .ok();
        for t in threads {
            // A worker never panics (handler panics are caught), but if one
            // did, the others still have to be joined.
            let _ = t.join();
        }
        if let Some(refresher) = refresher {
            let _ = refresher.join();
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

/// The spare threads of every server serving in this process, so that the
/// panic hook can have a lost connection thread replaced: tiny_http's
/// threads have no name, and a panicking one cannot say whose it is.
static SERVING: Mutex<Vec<Weak<SpareThreads>>> = Mutex::new(Vec::new());

/// A server's entry in [`SERVING`], removed when dropped.
struct Registered(Weak<SpareThreads>);

impl Registered {
    fn while_serving(spares: &Arc<SpareThreads>) -> Registered {
        let spares = Arc::downgrade(spares);
        lock_serving().push(Weak::clone(&spares));
        Registered(spares)
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock_serving().retain(|other| !other.ptr_eq(&self.0));
    }
}

fn lock_serving() -> std::sync::MutexGuard<'static, Vec<Weak<SpareThreads>>> {
    // Nothing panics while it is held.
    SERVING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Tells every server serving in this process that a connection thread
/// was lost, so that each sends a thread for tiny_http's queue (see
/// `SpareThreads::connection_thread_lost`).
fn replace_lost_connection_thread() {
    for spares in lock_serving().iter().filter_map(Weak::upgrade) {
        spares.connection_thread_lost();
    }
}

fn worker_loop(
    shutdown: &ShutdownHandle,
    in_order: &InOrder<tiny_http::Request>,
    keep_alive: &KeepAlive,
    spares: &SpareThreads,
    handler: &(dyn Fn(&Request) -> Response + Sync),
) {
    loop {
        match in_order.next(|| shutdown.inner.recv(), |r| r.remote_addr().copied()) {
            Next::Handle(mut request, peer) => loop {
                if spares.is_ours(request.url()) {
                    if let Err(e) = request.respond(tiny_http::Response::empty(204)) {
                        log::debug!("could not answer our own request: {e}");
                    }
                } else {
                    spares.request_received();
                    serve_one(request, keep_alive, handler);
                }
                // Then whatever that connection pipelined behind it.
                match peer.and_then(|peer| in_order.after(peer)) {
                    Some(next) => request = next,
                    None => break,
                }
            },
            Next::Stop(_) if shutdown.stop.requested.load(Ordering::SeqCst) => return,
            Next::Stop(e) => {
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
    // Path only: the query is the client's business, and cookies are never
    // logged. An error's reason is one of the API's fixed messages, and its
    // detail a fixed phrase.
    log::info!(
        "{} {} {} {:.1}ms{}",
        printable(&ours.method),
        printable(ours.path()),
        response.status,
        started.elapsed().as_secs_f64() * 1000.0,
        match (response.reason, response.log_detail) {
            (Some(reason), Some(detail)) => format!(" ({reason}: {detail})"),
            (Some(reason), None) => format!(" ({reason})"),
            (None, _) => String::new(),
        }
    );
    // Asked first, always: the keep-alive rules count every answer.
    let said = keep_alive.connection_header(request.remote_addr().copied(), &ours, Instant::now());
    let connection = if response.close_connection {
        Some("close")
    } else {
        said
    };
    let result = if request.body_length().is_some_and(|n| n > UNDRAINABLE_BODY) {
        refuse_without_draining(request, response)
    } else if body_left_unread(&request) {
        answer_off_the_worker(request, response)
    } else if connection.is_some() || response.status == 204 {
        respond_written_out(request, response, connection)
    } else {
        request.respond(to_tiny_http(response))
    };
    if let Err(e) = result {
        log::debug!("could not write a response: {e}");
    }
}

/// tiny_http reads a body of up to this many bytes along with the request.
const PREREAD_BODY: usize = 1024;

/// Whether dropping the request will make tiny_http read the rest of its
/// body: one larger than it reads along with the request, or one the client
/// waits to send until told `100 Continue` (which tiny_http sends only if
/// the body is read, and this API reads none).
fn body_left_unread(request: &tiny_http::Request) -> bool {
    request.body_length().is_some_and(|length| {
        length > PREREAD_BODY
            || (length > 0 && request.headers().iter().any(|h| h.field.equiv("Expect")))
    })
}

/// Answers on a thread of its own, so that the worker goes straight back
/// to the queue. After the answer, tiny_http reads the rest of the body,
/// and that read waits for as long as the client neither sends it nor
/// closes: on a worker, `--workers` such requests would stall the server.
/// The thread ends with the read. If it cannot be started, the worker
/// answers.
///
/// Never with `Connection: close`: `into_writer`, which that answer needs,
/// drops the request, and so reads the body, before the answer is written.
fn answer_off_the_worker(request: tiny_http::Request, response: Response) -> io::Result<()> {
    let slot = Arc::new(Mutex::new(Some((request, response))));
    let theirs = Arc::clone(&slot);
    let spawned = thread::Builder::new()
        .name("body-drain".to_owned())
        .spawn(move || {
            let taken = theirs.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Err(e) = taken.map_or(Ok(()), respond) {
                log::debug!("could not write a response: {e}");
            }
        });
    match spawned {
        Ok(_) => Ok(()),
        Err(e) => {
            log::warn!("answering on the worker, which waits for the unread body: {e}");
            let taken = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
            taken.map_or(Ok(()), respond)
        }
    }
}

fn respond((request, response): (tiny_http::Request, Response)) -> io::Result<()> {
    request.respond(to_tiny_http(response))
}

/// Answers through `into_writer`, with the head tiny_http's `respond`
/// would write changed in two ways it cannot be told to make: with a
/// `Connection` header when `connection` gives its value (its `respond`
/// drops that header), and without `Content-Length` on a `204` (it adds
/// one to every answer, which RFC 9110 §8.6 forbids there). tiny_http
/// renders the response into a buffer; the head is amended and the whole
/// written in one go. After a `close`, tiny_http still reads on until the
/// client closes, which an HTTP/1.1 client told `close` does (RFC 9112
/// §9.6); otherwise the connection stays open as after `respond`.
fn respond_written_out(
    request: tiny_http::Request,
    response: Response,
    connection: Option<&str>,
) -> io::Result<()> {
    let head_only = request.method() == &tiny_http::Method::Head;
    // The status line of a request that names HTTP/0.9, refused with 505,
    // says 1.0: 0.9 has none. (One whose body is left unread is answered
    // through tiny_http's own writer, which still says 0.9.)
    let version = match request.http_version() {
        v if v.0 == 0 => tiny_http::HTTPVersion(1, 0),
        v => v.clone(),
    };
    let no_content = response.status == 204;
    let mut rendered = Vec::with_capacity(256 + response.body.len());
    to_tiny_http(response).raw_print(&mut rendered, version, &[], head_only, None)?;
    let raw = amend_head(&rendered, connection, no_content);
    let mut writer = request.into_writer();
    writer.write_all(&raw)?;
    writer.flush()
}

/// `rendered`, a whole response, with a `Connection` header of the value
/// `connection` gives added after the status line, and its
/// `Content-Length` taken out when `no_content`.
fn amend_head(rendered: &[u8], connection: Option<&str>, no_content: bool) -> Vec<u8> {
    let head_end = rendered
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(rendered.len(), |i| i + 2);
    let (head, rest) = rendered.split_at(head_end);
    let mut raw = Vec::with_capacity(rendered.len() + 24);
    for (i, line) in head.split_inclusive(|&b| b == b'\n').enumerate() {
        let is_length = line
            .get(..15)
            .is_some_and(|name| name.eq_ignore_ascii_case(b"content-length:"));
        if !(no_content && is_length) {
            raw.extend_from_slice(line);
        }
        if let Some(value) = connection.filter(|_| i == 0) {
            for part in [b"Connection: ", value.as_bytes(), b"\r\n"] {
                raw.extend_from_slice(part);
            }
        }
    }
    raw.extend_from_slice(rest);
    raw
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
        log::error!(
            "handler panicked on {} {}",
            printable(&request.method),
            printable(request.path())
        );
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

/// Logs every panic as one error line (followed by its backtrace when
/// `RUST_BACKTRACE` asks for one), and makes a panic on any thread that
/// is not ours (tiny_http's accept and connection threads, which are
/// unnamed; ours all have names) end the process with exit code 70. A
/// panicked accept thread takes the listener with it, and a process that
/// stays up without accepting connections is worse than one that exits for
/// its supervisor.
///
/// Rust's own hook writes a panic's message straight to stderr, in lines
/// of its own: the journal filed them at the default priority, so
/// `journalctl -p err` showed that the server exited but not why, and with
/// a stderr that no one reads a worker would wait there. The log writes
/// them through its queue, each line at the error priority. A panic of the log's own thread still
/// goes to Rust's hook, since the queue it would use is the one it drains,
/// and so does any panic while the log is off.
///
/// Except a panic in tiny_http's `client.rs`, the code of one connection's
/// thread: it ends that thread and drops that connection, and a thread is
/// started in its place (a connection may be queued for it: see
/// `SpareThreads::connection_thread_lost`). tiny_http 0.12 takes a
/// connection's peer address when it accepts it and unwraps it at the first
/// request. A client that sends a request and resets the connection before
/// the accept (`SO_LINGER` 0, as our own spare connections close) leaves
/// no address, and that unwrap panics: any local process could otherwise
/// stop the server in a few hundred connections. (The accept thread runs
/// one function of `client.rs`, `ClientConnection::new`, whose one unwrap
/// is on an iterator that never ends.)
pub fn log_panics_and_exit_if_the_transport_panics() {
    let default_hook = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        let location = info.location();
        // With the log off (`--log-level off`), a panic's message is still
        // told, by Rust's hook: it may be the only word on why the process
        // ended.
        let logged = log::log_enabled!(log::Level::Error);
        match thread::current().name() {
            Some(logging::THREAD_NAME) => default_hook(info),
            Some(_) if !logged => default_hook(info),
            Some(name) => {
                let who = format!("thread '{}'", printable(name));
                let what = panic_message(&who, location, info.payload());
                log::error!("{what}{}", backtrace());
                // The process ends with its main thread, before main()
                // flushes the log.
                if name == "main" {
                    logging::flush();
                }
            }
            None if location.is_some_and(in_a_connection_thread) => {
                // Debug: the client's doing, nothing for the operator to act on.
                log::debug!(
                    "dropped a connection reset before it was accepted (tiny_http's thread \
                     for it panicked at client.rs:{})",
                    location.map_or(0, |at| at.line())
                );
                replace_lost_connection_thread();
            }
            None if !logged => {
                default_hook(info);
                std::process::exit(70);
            }
            None => {
                let what = panic_message("an HTTP transport thread", location, info.payload());
                log::error!(
                    "{what}; exiting because the server cannot recover{}",
                    backtrace()
                );
                logging::flush();
                std::process::exit(70);
            }
        }
    }));
}

/// `WHO panicked at FILE:LINE:COL: MESSAGE`, as Rust's own hook says it,
/// but on one line.
fn panic_message(
    who: &str,
    location: Option<&panic::Location>,
    payload: &(dyn std::any::Any + Send),
) -> String {
    let message = match (
        payload.downcast_ref::<&str>(),
        payload.downcast_ref::<String>(),
    ) {
        (Some(text), _) => text,
        (None, Some(text)) => text.as_str(),
        (None, None) => "Box<dyn Any>",
    };
    let mut out = format!("{who} panicked");
    if let Some(at) = location {
        out += &format!(" at {}:{}:{}", printable(at.file()), at.line(), at.column());
    }
    // A message can hold what a client sent, and its line breaks would
    // forge log lines.
    out += &format!(": {}", printable(message));
    out
}

/// The lines of a backtrace, if `RUST_BACKTRACE` asks for one and there is
/// something in it to read.
fn backtrace() -> String {
    let backtrace = Backtrace::capture();
    if backtrace.status() != BacktraceStatus::Captured {
        return String::new();
    }
    told_if_resolved(&backtrace.to_string())
}

/// The lines that follow a panic's for its backtrace's `frames`, unless
/// none of them is resolved. Frames are resolved by reading the
/// executable, which a process out of descriptors cannot open: a column of
/// `"<unknown>"` says nothing (Rust's own hook then prints no frame either).
fn told_if_resolved(frames: &str) -> String {
    if frames.lines().all(|line| line.ends_with("<unknown>")) {
        return String::new();
    }
    format!("\nstack backtrace:\n{frames}")
}

/// Whether a panic at `location` is in tiny_http's per-connection code.
fn in_a_connection_thread(location: &panic::Location) -> bool {
    let file = location.file();
    file.contains("tiny_http") && (file.ends_with("/client.rs") || file.ends_with("\\client.rs"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_is_amended_and_the_body_left_alone() {
        let rendered = b"HTTP/1.1 204 No Content\r\nDate: x\r\ncontent-length: 0\r\n\r\n";
        let amended = |connection, no_content| {
            String::from_utf8(amend_head(rendered, connection, no_content)).unwrap()
        };
        assert_eq!(
            amended(None, true),
            "HTTP/1.1 204 No Content\r\nDate: x\r\n\r\n"
        );
        assert_eq!(
            amended(Some("close"), true),
            "HTTP/1.1 204 No Content\r\nConnection: close\r\nDate: x\r\n\r\n"
        );
        assert_eq!(
            amended(Some("keep-alive"), false),
            "HTTP/1.1 204 No Content\r\nConnection: keep-alive\r\nDate: x\r\n\
             content-length: 0\r\n\r\n"
        );
        let with_body =
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 21\r\n\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            String::from_utf8(amend_head(with_body, Some("close"), false)).unwrap(),
            "HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 21\r\n\r\n\
             Content-Length: 0\r\n\r\n"
        );
        // Even with no_content, the body (had a 204 one) is not looked at.
        assert!(
            String::from_utf8(amend_head(with_body, None, true))
                .unwrap()
                .ends_with("\r\n\r\nContent-Length: 0\r\n\r\n")
        );
    }

    #[test]
    fn a_panic_is_told_on_one_line_with_where_and_what() {
        let at = panic::Location::caller();
        let place = format!("{}:{}:{}", at.file(), at.line(), at.column());
        let said = |payload: Box<dyn std::any::Any + Send>, location| {
            panic_message("thread 'worker-1'", location, &*payload)
        };
        assert_eq!(
            said(Box::new("boom"), Some(at)),
            format!("thread 'worker-1' panicked at {place}: boom")
        );
        // A formatted message, with what a client sent: no line is forged.
        assert_eq!(
            said(Box::new(String::from("bad /a\nINFO  x")), None),
            "thread 'worker-1' panicked: bad /a\\x0aINFO  x"
        );
        assert_eq!(
            said(Box::new(7_u8), None),
            "thread 'worker-1' panicked: Box<dyn Any>"
        );
    }

    #[test]
    fn a_backtrace_of_unresolved_frames_only_is_left_out() {
        assert_eq!(told_if_resolved("   0: <unknown>\n   1: <unknown>\n"), "");
        let resolved = "   0: <unknown>\n   1: neptun_local::server::run\n";
        assert_eq!(
            told_if_resolved(resolved),
            format!("\nstack backtrace:\n{resolved}")
        );
    }

    /// Set in a child of this test binary (see [`stderr_of_a_panicking_worker`])
    /// to the log level it runs with.
    const PANICKING_CHILD: &str = "NEPTUN_TEST_PANICKING_CHILD";

    /// A panic on one of our named threads (a worker's, say) is an error
    /// line in the log, with the backtrace after it when `RUST_BACKTRACE`
    /// asks for one. With the log off, Rust's own hook still tells it.
    #[test]
    fn a_panic_on_a_named_thread_is_an_error_in_the_log() {
        if let Ok(level) = std::env::var(PANICKING_CHILD) {
            return panic_on_a_worker(level.parse().unwrap());
        }
        let line = "ERROR thread 'worker-3' panicked at src/server.rs:";
        let message = ": boom\\x0aINFO  forged";

        let stderr = stderr_of_a_panicking_worker("info", "0", false);
        let mut lines = stderr.lines();
        let first = lines.next().unwrap_or_default();
        assert!(first.contains(line) && first.ends_with(message), "{stderr}");
        assert_eq!(
            lines.next(),
            None,
            "one line, and nothing from Rust's hook:\n{stderr}"
        );

        let stderr = stderr_of_a_panicking_worker("off", "0", false);
        assert!(
            stderr.contains("'worker-3'") && stderr.contains("boom"),
            "{stderr}"
        );

        // Frames are resolved where the tests run under Wine too, but not
        // always: the backtrace's own lines are checked on Unix.
        #[cfg(unix)]
        for journal in [false, true] {
            let stderr = stderr_of_a_panicking_worker("info", "1", journal);
            let lines: Vec<&str> = stderr.lines().collect();
            assert!(lines.len() > 2, "{stderr}");
            assert!(
                lines[0].contains(line) && lines[0].ends_with(message),
                "{stderr}"
            );
            let continued = if journal {
                "<3>stack backtrace:"
            } else {
                "stack backtrace:"
            };
            assert_eq!(lines[1], continued, "{stderr}");
            assert!(stderr.contains("panic_on_a_worker"), "{stderr}");
            if journal {
                assert!(
                    lines.iter().all(|l| l.starts_with("<3>")),
                    "every line of it, for journalctl -p err:\n{stderr}"
                );
            }
        }
    }

    /// What the child of [`a_panic_on_a_named_thread_is_an_error_in_the_log`]
    /// does: logs at `level` with the server's hook, then a worker panics.
    fn panic_on_a_worker(level: log::LevelFilter) {
        logging::init(level);
        log_panics_and_exit_if_the_transport_panics();
        let worker = thread::Builder::new()
            .name("worker-3".into())
            .spawn(|| panic!("boom\nINFO  forged"))
            .unwrap();
        assert!(worker.join().is_err());
        logging::flush();
    }

    /// The stderr of this test binary run again as a child that logs at
    /// `level` and whose worker panics; `RUST_BACKTRACE` is `backtrace`, and
    /// with `journal` the child's stderr is taken for the journal.
    fn stderr_of_a_panicking_worker(level: &str, backtrace: &str, journal: bool) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stderr");
        let file = std::fs::File::create(&path).unwrap();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap());
        child
            .args([
                "--exact",
                "server::tests::a_panic_on_a_named_thread_is_an_error_in_the_log",
            ])
            .arg("--nocapture")
            .env(PANICKING_CHILD, level)
            .env("RUST_BACKTRACE", backtrace)
            .env_remove("RUST_LIB_BACKTRACE")
            .env_remove("JOURNAL_STREAM");
        #[cfg(unix)]
        if journal {
            use std::os::unix::fs::MetadataExt;
            let meta = file.metadata().unwrap();
            child.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
        }
        #[cfg(not(unix))]
        assert!(!journal);
        let status = child
            .stdout(std::process::Stdio::null())
            .stderr(file)
            .status()
            .unwrap();
        let stderr = std::fs::read_to_string(&path).unwrap();
        assert!(status.success(), "{status}: {stderr}");
        stderr
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
