//! Our own plain request and response types, and the API's one error type.
//!
//! Handlers take a [`Request`] and return a [`Response`], so they can be
//! tested without sockets; only `server.rs` converts to and from tiny_http.

use serde_json::json;

/// An HTTP request as the handlers see it.
#[derive(Clone, Debug)]
pub struct Request {
    /// The method exactly as sent (methods are case-sensitive).
    pub method: String,
    /// The raw request-target: not decoded, query included.
    pub target: String,
    /// Every header line, in order, duplicates kept.
    pub headers: Vec<(String, String)>,
    /// (major, minor), e.g. (1, 1).
    pub http_version: (u8, u8),
}

/// How a header that may appear at most once appears in a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lone<'a> {
    Missing,
    One(&'a str),
    Repeated,
}

impl Request {
    /// Builds an HTTP/1.1 request (for tests).
    pub fn new(method: &str, target: &str, headers: &[(&str, &str)]) -> Request {
        Request {
            method: method.to_owned(),
            target: target.to_owned(),
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            http_version: (1, 1),
        }
    }

    /// The values of every header called `name` (case-insensitive), in order.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The value of a header that a well-formed request sends at most once
    /// (`Host`, `Origin`, `Sec-Fetch-Site`), or that it was sent more often.
    pub fn lone_header<'a>(&'a self, name: &'a str) -> Lone<'a> {
        let mut values = self.header_values(name);
        match (values.next(), values.next()) {
            (None, _) => Lone::Missing,
            (Some(value), None) => Lone::One(value),
            (Some(_), Some(_)) => Lone::Repeated,
        }
    }

    /// The request-target as (authority, path with query).
    ///
    /// The authority is that of an absolute-form target
    /// (`http://localhost:7150/api/...`), which a server MUST accept and
    /// which then names the host in place of `Host` (RFC 9112 §3.2.2).
    /// Clients send it to proxies, and some send it everywhere. Any other
    /// target is returned whole, with no authority, for the router to judge.
    /// Refused with 400: a scheme other than `http` or `https`, a missing
    /// host, and user information (`http://user@host/`, which RFC 9110
    /// §4.2.4 says to treat as an error).
    pub fn split_target(&self) -> Result<(Option<&str>, &str), ApiError> {
        let target = self.target.as_str();
        if target.starts_with('/') || target == "*" {
            return Ok((None, target));
        }
        let Some((scheme, rest)) = target.split_once("://") else {
            return Ok((None, target));
        };
        if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) {
            return Err(ApiError::BadRequest(
                "Request target must be a path or an http URL",
            ));
        }
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        if authority.is_empty() {
            return Err(ApiError::BadRequest("Request target URL has no host"));
        }
        if authority.contains('@') {
            return Err(ApiError::BadRequest(
                "Request target URL must not hold user information",
            ));
        }
        // `http://host` and `http://host?q` are for the path `/`.
        let path = if path.starts_with('/') { path } else { "/" };
        Ok((Some(authority), path))
    }

    /// The path part of the target, without the query: safe to log (it never
    /// holds a cookie).
    pub fn path(&self) -> &str {
        self.target
            .split_once('?')
            .map_or(&self.target, |(path, _)| path)
    }
}

/// An HTTP response as the handlers produce it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    /// Why an error was answered, for the request's log line: in a browser,
    /// a refused cross-origin answer hides its body from the page.
    pub reason: Option<&'static str>,
    /// What the log line adds to the reason, for the person who runs the
    /// server only: never sent (see [`ApiError::InvalidSession`]).
    pub log_detail: Option<&'static str>,
    /// Whether the connection must not carry another request after this
    /// answer, because where the request ended is in doubt (RFC 9112 §6.3).
    pub close_connection: bool,
}

