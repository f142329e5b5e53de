//! Which answers close their connection, so that no connection waits
//! unanswered in tiny_http's queue for long (see [`KeepAlive`]), and which
//! must say that they keep it (see [`persists_as_http_1_0`]).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::http::Request;

/// How long a keep-alive connection is kept at most (why: `KeepAlive`).
/// Each connection's lifetime lies between a tenth of this and this, spread
/// by its peer address. Spread, because the connections of a burst would
/// otherwise all close, and reconnect in a new burst, at once.
///
/// The lifetime bounds how long a connection waits when a burst is larger
/// than the spare connection threads, and every reconnect leaves a socket
/// in TIME_WAIT on the client for 60 s, which Linux reuses on loopback but
/// not for a remote client (`--allow-remote`): about 28,000 ports allow
/// some 470 reconnects a second. Measured with the load bench and 64 spare
/// threads, at 64 busy connections: 10–100 ms gave ~1,600 reconnects per
/// 10,000 requests (about 1,300 a second), 100 ms–1 s ~200, with the same
/// worst first answer (23–25 ms) and throughput. Before the spares, 10–100
/// ms was needed to keep that worst first answer near 30–85 ms (25–250 ms:
/// 65–107 ms; one fixed 250 ms: 537 ms). We take 50–500 ms: a burst beyond
/// the spares waits half a second at most, and 64 busy clients reconnect
/// about 230 times a second.
pub const KEEP_ALIVE_LIFETIME: Duration = Duration::from_millis(500);

/// Decides which answers say `Connection: close`, so that no connection
/// waits unanswered in tiny_http's queue for long.
///
/// tiny_http 0.12 gives each connection one thread from a pool for the
/// connection's whole life, and hands a new connection to a queue instead of
/// a new thread while it counts a pool thread as idle. Threads count as idle
/// until they wake, so in a burst of connections several queue behind the
/// same few idle threads, which then each keep a keep-alive connection. A
/// queued connection waits until one of those closes. Spare threads
/// (`SpareThreads`) make this rare, but a burst can be larger than the
/// spares, and there are none after a quiet spell until the first request
/// has woken their refresh. tiny_http decides on its own whether to keep a
/// connection and has no timeouts, so an answer that tells the client to
/// close is the one lever its API gives: the client closes, and the freed
/// thread takes the oldest queued connection. Two rules, each with a test
/// in `tests/it/transport.rs` that fails without it (with the spares off):
/// - **Busy connections are closed once old** (their first answer after
///   their lifetime, [`KEEP_ALIVE_LIFETIME`]). Without it, a busy client
///   never closes: 2–45 of 64 busy connections went unanswered for 5 s.
/// - **A new connection's first answer closes it when the server falls idle
///   with it** (no other request in flight, and other connections open).
///   This is the browser's case: a page sends a few requests at once on new
///   connections, then keeps them open and idle, so no lifetime ever ends;
///   up to 60 of a burst of 64 went unanswered for 3 s. When the server
///   falls idle, the last answer frees a thread for whatever queued, and the
///   connection that thread takes closes the same way. Only first answers,
///   because with 8 busy clients the server falls idle between two
///   requests for two answers in three, and closing any connection then
///   drove the 401 path from ~37,000 to ~20,000 answers/s; and only with
///   other connections open, so that a lone client keeps its connection.
///   "Open" means not closed by us and answered within
///   [`RECENTLY_ANSWERED`]: a client's own close is invisible here, so its
///   connection counts until then. Sequential `curl` calls each get
///   `Connection: close`, which costs them nothing.
pub(super) struct KeepAlive {
    lifetimes: RangeInclusive<Duration>,
    /// The open keep-alive connections, by peer address: the one thing
    /// tiny_http tells us about a request's connection.
    connections: Mutex<HashMap<SocketAddr, Connection>>,
    /// Requests received from tiny_http and not yet answered.
    in_flight: AtomicUsize,
}

/// What is known of an open keep-alive connection.
struct Connection {
    /// When its lifetime ends: its next answer closes it.
    done_at: Instant,
    last_answer: Instant,
}

