//! Browser-facing protections, applied before routing.
//!
//! A server on `127.0.0.1` is attacked mostly through the user's own
//! browser: any web page can make it send requests to loopback.
//! - **DNS rebinding** makes `evil.example` resolve to 127.0.0.1. The
//!   browser then talks to us but sends `Host: evil.example`, so when bound
//!   to loopback only the loopback names and names added by the operator are
//!   served. Matching is exact and never by suffix. The port is not checked
//!   (as in Jupyter and Vite): a rebinding attacker is told apart by the
//!   name, and a dev server's proxy passes on `Host: localhost:<its port>`.
//! - **CSRF**: cookies on `localhost` are shared across ports (RFC 6265 §8.5),
//!   so a page on any localhost port carries our session cookie. A
//!   state-changing request that the browser marks `same-site` or
//!   `cross-site` (`Sec-Fetch-Site`) is refused unless its `Origin` is
//!   allowed; without that header, unless its `Origin` is ours, allowed,
//!   or that of the `Host` it was sent to (as Go's `CrossOriginProtection`).
//! - **CORS** lets a front end on another port (an allowed origin) call us
//!   directly with credentialed DELETEs: preflights are answered without a cookie, and
//!   real responses echo the origin. Never `*`: credentials are involved.

use std::net::SocketAddr;

use crate::http::{ApiError, Lone, Request, Response};
use crate::logging::printable;

/// Names always accepted in `Host` when bound to loopback.
const LOOPBACK_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

/// Request headers a preflight may ask for: the ones front ends send
/// without being asked to. The server reads none of them, so accepting them
/// only spares a front end a blocked call.
const ORDINARY_REQUEST_HEADERS: [&str; 15] = [
    "accept",
    "accept-language",
    "content-language",
    "content-type",
    "cache-control",
    "pragma",
    "x-requested-with",
    // An API client that signs every call, and axios's CSRF header.
    "authorization",
    "x-csrf-token",
    "x-xsrf-token",
    // Tracing: W3C Trace Context and Baggage (OpenTelemetry), and Sentry,
    // whose browser SDK adds its headers to calls to localhost by default.
    "traceparent",
    "tracestate",
    "baggage",
    "sentry-trace",
    "x-request-id",
];

/// The largest request body accepted (and ignored), in bytes.
const MAX_BODY: u32 = 1024;

/// The longest request-target accepted, in bytes: the default limit of
/// Apache's and nginx's request line.
const MAX_TARGET: usize = 8192;
/// The most header fields accepted: hyper's and Apache's default.
const MAX_HEADER_FIELDS: usize = 100;
/// The largest header section accepted, in bytes. Four times Node's default
/// (16 KiB), which front-end dev servers already impose on a browser's
/// requests, the cookies of every other app on `localhost` included.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// How long a browser may cache a preflight answer, in seconds.
const PREFLIGHT_MAX_AGE: &str = "600";

/// Who may talk to the server, decided once at start-up.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Lower-case host names accepted in `Host`, or `None` to accept any
    /// (bound to a non-loopback address with no names given).
    hosts: Option<Vec<String>>,
    /// Our own origins: same-origin requests need no CORS.
    own_origins: Vec<String>,
    /// Cross-origin front ends allowed to send credentialed requests.
    allowed_origins: Vec<String>,
}

impl Policy {
    /// Builds the policy for a server bound to `addr`. `extra_hosts` are
    /// added to the Host allowlist; `allowed_origins` must be exact origins
    /// like `http://localhost:3000` (no path, no `*`). Empty items are
    /// skipped: an empty `NEPTUN_ALLOW_ORIGINS=` in a unit or `.env` file,
    /// or a trailing comma, means none more.
    pub fn new(
        addr: SocketAddr,
        extra_hosts: &[String],
        allowed_origins: &[String],
    ) -> Result<Policy, String> {
        let given = |items: &[String]| -> Vec<String> {
            items
                .iter()
                .filter(|item| !item.trim().is_empty())
                .cloned()
                .collect()
        };
        let (extra_hosts, allowed_origins) = (given(extra_hosts), given(allowed_origins));
        let mut hosts: Vec<String> = Vec::new();
        for host in &extra_hosts {
            let host = host.trim().to_ascii_lowercase();
            if host.contains('*') {
                return Err(format!(
                    "--allowed-host {host:?}: there are no wildcards; name each host"
                ));
            }
            if !is_host_name(&host) {
                return Err(format!(
                    "--allowed-host {host:?}: give a bare host name, like myhost.local"
                ));
            }
            hosts.push(host);
        }
        let hosts = if addr.ip().is_loopback() {
            hosts.extend(LOOPBACK_NAMES.map(String::from));
            Some(hosts)
        } else if hosts.is_empty() {
            None
        } else {
            hosts.push(host_literal(addr));
            Some(hosts)
        };
        let port = addr.port();
        let own_origins = hosts
            .iter()
            .flatten()
            .map(|h| serialize_origin("http", h, Some(port)))
            .chain([serialize_origin("http", &host_literal(addr), Some(port))])
            .collect();
        let allowed_origins = allowed_origins
            .iter()
            .map(|o| normalize_origin(o))
            .collect::<Result<_, _>>()?;
        Ok(Policy {
            hosts,
            own_origins,
            allowed_origins,
        })
    }

