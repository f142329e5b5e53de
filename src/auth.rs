//! Session tokens: minting, hashing, finding the one a request carries, and
//! turning it into a user id.
//!
//! A token is 256 bits from the operating system's random source, written as
//! 64 lowercase hex digits (URL- and cookie-safe). The database keeps only its
//! SHA-256, so a copy of the file does not give anyone a working session.
//! Tokens are never logged; nothing in this module formats one into a message.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::TryRng;
use rand::rngs::SysRng;
use sha2::{Digest, Sha256};

use crate::db::{self, Database, NewSession};

/// The cookie that carries the session token.
pub const COOKIE_NAME: &str = "neptun-session";

/// How long a session lives unless told otherwise.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(7 * 24 * 60 * 60);

const TOKEN_BYTES: usize = 32;
const TOKEN_LEN: usize = TOKEN_BYTES * 2;

/// A session token. Its `Debug` form is redacted so that it cannot end up in
/// a log by accident; [`Token::expose`] is the one way to read it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Draws a new token from the operating system's random source.
    pub fn generate() -> Result<Token, rand::rngs::SysError> {
        let mut bytes = [0u8; TOKEN_BYTES];
        SysRng.try_fill_bytes(&mut bytes)?;
        let mut text = String::with_capacity(TOKEN_LEN);
        for b in bytes {
            text.push(char::from(HEX[usize::from(b >> 4)]));
            text.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        Ok(Token(text))
    }

    /// Returns the token if `text` has the exact shape of one we mint (so
    /// malformed values never reach the database).
    pub fn parse(text: &str) -> Option<Token> {
        let well_formed =
            text.len() == TOKEN_LEN && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        well_formed.then(|| Token(text.to_owned()))
    }

    /// The SHA-256 of the token: what the database stores and looks up.
    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.0.as_bytes()).into()
    }

    /// The token text, for handing to the person who asked for it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// What the `Cookie` header(s) of a request say about the session cookie.
#[derive(Debug, PartialEq, Eq)]
pub enum SessionCookie<'a> {
    /// No `neptun-session` cookie at all.
    Missing,
    /// Two or more `neptun-session` cookies with different values. RFC 6265
    /// §4.2.2 says not to rely on their order, so neither is trusted.
    Conflicting,
    /// Exactly one value (possibly repeated identically).
    Value(&'a str),
}

/// Finds the session cookie in the values of every `Cookie` header.
///
/// Follows RFC 6265 §4.2.1/§5.4 leniently, as servers must: pairs are
/// separated by `;` with optional whitespace, a value may be wrapped in double
/// quotes, and pairs that are not `name=value` or that have other names are
/// skipped whatever bytes they contain (browsers send every `localhost`
/// cookie, including other applications' odd ones).
pub fn find_session_cookie<'a>(
    cookie_headers: impl IntoIterator<Item = &'a str>,
) -> SessionCookie<'a> {
    let mut found = None;
    for header in cookie_headers {
        for pair in header.split(';') {
            let Some((name, value)) = pair.split_once('=') else {
                continue;
            };
            if name.trim_matches([' ', '\t']) != COOKIE_NAME {
                continue;
            }
            let value = value.trim_matches([' ', '\t']);
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            match found {
                None => found = Some(value),
                Some(previous) if previous == value => {}
                Some(_) => return SessionCookie::Conflicting,
            }
        }
    }
    found.map_or(SessionCookie::Missing, SessionCookie::Value)
}

/// Why a request is not authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    /// The request carries no session cookie.
    NoCookie,
    /// It carries one that names no live session.
    Refused(Refusal),
}

/// Why a session cookie names no live session.
///
/// Every refusal gets the same answer: a client learns nothing about a
/// token from the way it is refused. The log tells them apart
/// ([`Refusal::explain`]) for the person who runs the server, whose front
/// end sees only "Invalid or expired session".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Two or more different `neptun-session` values.
    Conflicting,
    /// The value does not have the shape of a token.
    Malformed,
    /// No session has this token: never made with this database, revoked,
    /// or its user removed.
    Unknown,
    /// The session exists but has expired.
    Expired,
}

impl Refusal {
    /// Why, in words for the log. Never includes the cookie's value.
    pub fn explain(self) -> &'static str {
        match self {
            // Browsers send one cookie per path and domain that matches: a
            // stale one set on another path is the usual cause.
            Refusal::Conflicting => {
                "two different session cookies, e.g. a stale one set on another path"
            }
            Refusal::Malformed => "the cookie is not a token of 64 lowercase hex digits",
            // A front end's cookie outlives the database file it came from.
            Refusal::Unknown => {
                "no session has this token: revoked, its user removed, or minted for another database"
            }
            Refusal::Expired => "the session has expired",
        }
    }
}

/// The current time in Unix seconds.
pub fn now_unix() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX)
}

/// The live session a request was authenticated with.
#[derive(Debug)]
pub struct Session {
    pub user_id: String,
    /// The SHA-256 of its token, with which a delete looks the session up
    /// again as it commits (see [`Database::delete_chat`]).
    pub token_hash: [u8; 32],
}