/// How recently another connection must have been answered to count as
/// open for the idle rule. A client's own close is invisible here, so
/// without a bound a client that left would count forever, and a lone
/// client that came after it would be told to close on the first answer of
/// every new connection: all its requests on new connections. Measured
/// before the bound, a lone keep-alive client that started after another
/// had left reconnected for 9,435 of its 10,000 requests. The bound must
/// outlast the chain that the idle rule runs through a burst (each link
/// one answer, ~1 ms apart), and it is how long a lone client that starts
/// right after another left still reconnects for every request.
pub const RECENTLY_ANSWERED: Duration = Duration::from_secs(1);

/// Above this many tracked connections, the ones past their lifetime are
/// forgotten: their clients closed them, or their next answer closes them
/// a lifetime later than it would have. Keeps the map small without a
/// signal for closed connections, which tiny_http does not give.
const MAX_TRACKED_CONNECTIONS: usize = 1024;

impl KeepAlive {
    pub(super) fn new(lifetimes: RangeInclusive<Duration>) -> KeepAlive {
        KeepAlive {
            lifetimes,
            connections: Mutex::new(HashMap::new()),
            in_flight: AtomicUsize::new(0),
        }
    }

    /// Called for every request taken from tiny_http.
    pub(super) fn request_received(&self) {
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
    /// written: the value of the `Connection` header that the answer to
    /// `request`, which came from `peer` at `now`, must carry, if any.
    pub(super) fn connection_header(
        &self,
        peer: Option<SocketAddr>,
        request: &Request,
        now: Instant,
    ) -> Option<&'static str> {
        // answer_closes first, always: it counts every answer.
        if self.answer_closes(peer, request, now) || closes_as_http_1_1(request) {
            Some("close")
        } else if persists_as_http_1_0(request) {
            Some("keep-alive")
        } else {
            None
        }
    }

    /// Whether the answer to `request`, which came from `peer` at `now`,
    /// closes its connection (see [`KeepAlive`]).
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
        let mut connections = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        if !keeps_connection(request) || persists_as_http_1_0(request) {
            // tiny_http closes the first after this answer anyway; the
            // second cannot be closed (see `persists_as_http_1_0`).
            connections.remove(&peer);
            return false;
        }
        if connections.len() >= MAX_TRACKED_CONNECTIONS {
            connections.retain(|_, c| now < c.done_at);
        }
        let first_answer = !connections.contains_key(&peer);
        if first_answer
            && server_falls_idle
            && connections
                .values()
                .any(|c| now.saturating_duration_since(c.last_answer) < RECENTLY_ANSWERED)
        {
            return true;
        }
        let connection = connections.entry(peer).or_insert_with(|| Connection {
            done_at: now + self.lifetime_of(peer),
            last_answer: now,
        });
        connection.last_answer = now;
        let done = now >= connection.done_at;
        if done {
            connections.remove(&peer);
        }
        done
    }
}

/// Whether `request` is an HTTP/1.0 one after which tiny_http keeps the
/// connection open (it asked for `keep-alive`). Its answer must then say
/// `Connection: keep-alive`: an HTTP/1.0 client takes an answer that does
/// not for the connection's last, and may wait for the server to close it
/// (ApacheBench's `ab -k` does, and gives up its whole run after 30 s),
/// while tiny_http waits for the client's next request. For the same
/// reason such a connection is never told to close: tiny_http would not
/// close it, and the client would not either.
fn persists_as_http_1_0(request: &Request) -> bool {
    request.http_version == (1, 0) && keeps_connection(request)
}