    /// Refuses a request whose target (414) or header section (431) is
    /// larger than any client of this API sends. tiny_http has read and
    /// stored the whole head by then, so this bounds no memory; it answers
    /// the status a client can act on, instead of acting on the request.
    pub fn check_head_size(&self, request: &Request) -> Result<(), ApiError> {
        if request.target.len() > MAX_TARGET {
            return Err(ApiError::UriTooLong);
        }
        // As sent: "name: value" and CRLF.
        let header_bytes: usize = request
            .headers
            .iter()
            .map(|(name, value)| name.len() + value.len() + 4)
            .sum();
        if request.headers.len() > MAX_HEADER_FIELDS || header_bytes > MAX_HEADER_BYTES {
            return Err(ApiError::HeaderFieldsTooLarge);
        }
        Ok(())
    }

    /// Refuses a request line that names HTTP/0.9. tiny_http takes it for
    /// a version like any other, and would answer with the status line
    /// `HTTP/0.9 200`, which no version has. No client sends it: an HTTP/0.9
    /// request is a bare `GET /path` line, which tiny_http refuses itself.
    pub fn check_version(&self, request: &Request) -> Result<(), ApiError> {
        if request.http_version < (1, 0) {
            return Err(ApiError::VersionNotSupported);
        }
        Ok(())
    }