impl Response {
    /// A JSON response with the headers every API answer carries.
    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        Response {
            status,
            headers: vec![
                ("Content-Type", "application/json".to_owned()),
                // A delete's answer, or an error about a session, must never
                // be served again from a cache.
                ("Cache-Control", "no-store".to_owned()),
                ("X-Content-Type-Options", "nosniff".to_owned()),
            ],
            body: value.to_string().into_bytes(),
            reason: None,
            log_detail: None,
            close_connection: false,
        }
    }

    /// A response without a body (e.g. a 204), with the headers every
    /// answer carries.
    pub fn empty(status: u16) -> Response {
        Response {
            status,
            headers: vec![
                ("Cache-Control", "no-store".to_owned()),
                ("X-Content-Type-Options", "nosniff".to_owned()),
            ],
            body: Vec::new(),
            reason: None,
            log_detail: None,
            close_connection: false,
        }
    }

    /// The value of the first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn with_header(mut self, name: &'static str, value: &str) -> Response {
        self.headers.push((name, value.to_owned()));
        self
    }
}

/// Every way the API can refuse a request. Knows its status, its reason
/// phrase and its message, and renders the contract's error shape
/// `{"statusCode","statusMessage","data":{"message"}}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiError {
    /// 400: the request is malformed (bad id, bad percent-encoding, ...).
    BadRequest(&'static str),
    /// 400: two parsers could read the request's length differently
    /// (request smuggling), so neither it nor its connection is trusted.
    AmbiguousFraming,
    /// 401: no session cookie. The log says what to check, by where the
    /// browser says the call came from.
    NoSessionCookie { from: Caller },
    /// 401: a session cookie that names no live session. Every cause gets
    /// the same answer, so that a client learns nothing about a token from
    /// how it is refused; `why` goes to the log only.
    InvalidSession { why: &'static str },
    /// 403: refused for where it came from (Origin), whoever asks.
    Forbidden(&'static str),
    /// 403: the `Host` is not one of this server's names (DNS rebinding).
    /// The log lists the names, for a developer who uses another one.
    HostNotAllowed,
    /// 404: no such chat of this user (deleted already, never there, or
    /// another user's: the same answer, so that ids tell nothing). `why`,
    /// when it could be found, goes to the log only.
    ChatNotFound { why: Option<&'static str> },
    /// 404: no such route. The log names the one there is, for a front end
    /// whose other API calls are sent here too.
    NoSuchRoute,
    /// 404: the path's user is not the session's. The log says so; the
    /// client is told only "User not found".
    NotSessionsUser,
    /// 411: the request carries a chunked body, whose size is unknown until
    /// it has been read (RFC 9110 §15.5.12).
    LengthRequired,
    /// 413: the request carries a body larger than we accept.
    PayloadTooLarge,
    /// 414: the request-target is longer than any this API uses.
    UriTooLong,
    /// 431: more header fields, or more header bytes, than any client of
    /// this API sends.
    HeaderFieldsTooLarge,
    /// 405: the route exists but not with this method.
    MethodNotAllowed { allow: &'static str },
    /// 503: the database is busy, or its disk full; nothing was changed, and
    /// the client may retry after a moment. The message says which.
    ServiceUnavailable(&'static str),
    /// 505: a request line that names HTTP/0.9, whose requests had no
    /// headers and whose answers no status line (RFC 9112 §2.3 has the
    /// server answer in the highest version it speaks of the request's
    /// major version, and it speaks none of major version 0).
    VersionNotSupported,
    /// 500: something failed that the client cannot fix. The cause is logged
    /// where it happened and never sent.
    Internal,
}

/// Where a browser says a request came from (`Sec-Fetch-Site`, which no
/// page can set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// `same-site` or `cross-site`: a page on another origin (another port
    /// of localhost, say).
    PageOnAnotherOrigin,
    /// `same-origin`: a page calling its own origin (a dev server's proxy).
    PageOnItsOwnOrigin,
    /// No page made the call, as far as can be told: no `Sec-Fetch-Site`
    /// (not a browser), `none` (the user, from the address bar), or several.
    NoPage,
}

impl Caller {
    pub fn of(request: &Request) -> Caller {
        let Lone::One(site) = request.lone_header("Sec-Fetch-Site") else {
            return Caller::NoPage;
        };
        let site = site.trim();
        if site.eq_ignore_ascii_case("same-origin") {
            Caller::PageOnItsOwnOrigin
        } else if site.eq_ignore_ascii_case("same-site") || site.eq_ignore_ascii_case("cross-site")
        {
            Caller::PageOnAnotherOrigin
        } else {
            Caller::NoPage
        }
    }
}

/// How long a client should wait before retrying after a 503, in seconds.
pub const RETRY_AFTER_SECS: u32 = 1;

impl ApiError {
    pub fn status(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) | ApiError::AmbiguousFraming => 400,
            ApiError::NoSessionCookie { .. } | ApiError::InvalidSession { .. } => 401,
            ApiError::Forbidden(_) | ApiError::HostNotAllowed => 403,
            ApiError::ChatNotFound { .. } | ApiError::NoSuchRoute | ApiError::NotSessionsUser => {
                404
            }
            ApiError::LengthRequired => 411,
            ApiError::PayloadTooLarge => 413,
            ApiError::UriTooLong => 414,
            ApiError::HeaderFieldsTooLarge => 431,
            ApiError::MethodNotAllowed { .. } => 405,
            ApiError::Internal => 500,
            ApiError::ServiceUnavailable(_) => 503,
            ApiError::VersionNotSupported => 505,
        }
    }

    /// The reason phrase, used as the body's `statusMessage`.
    pub fn status_message(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) | ApiError::AmbiguousFraming => "Bad Request",
            ApiError::NoSessionCookie { .. } | ApiError::InvalidSession { .. } => "Unauthorized",
            ApiError::Forbidden(_) | ApiError::HostNotAllowed => "Forbidden",
            ApiError::ChatNotFound { .. } | ApiError::NoSuchRoute | ApiError::NotSessionsUser => {
                "Not Found"
            }
            ApiError::LengthRequired => "Length Required",
            ApiError::PayloadTooLarge => "Payload Too Large",
            ApiError::UriTooLong => "URI Too Long",
            ApiError::HeaderFieldsTooLarge => "Request Header Fields Too Large",
            ApiError::MethodNotAllowed { .. } => "Method Not Allowed",
            ApiError::Internal => "Internal Server Error",
            ApiError::ServiceUnavailable(_) => "Service Unavailable",
            ApiError::VersionNotSupported => "HTTP Version Not Supported",
        }
    }

    pub fn message(&self) -> &'static str {
        match self {
            ApiError::BadRequest(m) | ApiError::Forbidden(m) | ApiError::ServiceUnavailable(m) => m,
            ApiError::NoSessionCookie { .. } => "Missing session cookie",
            ApiError::InvalidSession { .. } => "Invalid or expired session",
            ApiError::ChatNotFound { .. } => "Chat not found",
            ApiError::NoSuchRoute => "Route not found",
            ApiError::HostNotAllowed => "Host not allowed",
            ApiError::NotSessionsUser => "User not found",
            ApiError::AmbiguousFraming => "Ambiguous message framing",
            ApiError::MethodNotAllowed { .. } => "Method not allowed on this route",
            ApiError::LengthRequired => {
                "Chunked request bodies are not accepted; this API takes no body"
            }
            ApiError::PayloadTooLarge => "Request bodies over 1024 bytes are not accepted",
            ApiError::UriTooLong => "Request targets over 8192 bytes are not accepted",
            ApiError::HeaderFieldsTooLarge => {
                "Requests with over 100 header fields or 64 KiB of headers are not accepted"
            }
            ApiError::Internal => "Internal server error",
            ApiError::VersionNotSupported => "Only HTTP/1.0 and HTTP/1.1 are served",
        }
    }

    /// What the log line adds to the message, for the person who runs the
    /// server; never sent.
    pub fn log_detail(&self) -> Option<&'static str> {
        match self {
            ApiError::NoSessionCookie { from } => match from {
                Caller::PageOnAnotherOrigin => Some(
                    "a page on another origin called without it: fetch sends cookies only \
                     with credentials: 'include', and only to the host name they were set on",
                ),
                Caller::PageOnItsOwnOrigin => Some(
                    "the browser holds none for the page's host name: set it there \
                     (README, \"From a front end in development\")",
                ),
                Caller::NoPage => None,
            },
            ApiError::InvalidSession { why } => Some(why),
            ApiError::ChatNotFound { why } => *why,
            ApiError::NotSessionsUser => Some("the session is another user's"),
            ApiError::HostNotAllowed => Some(
                "this server answers to localhost, 127.0.0.1, ::1 and the names given \
                 with --allowed-host",
            ),
            ApiError::NoSuchRoute => {
                Some("this server has only DELETE /api/users/{user_id}/chats/{chat_id}")
            }
            _ => None,
        }
    }

    pub fn into_response(self) -> Response {
        let body = json!({
            "statusCode": self.status(),
            "statusMessage": self.status_message(),
            "data": { "message": self.message() },
        });
        let response = Response {
            reason: Some(self.message()),
            log_detail: self.log_detail(),
            // Unread or mis-framed body bytes would be read as the next
            // request, and a client that names HTTP/0.9 reads no further
            // answer: ask the client to close (tiny_http would not).
            close_connection: matches!(
                self,
                ApiError::AmbiguousFraming
                    | ApiError::LengthRequired
                    | ApiError::PayloadTooLarge
                    | ApiError::VersionNotSupported
            ),
            ..Response::json(self.status(), &body)
        };
        match self {
            ApiError::MethodNotAllowed { allow } => response.with_header("Allow", allow),
            ApiError::ServiceUnavailable(_) => {
                response.with_header("Retry-After", &RETRY_AFTER_SECS.to_string())
            }
            // RFC 9110 §11.6.1: a 401 must say how to authenticate. There is
            // no registered cookie scheme, so name the cookie.
            ApiError::NoSessionCookie { .. } | ApiError::InvalidSession { .. } => response
                .with_header(
                    "WWW-Authenticate",
                    &format!(
                        "Cookie realm=\"neptun\", cookie-name=\"{}\"",
                        crate::auth::COOKIE_NAME
                    ),
                ),
            _ => response,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_split_into_the_host_they_name_and_their_path() {
        let split = |target: &str| {
            let request = Request::new("DELETE", target, &[]);
            request
                .split_target()
                .map(|(a, p)| (a.map(str::to_owned), p.to_owned()))
                .map_err(|e| e.message())
        };
        let ok = |authority: Option<&str>, path: &str| {
            Ok((authority.map(str::to_owned), path.to_owned()))
        };
        assert_eq!(split("/api/x?q"), ok(None, "/api/x?q"));
        assert_eq!(split("*"), ok(None, "*"));
        assert_eq!(split("api/x"), ok(None, "api/x"));
        assert_eq!(
            split("http://localhost:7150/api/x?q"),
            ok(Some("localhost:7150"), "/api/x?q")
        );
        assert_eq!(split("HTTPS://[::1]/"), ok(Some("[::1]"), "/"));
        assert_eq!(split("http://localhost"), ok(Some("localhost"), "/"));
        assert_eq!(split("http://localhost?a=/b"), ok(Some("localhost"), "/"));
        assert_eq!(split("http://localhost#/api/x"), ok(Some("localhost"), "/"));
        assert_eq!(
            split("http:///api/x"),
            Err("Request target URL has no host")
        );
        assert_eq!(
            split("http://user:pw@localhost/api/x"),
            Err("Request target URL must not hold user information")
        );
        for other in [
            "ftp://localhost/api/x",
            "://localhost/",
            "file:///etc/passwd",
        ] {
            assert_eq!(
                split(other),
                Err("Request target must be a path or an http URL"),
                "{other}"
            );
        }
    }

    #[test]
    fn errors_render_the_contract_shape() {
        let r = ApiError::ChatNotFound { why: None }.into_response();
        assert_eq!(r.status, 404);
        assert_eq!(
            String::from_utf8(r.body).unwrap(),
            r#"{"statusCode":404,"statusMessage":"Not Found","data":{"message":"Chat not found"}}"#
        );
    }

    #[test]
    fn status_specific_headers_are_present() {
        let r = ApiError::MethodNotAllowed { allow: "DELETE" }.into_response();
        assert_eq!(r.header("allow"), Some("DELETE"));
        let r = ApiError::ServiceUnavailable("busy").into_response();
        assert_eq!(r.header("Retry-After"), Some("1"));
        let r = ApiError::NoSessionCookie {
            from: Caller::NoPage,
        }
        .into_response();
        assert!(r.header("WWW-Authenticate").unwrap().starts_with("Cookie "));
    }

    #[test]
    fn why_a_session_is_refused_goes_to_the_log_and_not_to_the_client() {
        let expired = ApiError::InvalidSession { why: "expired" }.into_response();
        let unknown = ApiError::InvalidSession { why: "unknown" }.into_response();
        assert_eq!(expired.log_detail, Some("expired"));
        assert_eq!(unknown.log_detail, Some("unknown"));
        // Apart from the log's detail, the client gets the same answer.
        assert_eq!(
            Response {
                log_detail: None,
                ..expired.clone()
            },
            Response {
                log_detail: None,
                ..unknown
            }
        );
        assert_eq!(
            String::from_utf8(expired.body.clone()).unwrap(),
            r#"{"statusCode":401,"statusMessage":"Unauthorized","data":{"message":"Invalid or expired session"}}"#
        );
        assert!(expired.headers.iter().all(|(_, v)| !v.contains("expired")));
        assert!(expired.header("WWW-Authenticate").is_some());

        let other_user = ApiError::NotSessionsUser.into_response();
        assert_eq!(
            String::from_utf8(other_user.body).unwrap(),
            r#"{"statusCode":404,"statusMessage":"Not Found","data":{"message":"User not found"}}"#
        );
        assert!(other_user.log_detail.is_some());
    }

    #[test]
    fn sec_fetch_site_tells_where_a_browser_call_came_from() {
        let caller = |sites: &[&str]| {
            let headers: Vec<(&str, &str)> = sites.iter().map(|s| ("Sec-Fetch-Site", *s)).collect();
            Caller::of(&Request::new("DELETE", "/", &headers))
        };
        assert_eq!(caller(&["same-site"]), Caller::PageOnAnotherOrigin);
        assert_eq!(caller(&[" Cross-Site "]), Caller::PageOnAnotherOrigin);
        assert_eq!(caller(&["same-origin"]), Caller::PageOnItsOwnOrigin);
        // Typed into the address bar, absent, unknown or ambiguous: no page.
        for sites in [
            &["none"][..],
            &[],
            &["nearby"],
            &["same-site", "same-origin"],
        ] {
            assert_eq!(caller(sites), Caller::NoPage, "{sites:?}");
        }
    }

    #[test]
    fn only_answers_about_a_body_or_the_version_ask_to_close_the_connection() {
        for (error, closes) in [
            (ApiError::AmbiguousFraming, true),
            (ApiError::LengthRequired, true),
            (ApiError::PayloadTooLarge, true),
            (ApiError::VersionNotSupported, true),
            (ApiError::BadRequest("x"), false),
            (
                ApiError::NoSessionCookie {
                    from: Caller::PageOnAnotherOrigin,
                },
                false,
            ),
            (ApiError::HeaderFieldsTooLarge, false),
            (ApiError::Internal, false),
        ] {
            let r = error.clone().into_response();
            assert_eq!(r.close_connection, closes, "{error:?}");
        }
        let r = ApiError::AmbiguousFraming.into_response();
        assert_eq!(
            String::from_utf8(r.body).unwrap(),
            r#"{"statusCode":400,"statusMessage":"Bad Request","data":{"message":"Ambiguous message framing"}}"#
        );
    }

    #[test]
    fn path_drops_the_query() {
        let r = Request::new("GET", "/a/b?c=d?e", &[]);
        assert_eq!(r.path(), "/a/b");
    }
}