/// Whether `request` is an HTTP/1.1 one after which tiny_http closes the
/// connection (it said `close`, or asked for an upgrade we do not make).
/// Its answer must then say `Connection: close` (RFC 9112 §9.6): an
/// HTTP/1.1 client takes an answer that does not for a kept connection,
/// and the next request it sends on it is lost (Python's `http.client`
/// fails it with `RemoteDisconnected`). HTTP/1.0 needs no such word: close
/// is its default.
fn closes_as_http_1_1(request: &Request) -> bool {
    request.http_version >= (1, 1) && !keeps_connection(request)
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
            policy.connections.lock().unwrap().len(),
            MAX_TRACKED_CONNECTIONS + 1
        );
        answer(&policy, young - 1, &keep_alive, t0 + LIFETIME);
        let tracked = policy.connections.lock().unwrap();
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
    fn a_connection_not_answered_recently_does_not_count_as_open_for_the_idle_rule() {
        // Lifetimes that outlast the test, so that only the idle rule acts.
        let long = RECENTLY_ANSWERED * 10;
        let policy = KeepAlive::new(long..=long);
        let keep_alive = Request::new("GET", "/", &[]);
        let t0 = Instant::now();
        // Client 1 is answered, then leaves without a word (as it may).
        assert!(!answer(&policy, 1, &keep_alive, t0));
        // Just after, a new connection still counts it as open...
        assert!(answer(&policy, 2, &keep_alive, t0 + RECENTLY_ANSWERED / 2));
        // ...and later no longer: client 3 keeps its connection, on every
        // answer.
        let later = t0 + RECENTLY_ANSWERED;
        assert!(!answer(&policy, 3, &keep_alive, later));
        assert!(!answer(
            &policy,
            3,
            &keep_alive,
            later + RECENTLY_ANSWERED / 2
        ));
        // An answer keeps a connection counting as open, however old it is.
        let much_later = later + RECENTLY_ANSWERED * 3 / 2;
        assert!(!answer(&policy, 3, &keep_alive, much_later));
        assert!(answer(&policy, 4, &keep_alive, much_later));
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
    fn an_http_1_0_connection_kept_open_is_never_told_to_close() {
        let policy = busy_policy();
        let mut kept = Request::new("GET", "/", &[("Connection", "keep-alive")]);
        kept.http_version = (1, 0);
        assert!(persists_as_http_1_0(&kept));
        let t0 = Instant::now();
        for ms in [0, 99, 100, 250] {
            assert!(!answer(&policy, 1, &kept, t0 + Duration::from_millis(ms)));
            policy.request_received();
            let said =
                policy.connection_header(Some(peer(1)), &kept, t0 + Duration::from_millis(ms));
            assert_eq!(said, Some("keep-alive"));
        }
        // An HTTP/1.1 connection past its lifetime is told to close, and
        // one within it is told nothing.
        let keep_alive = Request::new("GET", "/", &[]);
        for (ms, said) in [(0, None), (100, Some("close"))] {
            policy.request_received();
            let at = t0 + Duration::from_millis(ms);
            assert_eq!(
                policy.connection_header(Some(peer(9)), &keep_alive, at),
                said
            );
        }
        // Nor does it count as open for the idle rule.
        let idle = KeepAlive::new(LIFETIME..=LIFETIME);
        assert!(!answer(&idle, 2, &kept, t0));
        assert!(!answer(&idle, 3, &Request::new("GET", "/", &[]), t0));
        let mut closing = kept.clone();
        closing.headers.clear();
        assert!(!persists_as_http_1_0(&closing));
    }

    /// An HTTP/1.1 request that asks to close, or for an upgrade, is told
    /// its connection closes; HTTP/1.0 without keep-alive closes by
    /// default and is told nothing.
    #[test]
    fn a_request_after_which_tiny_http_closes_is_told_so_in_http_1_1() {
        let policy = busy_policy();
        let t0 = Instant::now();
        let keep_alive = Request::new("GET", "/", &[]);
        let mut upgrading = keep_alive.clone();
        upgrading.headers = vec![(
            "connection".to_owned(),
            "Upgrade, HTTP2-Settings".to_owned(),
        )];
        let mut closing_1_0 = keep_alive.clone();
        closing_1_0.http_version = (1, 0);
        for (request, said) in [
            (
                Request::new("GET", "/", &[("Connection", "close")]),
                Some("close"),
            ),
            (upgrading, Some("close")),
            (closing_1_0, None),
        ] {
            policy.request_received();
            assert_eq!(policy.connection_header(Some(peer(10)), &request, t0), said);
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
}