    /// Refuses a request whose body framing is ambiguous (RFC 9112 §6.3):
    /// several or non-numeric `Content-Length`s, `Content-Length` together
    /// with `Transfer-Encoding`, or a transfer coding other than chunked.
    /// tiny_http has already picked one reading by then, so this cannot stop
    /// it from parsing the bytes that follow; it does keep us from acting on
    /// a request that two parsers would read differently.
    pub fn check_framing(&self, request: &Request) -> Result<(), ApiError> {
        let lengths: Vec<&str> = request.header_values("Content-Length").collect();
        let codings: Vec<&str> = request.header_values("Transfer-Encoding").collect();
        let numeric = |v: &&str| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit());
        if lengths.len() > 1 || !lengths.iter().all(numeric) {
            return Err(ApiError::AmbiguousFraming);
        }
        if !codings.is_empty() {
            let only_chunked =
                codings.len() == 1 && codings[0].trim().eq_ignore_ascii_case("chunked");
            if !lengths.is_empty() || !only_chunked {
                return Err(ApiError::AmbiguousFraming);
            }
            // A chunked body's size is unknown until it is read, and this
            // API reads no body.
            return Err(ApiError::LengthRequired);
        }
        // The API takes no body; tiny_http has already read one of up to
        // 1024 bytes, and anything larger is refused unread.
        if lengths
            .first()
            .is_some_and(|l| l.len() > 4 || l.parse::<u32>().is_ok_and(|n| n > MAX_BODY))
        {
            return Err(ApiError::PayloadTooLarge);
        }
        Ok(())
    }

    /// Refuses a request whose `Host` is missing (on HTTP/1.1) or repeated,
    /// or whose host is not on the allowlist. The host is that of an
    /// absolute-form target if there is one: RFC 9112 §3.2.2 has the server
    /// ignore `Host` then, though it must still be sent once (§3.2).
    pub fn check_host(&self, request: &Request) -> Result<(), ApiError> {
        let header = match request.lone_header("Host") {
            Lone::Repeated => return Err(ApiError::BadRequest("Duplicate Host header")),
            Lone::Missing if request.http_version >= (1, 1) => {
                return Err(ApiError::BadRequest("Missing Host header"));
            }
            Lone::Missing => None,
            Lone::One(host) => Some(host),
        };
        let Some(host) = request.split_target()?.0.or(header) else {
            return Ok(()); // HTTP/1.0 without Host: not a browser
        };
        if self.host_allowed(host) {
            Ok(())
        } else {
            Err(ApiError::HostNotAllowed)
        }
    }

    /// Returns true if and only if `value` (a `Host` header) names an allowed
    /// host, with no port or with any port. Any: a front end's dev server
    /// that proxies to us passes on the browser's `Host: localhost:5173`,
    /// and DNS rebinding is told apart by the name, never by the port.
    pub fn host_allowed(&self, value: &str) -> bool {
        let Some(hosts) = &self.hosts else {
            return true;
        };
        let (name, port) = split_host_port(value.trim());
        let port_ok = port.is_none_or(|p| parse_port(p).is_some());
        port_ok && !name.is_empty() && hosts.iter().any(|h| h.eq_ignore_ascii_case(name))
    }

    /// Returns true if and only if `origin` may make credentialed
    /// cross-origin requests (exact match with an `--allow-origin`).
    pub fn origin_allowed(&self, origin: &str) -> bool {
        self.allowed_origins
            .iter()
            .any(|o| o.eq_ignore_ascii_case(origin))
    }

    fn is_own_origin(&self, origin: &str) -> bool {
        self.own_origins
            .iter()
            .any(|o| o.eq_ignore_ascii_case(origin))
    }

    /// Returns true if `origin` is the origin of the allowed `Host` the
    /// request was sent to, as when a front end's dev server proxies its
    /// page's calls to us and passes on their `Host`. A browser takes `Host`
    /// from the URL it requests, so a page can send this pair only to a
    /// server at its own origin: us, or a proxy there that forwards to us.
    /// Go, Django and Rails check Origin against Host the same way. Without
    /// a Host allowlist, Host proves nothing. An absolute-form target's host
    /// stands in for `Host`, as in `check_host`.
    fn is_host_origin(&self, origin: &str, request: &Request) -> bool {
        let host = match (request.split_target(), request.lone_header("Host")) {
            (Ok((Some(authority), _)), _) => authority,
            (Ok((None, _)), Lone::One(host)) => host.trim(),
            _ => return false,
        };
        if self.hosts.is_none() || !self.host_allowed(host) {
            return false;
        }
        origin.split_once("://").is_some_and(|(scheme, rest)| {
            (scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https"))
                && rest.eq_ignore_ascii_case(host)
        })
    }

    /// The CSRF check: refuses a state-changing request that a page on a
    /// foreign origin made the browser send. Safe methods pass (they change
    /// nothing, and CORS keeps their answers from foreign pages).
    ///
    /// The design is Go's `net/http` `CrossOriginProtection`. A browser's
    /// `Sec-Fetch-Site` (which no page can set) decides first: `same-origin`
    /// means the page called its own origin, which is us or a proxy there
    /// that the user set up to reach us (a front end's dev server), so it
    /// passes whatever the `Origin`. A `same-site` or `cross-site` request
    /// passes only from an allowed origin. Without `Sec-Fetch-Site` (an
    /// older browser, or not a browser) the `Origin` decides: none, ours,
    /// allowed, or that of the `Host` the request was sent to.
    pub fn check_origin(&self, request: &Request) -> Result<(), ApiError> {
        if matches!(request.method.as_str(), "GET" | "HEAD" | "OPTIONS") {
            return Ok(());
        }
        let origin = match request.lone_header("Origin") {
            Lone::Repeated => return Err(ApiError::Forbidden("Origin not allowed")),
            Lone::One(origin) => Some(origin),
            Lone::Missing => None,
        };
        let trusted = origin.is_some_and(|o| self.is_own_origin(o) || self.origin_allowed(o));
        // Browsers send one Sec-Fetch-Site; of several, none is believed.
        let site = request.lone_header("Sec-Fetch-Site");
        let site_is =
            |value: &str| matches!(site, Lone::One(s) if s.trim().eq_ignore_ascii_case(value));
        if site == Lone::Missing {
            // An older browser, or not a browser: the Origin decides.
            return match origin {
                None => Ok(()),
                Some(o) if trusted || self.is_host_origin(o, request) => Ok(()),
                Some(_) => Err(ApiError::Forbidden("Origin not allowed")),
            };
        }
        if site_is("same-origin") || site_is("none") || trusted {
            Ok(())
        } else if site_is("cross-site") && origin.is_none() {
            Err(ApiError::Forbidden("Cross-site request not allowed"))
        } else {
            Err(ApiError::Forbidden("Origin not allowed"))
        }
    }

    /// Answers a CORS preflight (`OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`); `None` if the request is not one.
    pub fn preflight(&self, request: &Request, allow_methods: &str) -> Option<Response> {
        let origin = request.header_values("Origin").next()?;
        let method = request
            .header_values("Access-Control-Request-Method")
            .next()?;
        let requested_headers: Vec<String> = request
            .header_values("Access-Control-Request-Headers")
            .flat_map(|v| v.split(','))
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        let unusual: Vec<&str> = requested_headers
            .iter()
            .map(String::as_str)
            .filter(|h| !ORDINARY_REQUEST_HEADERS.contains(h))
            .collect();
        // No CORS headers at all: the browser blocks the real request.
        let refused = || Some(ApiError::Forbidden("CORS preflight not allowed").into_response());
        if !self.origin_allowed(origin) {
            if is_loopback_origin(origin) {
                // Most likely a front end in development on another port,
                // and the first thing its developer meets: say what lets it in.
                log::warn!(
                    "refused a CORS preflight from {origin}, an origin not allowed; if that is \
                     your front end, start the server with --allow-origin {origin}, or call it \
                     through the front end's dev server proxy (README: \"From a front end in \
                     development\")",
                    origin = printable(origin)
                );
            }
            return refused();
        }
        let not_accepted = if method.trim() != "DELETE" {
            Some(format!("method {}", method.trim()))
        } else if !unusual.is_empty() {
            Some(format!("request headers {}", unusual.join(", ")))
        } else {
            None
        };
        if let Some(what) = not_accepted {
            // A front end the operator allowed, whose call the browser will
            // now block with a CORS error: say why, where its developer looks.
            log::warn!(
                "refused a CORS preflight from {}: this server accepts no {}",
                printable(origin),
                printable(&what)
            );
            return refused();
        }
        let mut response = Response::empty(204)
            .with_header("Access-Control-Allow-Origin", origin)
            .with_header("Access-Control-Allow-Credentials", "true")
            .with_header("Access-Control-Allow-Methods", allow_methods)
            .with_header("Access-Control-Max-Age", PREFLIGHT_MAX_AGE)
            .with_header("Vary", "Origin");
        if !requested_headers.is_empty() {
            response = response.with_header(
                "Access-Control-Allow-Headers",
                &requested_headers.join(", "),
            );
        }
        let private_network = request
            .header_values("Access-Control-Request-Private-Network")
            .any(|v| v.trim().eq_ignore_ascii_case("true"));
        if private_network {
            response = response.with_header("Access-Control-Allow-Private-Network", "true");
        }
        Some(response)
    }

    /// Adds the CORS headers a real response needs: the echoed origin and
    /// credentials for an allowed front end, and `Vary: Origin` always, so
    /// a cache never serves one origin's answer to another.
    pub fn decorate(&self, request: &Request, mut response: Response) -> Response {
        // A preflight's answer carries exactly what `preflight` decided.
        let preflight = request.method == "OPTIONS";
        let origin = request.header_values("Origin").next();
        if let Some(origin) = origin.filter(|o| !preflight && self.origin_allowed(o)) {
            response = response
                .with_header("Access-Control-Allow-Origin", origin)
                .with_header("Access-Control-Allow-Credentials", "true");
        }
        if response.header("Vary").is_none() {
            response = response.with_header("Vary", "Origin");
        }
        response
    }
}