/// Resolves the session cookie to its live session.
pub fn authenticate<'a>(
    db: &Database,
    cookie_headers: impl IntoIterator<Item = &'a str>,
) -> Result<Result<Session, AuthFailure>, db::Error> {
    let value = match find_session_cookie(cookie_headers) {
        SessionCookie::Missing => return Ok(Err(AuthFailure::NoCookie)),
        SessionCookie::Conflicting => return Ok(Err(AuthFailure::Refused(Refusal::Conflicting))),
        SessionCookie::Value(v) => v,
    };
    let Some(token) = Token::parse(value) else {
        return Ok(Err(AuthFailure::Refused(Refusal::Malformed)));
    };
    let token_hash = token.hash();
    Ok(match db.find_session(&token_hash)? {
        None => Err(AuthFailure::Refused(Refusal::Unknown)),
        Some((_, expires_at)) if expires_at <= now_unix() => {
            Err(AuthFailure::Refused(Refusal::Expired))
        }
        Some((user_id, _)) => Ok(Session {
            user_id,
            token_hash,
        }),
    })
}

/// Creates a session for an existing user that expires after `ttl`, and
/// returns its token (the only time the token exists outside a client).
pub fn new_session(db: &Database, user_id: &str, ttl: Duration) -> Result<Token, NewSessionError> {
    let token = Token::generate().map_err(NewSessionError::Random)?;
    let created_at = now_unix();
    let ttl_secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
    db.add_session(&NewSession {
        token_hash: token.hash(),
        user_id,
        created_at,
        expires_at: created_at.saturating_add(ttl_secs),
    })
    .map_err(NewSessionError::Db)?;
    Ok(token)
}

/// Why a session could not be created.
#[derive(Debug)]
pub enum NewSessionError {
    Random(rand::rngs::SysError),
    Db(db::Error),
}

impl fmt::Display for NewSessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NewSessionError::Random(e) => write!(f, "the OS random source failed: {e}"),
            NewSessionError::Db(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for NewSessionError {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn tokens_are_64_hex_digits_unique_and_parse_back() {
        let tokens: HashSet<String> = (0..10_000)
            .map(|_| Token::generate().unwrap().expose().to_owned())
            .collect();
        assert_eq!(tokens.len(), 10_000);
        for t in tokens.iter().take(100) {
            assert_eq!(Token::parse(t).unwrap().expose(), t);
        }
    }

    #[test]
    fn malformed_tokens_are_rejected() {
        let good = "a".repeat(64);
        assert!(Token::parse(&good).is_some());
        for bad in [
            "",
            "abc",
            &"a".repeat(63),
            &"a".repeat(65),
            &"A".repeat(64),
            &"g".repeat(64),
        ] {
            assert!(Token::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn the_hash_is_sha256_of_the_token_text() {
        // SHA-256("") is a well-known constant; a token is never empty, so
        // check against a value computed independently: sha256sum of 64 'a's.
        let t = Token("a".repeat(64));
        let hex: String = t.hash().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb"
        );
    }

    #[test]
    fn debug_never_shows_the_token() {
        let t = Token::generate().unwrap();
        assert!(!format!("{t:?}").contains(t.expose()));
    }

    #[test]
    fn cookie_parsing_follows_rfc_6265() {
        use SessionCookie::*;
        let cases: &[(&[&str], SessionCookie)] = &[
            (&[], Missing),
            (&["a=b"], Missing),
            (&["neptun-session=x"], Value("x")),
            (&["a=b; neptun-session=x; c=d"], Value("x")),
            (&["a=b;neptun-session=x"], Value("x")),
            (&["  neptun-session = x  ;"], Value("x")),
            (&["neptun-session=\"x\""], Value("x")),
            (&["neptun-session="], Value("")),
            (
                &["weird=a=b=c; =; ;; neptun-session=x; noequals"],
                Value("x"),
            ),
            (&["other=caf\u{e9}; neptun-session=x"], Value("x")),
            (&["neptun-session=x", "neptun-session=x"], Value("x")),
            (&["neptun-session=x; neptun-session=y"], Conflicting),
            (&["neptun-session=x", "neptun-session=y"], Conflicting),
            (&["Neptun-Session=x"], Missing),
            (&["neptun-sessionx=y"], Missing),
        ];
        for (headers, expected) in cases {
            assert_eq!(
                &find_session_cookie(headers.iter().copied()),
                expected,
                "{headers:?}"
            );
        }
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn the_cookie_parser_never_panics_and_only_returns_what_was_sent(
            headers in prop::collection::vec("(\\PC|[ ;=\"])*(neptun-session=[a-f0-9\"; ]{0,70})?(\\PC|[ ;=\"])*", 0..3)
        ) {
            match find_session_cookie(headers.iter().map(String::as_str)) {
                SessionCookie::Value(v) => {
                    prop_assert!(headers.iter().any(|h| h.contains(COOKIE_NAME) && h.contains(v)));
                    prop_assert!(!v.contains(';'));
                }
                SessionCookie::Conflicting => {
                    prop_assert!(headers.iter().map(|h| h.matches(COOKIE_NAME).count()).sum::<usize>() >= 2);
                }
                SessionCookie::Missing => {}
            }
        }

        #[test]
        fn token_parsing_never_panics(text in "\\PC{0,80}") {
            if let Some(token) = Token::parse(&text) {
                prop_assert_eq!(token.expose(), text.as_str());
            }
        }
    }
}