/// The address as it appears in a `Host` header (IPv6 in brackets).
fn host_literal(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    }
}

/// Whether `origin` is a page on this machine's loopback names, such as a
/// front end's dev server (`http://localhost:3000`).
fn is_loopback_origin(origin: &str) -> bool {
    let Some((scheme, rest)) = origin.trim().split_once("://") else {
        return false;
    };
    let (host, port) = split_host_port(rest);
    (scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https"))
        && port.is_none_or(|p| parse_port(p).is_some())
        && LOOPBACK_NAMES
            .iter()
            .any(|name| name.eq_ignore_ascii_case(host))
}

/// Splits `host[:port]`, keeping IPv6 brackets with the host.
fn split_host_port(value: &str) -> (&str, Option<&str>) {
    if value.starts_with('[') {
        match value.find(']') {
            Some(end) => {
                let (host, rest) = value.split_at(end + 1);
                match rest.strip_prefix(':') {
                    Some(port) => (host, Some(port)),
                    None if rest.is_empty() => (host, None),
                    None => ("", None),
                }
            }
            None => ("", None),
        }
    } else {
        match value.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (value, None),
        }
    }
}

/// Checks and normalizes an `--allow-origin` value to `scheme://host[:port]`.
fn normalize_origin(text: &str) -> Result<String, String> {
    let origin = text.trim().trim_end_matches('/').to_ascii_lowercase();
    let bad = |why: &str| Err(format!("--allow-origin {text:?}: {why}"));
    if origin == "*" || origin == "null" {
        return bad("must be one exact origin; \"*\" and \"null\" cannot be used with cookies");
    }
    let Some((scheme, rest)) = origin.split_once("://") else {
        return bad("expected an origin like http://localhost:3000");
    };
    if scheme != "http" && scheme != "https" {
        return bad("the scheme must be http or https");
    }
    // Before the port: in `http://localhost:3000/app` the port would
    // otherwise be read as `3000/app`, and refused as not a number.
    if rest.contains(['/', '?', '#', '@', ' ']) {
        return bad("an origin is scheme://host[:port], with no path, query or user after it");
    }
    let (host, port) = split_host_port(rest);
    let port = match port.map(parse_port) {
        None => None,
        Some(Some(port)) => Some(port),
        Some(None) => return bad("the port must be a number from 0 to 65535"),
    };
    if host.is_empty() {
        return bad("expected an origin like http://localhost:3000");
    }
    Ok(serialize_origin(scheme, host, port))
}

/// Whether `host` is a name as `Host` carries it, without a port: letters,
/// digits, `-`, `.` and `_`, or an IPv6 address in brackets. Anything else
/// could never match a `Host` header, and would be a silent mistake.
fn is_host_name(host: &str) -> bool {
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(ipv6) => ipv6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        }
    }
}

/// A port as written in `Host` or an origin: digits only (`parse` alone
/// would also take a sign), at most 65535.
fn parse_port(text: &str) -> Option<u16> {
    text.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| text.parse().ok())
        .flatten()
}

/// An origin as a browser sends it: the port written as a number, and
/// left out when it is the scheme's default.
fn serialize_origin(scheme: &str, host: &str, port: Option<u16>) -> String {
    let default = if scheme == "https" { 443 } else { 80 };
    match port {
        Some(port) if port != default => format!("{scheme}://{host}:{port}"),
        _ => format!("{scheme}://{host}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback() -> Policy {
        Policy::new(
            "127.0.0.1:7150".parse().unwrap(),
            &["myhost.local".into()],
            &["http://localhost:3000".into()],
        )
        .unwrap()
    }

    #[test]
    fn only_exact_allowed_hosts_with_any_port_pass() {
        let p = loopback();
        for ok in [
            "localhost",
            "LOCALHOST:7150",
            "localhost:5173",
            "127.0.0.1",
            "127.0.0.1:7150",
            "127.0.0.1:3000",
            "[::1]",
            "[::1]:7150",
            "[::1]:8080",
            "myhost.local:7150",
            "myhost.local",
        ] {
            assert!(p.host_allowed(ok), "{ok}");
        }
        for bad in [
            "",
            ":7150",
            "evil.example",
            "localhost.evil.example",
            "evil-localhost",
            "evil.example:7150",
            "localhost:",
            "localhost:+7150",
            "localhost:65536",
            "localhost:7150:7150",
            "localhost:x",
            "127.0.0.2",
            "[::1",
            "[::2]",
            "[::1]x",
            "sub.myhost.local",
            "myhost.local.",
            "0.0.0.0",
        ] {
            assert!(!p.host_allowed(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_non_loopback_bind_without_names_accepts_any_host() {
        let p = Policy::new("0.0.0.0:80".parse().unwrap(), &[], &[]).unwrap();
        assert!(p.host_allowed("anything.example"));
        let p = Policy::new(
            "192.0.2.1:80".parse().unwrap(),
            &["api.example".into()],
            &[],
        )
        .unwrap();
        assert!(p.host_allowed("api.example") && p.host_allowed("192.0.2.1:80"));
        assert!(!p.host_allowed("evil.example"));
    }

    #[test]
    fn allowed_hosts_must_be_bare_names() {
        let addr = "127.0.0.1:1".parse().unwrap();
        let refusal = |host: &str| Policy::new(addr, &[host.into()], &[]).err();
        for good in [
            "myhost.local",
            "MyHost.Local",
            "my-host_1",
            "192.0.2.1",
            "[::1]",
            "[fe80::1]",
        ] {
            assert_eq!(refusal(good), None, "{good}");
        }
        // (An empty item is skipped, not refused: see empty_items_mean_none_more.)
        for bad in [
            "myhost.local:7150",
            "http://myhost.local",
            "my host",
            "[::1",
            "[nope]",
            "a/b",
            "é.local",
        ] {
            let why = refusal(bad).unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert!(why.contains("give a bare host name"), "{bad:?}: {why}");
        }
        for wildcard in ["*", "*.local"] {
            let why = refusal(wildcard).unwrap();
            assert!(why.contains("there are no wildcards"), "{why}");
        }
    }

    #[test]
    fn empty_items_mean_none_more() {
        let addr = "127.0.0.1:7150".parse().unwrap();
        let empty = || vec![String::new(), " ".to_owned()];
        let policy = Policy::new(addr, &empty(), &empty()).unwrap();
        assert!(!policy.host_allowed(""));
        let origins = ["http://localhost:3000".to_owned(), String::new()];
        let policy =
            Policy::new(addr, &["myhost.local".to_owned(), String::new()], &origins).unwrap();
        assert!(policy.host_allowed("myhost.local:7150"));
        assert!(policy.origin_allowed("http://localhost:3000"));
        assert!(!policy.origin_allowed(""));
    }

    #[test]
    fn loopback_origins_are_those_of_the_loopback_names_on_any_port() {
        for origin in [
            "http://localhost:3000",
            "https://LOCALHOST",
            "http://127.0.0.1:5173",
            "http://[::1]:8080",
        ] {
            assert!(is_loopback_origin(origin), "{origin}");
        }
        for origin in [
            "http://localhost.evil.example",
            "http://evil.example:3000",
            "http://localhost:x",
            "file://localhost",
            "null",
            "localhost:3000",
        ] {
            assert!(!is_loopback_origin(origin), "{origin}");
        }
    }

    #[test]
    fn allowed_origins_must_be_exact() {
        let addr = "127.0.0.1:1".parse().unwrap();
        assert!(Policy::new(addr, &[], &["*".into()]).is_err());
        assert!(Policy::new(addr, &[], &["null".into()]).is_err());
        assert!(Policy::new(addr, &[], &["localhost:3000".into()]).is_err());
        assert!(Policy::new(addr, &[], &["ftp://localhost".into()]).is_err());
        for with_path in ["http://localhost:3000/app", "http://localhost:3000/?x"] {
            let why = Policy::new(addr, &[], &[with_path.into()]).err().unwrap();
            assert!(why.contains("with no path, query or user"), "{why}");
        }
        assert!(Policy::new(addr, &[], &["http://:3000".into()]).is_err());
        assert!(Policy::new(addr, &[], &["http://localhost:99999".into()]).is_err());
        let p = Policy::new(addr, &[], &["HTTP://LocalHost:3000/".into()]).unwrap();
        assert!(p.origin_allowed("http://localhost:3000"));
        assert!(!p.origin_allowed("http://localhost:3001"));
        assert!(!p.origin_allowed("http://localhost:3000.evil.example"));
    }

    /// A browser writes an origin's port as a number and leaves out the
    /// scheme's default one, so the flag is normalized the same way, or it
    /// would never match.
    #[test]
    fn allowed_origins_are_written_as_browsers_write_origins() {
        let addr = "127.0.0.1:1".parse().unwrap();
        let allows = |flag: &str, origin: &str| {
            Policy::new(addr, &[], &[flag.into()])
                .unwrap()
                .origin_allowed(origin)
        };
        assert!(allows("http://localhost:80", "http://localhost"));
        assert!(allows("https://app.local:443/", "https://app.local"));
        assert!(allows("http://localhost:03000", "http://localhost:3000"));
        assert!(allows("http://[::1]:3000", "http://[::1]:3000"));
        assert!(!allows("http://localhost:443", "http://localhost"));
        for bad_port in [
            "http://localhost:+3000",
            "http://localhost:-1",
            "http://localhost:",
        ] {
            assert!(
                Policy::new(addr, &[], &[bad_port.into()]).is_err(),
                "{bad_port}"
            );
        }
        // So are our own origins, for a server on port 80.
        let on_80 = Policy::new("127.0.0.1:80".parse().unwrap(), &[], &[]).unwrap();
        let from = |origin: &str| {
            let headers = [("Host", "127.0.0.1"), ("Origin", origin)];
            on_80
                .check_origin(&Request::new("DELETE", "/", &headers))
                .is_ok()
        };
        assert!(from("http://localhost"));
        assert!(!from("http://localhost:8080"));
    }

    #[test]
    fn fetch_metadata_decides_first_and_the_origin_only_without_it() {
        let p = loopback();
        let check = |headers: &[(&str, &str)]| {
            p.check_origin(&Request::new("DELETE", "/", headers))
                .is_ok()
        };
        let passes = |site: Option<&str>, origin: Option<&str>| {
            let mut headers = vec![("Host", "localhost:7150")];
            headers.extend(site.map(|s| ("Sec-Fetch-Site", s)));
            headers.extend(origin.map(|o| ("Origin", o)));
            check(&headers)
        };
        let (ours, allowed) = (Some("http://localhost:7150"), Some("http://localhost:3000"));
        let (other_port, evil) = (Some("http://localhost:4000"), Some("http://evil.example"));
        for (site, origin, expected) in [
            // The page called its own origin: us, or a dev server's proxy.
            (Some("same-origin"), None, true),
            (Some("Same-Origin"), other_port, true),
            (Some("none"), None, true),
            // Another origin, even on the same site: only an allowed one.
            (Some("same-site"), allowed, true),
            (Some("cross-site"), allowed, true),
            (Some("same-site"), ours, true),
            (Some("same-site"), other_port, false),
            (Some("cross-site"), evil, false),
            (Some("cross-site"), None, false),
            (Some("same-site"), None, false),
            (Some("no-such-value"), None, false),
            // An older browser, or not a browser: the Origin decides.
            (None, None, true),
            (None, ours, true),
            (None, allowed, true),
            (None, other_port, false),
            (None, evil, false),
            (None, Some("null"), false),
        ] {
            assert_eq!(passes(site, origin), expected, "{site:?} {origin:?}");
        }
        assert!(!check(&[
            ("Sec-Fetch-Site", "same-origin"),
            ("Sec-Fetch-Site", "cross-site")
        ]));
        assert!(!check(&[
            ("Origin", "http://localhost:3000"),
            ("Origin", "http://evil.example")
        ]));
        // Safe methods change nothing and pass.
        let get = Request::new("GET", "/", &[("Origin", "http://evil.example")]);
        assert!(p.check_origin(&get).is_ok());
    }

    #[test]
    fn the_origin_of_an_allowed_host_passes_as_through_a_dev_servers_proxy() {
        let p = loopback();
        let delete = |host: &str, origin: &str| {
            p.check_origin(&Request::new(
                "DELETE",
                "/",
                &[("Host", host), ("Origin", origin)],
            ))
        };
        // With no Sec-Fetch-Site (an older browser), a proxy that passes
        // on its page's Host and Origin.
        assert!(delete("localhost:5173", "http://localhost:5173").is_ok());
        assert!(delete("LocalHost:5173", "HTTP://localhost:5173").is_ok());
        assert!(delete("localhost:5173", "https://localhost:5173").is_ok());
        assert!(delete("myhost.local:8080", "http://myhost.local:8080").is_ok());
        // A page elsewhere that calls the server (or the proxy) directly.
        assert!(delete("localhost:7150", "http://localhost:5173").is_err());
        assert!(delete("localhost:5173", "http://localhost:4000").is_err());
        assert!(delete("localhost:5173", "http://localhost").is_err());
        assert!(delete("localhost:5173", "ftp://localhost:5173").is_err());
        assert!(delete("localhost:5173", "localhost:5173").is_err());
        // A Host off the allowlist proves nothing, even when it matches.
        assert!(delete("evil.example", "http://evil.example").is_err());
        let twice = Request::new(
            "DELETE",
            "/",
            &[
                ("Host", "localhost:5173"),
                ("Host", "localhost:5173"),
                ("Origin", "http://localhost:5173"),
            ],
        );
        assert!(p.check_origin(&twice).is_err());
        // Nor does any Host when bound beyond loopback with no names given.
        let open = Policy::new("0.0.0.0:80".parse().unwrap(), &[], &[]).unwrap();
        let rebound = Request::new(
            "DELETE",
            "/",
            &[("Host", "evil.example"), ("Origin", "http://evil.example")],
        );
        assert!(open.check_origin(&rebound).is_err());
        // An absolute-form target's host stands in for Host.
        let absolute = |target: &str, host: &str, origin: &str| {
            p.check_origin(&Request::new(
                "DELETE",
                target,
                &[("Host", host), ("Origin", origin)],
            ))
        };
        let page = "http://localhost:5173";
        assert!(absolute("http://localhost:5173/x", "localhost:7150", page).is_ok());
        assert!(absolute("http://localhost:7150/x", "localhost:5173", page).is_err());
        assert!(absolute("http://evil.example/", "localhost", "http://evil.example").is_err());
        assert!(absolute("http://u@localhost:5173/", "localhost:5173", page).is_err());
    }

    #[test]
    fn heads_over_the_limits_get_414_or_431_and_those_at_them_pass() {
        let p = loopback();
        let status = |target: &str, headers: &[(String, String)]| {
            let request = Request {
                headers: headers.to_vec(),
                ..Request::new("DELETE", target, &[])
            };
            p.check_head_size(&request).map_err(|e| e.status())
        };
        let target = |len: usize| format!("/{}", "a".repeat(len - 1));
        assert_eq!(status(&target(MAX_TARGET), &[]), Ok(()));
        assert_eq!(status(&target(MAX_TARGET + 1), &[]), Err(414));

        let fields = |n: usize| -> Vec<(String, String)> {
            (0..n).map(|i| (format!("X-{i}"), "v".into())).collect()
        };
        assert_eq!(status("/", &fields(MAX_HEADER_FIELDS)), Ok(()));
        assert_eq!(status("/", &fields(MAX_HEADER_FIELDS + 1)), Err(431));

        // "Cookie: " plus CRLF is 10 bytes of the section.
        let cookie = |len: usize| vec![("Cookie".to_owned(), "c".repeat(len - 10))];
        assert_eq!(status("/", &cookie(MAX_HEADER_BYTES)), Ok(()));
        assert_eq!(status("/", &cookie(MAX_HEADER_BYTES + 1)), Err(431));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Strings near the allowlist: allowed names with random case, ports,
    /// prefixes and suffixes, plus arbitrary text.
    fn host_like() -> impl Strategy<Value = String> {
        let names = prop::sample::select(vec![
            "localhost",
            "127.0.0.1",
            "[::1]",
            "myhost.local",
            "evil.example",
            "",
        ]);
        (
            names,
            "[a-z.:\\[\\]]{0,3}",
            "[a-z.:\\[\\]]{0,3}",
            prop::option::of(0u32..70000),
            any::<bool>(),
        )
            .prop_map(|(name, pre, post, port, upper)| {
                let name = if upper {
                    name.to_uppercase()
                } else {
                    name.to_owned()
                };
                let port = port.map_or(String::new(), |p| format!(":{p}"));
                format!("{pre}{name}{post}{port}")
            })
            .boxed()
            .prop_union(any::<String>().boxed())
    }

    proptest! {
        #[test]
        fn a_host_passes_only_if_it_is_exactly_an_allowed_name_with_a_port_or_none(value in host_like()) {
            let p = Policy::new("127.0.0.1:7150".parse().unwrap(), &["myhost.local".into()], &[]).unwrap();
            if p.host_allowed(&value) {
                let lower = value.trim().to_ascii_lowercase();
                let name = match lower.rsplit_once(':') {
                    Some((name, port)) if !name.ends_with(':') && port.parse::<u16>().is_ok() => name,
                    _ => &lower,
                };
                prop_assert!(["localhost", "127.0.0.1", "[::1]", "myhost.local"].contains(&name), "{value:?}");
            }
        }

        #[test]
        fn a_request_marked_as_from_elsewhere_passes_only_from_an_allowed_origin(
            site in "same-origin|none|same-site|cross-site|\\PC{0,12}",
            origin in prop::option::of("https?://(localhost|evil\\.example)(:[0-9]{1,5})?|\\PC{0,20}"),
            host in "localhost(:[0-9]{1,5})?",
            host_of_origin in any::<bool>(),
        ) {
            // Half the time the Host agrees with the Origin, as through a proxy.
            let host = match origin.as_deref().and_then(|o| o.split_once("://")) {
                Some((_, authority)) if host_of_origin => authority.to_owned(),
                _ => host,
            };
            let allowed = ["http://localhost:3000"];
            let p = Policy::new("127.0.0.1:7150".parse().unwrap(), &[], &allowed.map(String::from)).unwrap();
            let mut headers = vec![("Host", host.as_str()), ("Sec-Fetch-Site", site.as_str())];
            headers.extend(origin.as_deref().map(|o| ("Origin", o)));
            if p.check_origin(&Request::new("DELETE", "/", &headers)).is_ok() {
                let own = ["http://localhost:7150", "http://127.0.0.1:7150", "http://[::1]:7150"];
                let marked_ours = ["same-origin", "none"].contains(&site.trim().to_ascii_lowercase().as_str());
                let trusted = origin.as_deref().is_some_and(|o| allowed.iter().chain(&own).any(|a| a.eq_ignore_ascii_case(o)));
                prop_assert!(marked_ours || trusted, "{site:?} {origin:?}");
            }
        }

        #[test]
        fn an_origin_passes_only_if_allowed_ours_or_the_hosts(origin in "(https?://)?[a-z0-9.:]{0,20}/?|\\PC{0,30}") {
            let allowed = ["http://localhost:3000", "http://127.0.0.1:5173"];
            let p = Policy::new("127.0.0.1:7150".parse().unwrap(), &[], &allowed.map(String::from)).unwrap();
            if p.origin_allowed(&origin) {
                prop_assert!(allowed.iter().any(|a| a.eq_ignore_ascii_case(&origin)), "{origin:?}");
            }
            let request = Request::new("DELETE", "/", &[("Origin", &origin), ("Host", "localhost")]);
            if p.check_origin(&request).is_ok() {
                let own = ["http://localhost:7150", "http://127.0.0.1:7150", "http://[::1]:7150"];
                let host = ["http://localhost", "https://localhost"];
                prop_assert!(allowed.iter().chain(&own).chain(&host).any(|a| a.eq_ignore_ascii_case(&origin)), "{origin:?}");
            }
        }
    }
}
