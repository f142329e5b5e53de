//! `serve`: binds, opens the database, starts the background threads, and
//! answers requests until a stop signal (or until the database file, its
//! `-wal` or its `-shm` is deleted or replaced under it).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::path::Path;

use super::{Error, ServeArgs};
use crate::auth::{self, Token};
use crate::db::{self, Database, Durability};
use crate::demo;
use crate::file_watch::{self, FileWatch};
use crate::guard::Policy;
use crate::maintenance::{self, Maintenance};
use crate::routes::{self, App};
use crate::server::{self, HttpServer, ShutdownHandle};

pub(super) fn serve(
    db_path: &Path,
    args: &ServeArgs,
    open: impl FnOnce(&db::Settings) -> Result<Database, Error>,
) -> Result<(), Error> {
    let workers = usize::from(args.workers);
    // Before the database is opened, which creates the file if it is
    // missing: a start refused for its address or flags leaves nothing
    // behind (a mistyped --db that meets a taken port).
    let listener = bind(args)?;
    let policy = Policy::new(
        listener.local_addr().map_err(Error::Transport)?,
        &args.allowed_hosts,
        &args.allow_origins,
    )
    .map_err(Error::Policy)?;
    // SQLite takes an empty file for a new database, as the commands that
    // create one do; but a database file is seldom empty by intent.
    let was_empty = db::is_empty_file(db_path);
    let db = open(&db::Settings {
        busy_timeout: args.busy_timeout,
        pool_size: u32::from(args.workers).min(db::MAX_POOL_SIZE),
        durability: args.synchronous,
        ..db::Settings::default()
    })?;
    // Refused now rather than with a 500 for every delete.
    db.check_writable().map_err(|source| Error::Database {
        path: db_path.to_owned(),
        source,
    })?;
    if args.synchronous == Durability::Normal {
        log::warn!("--synchronous normal: deletes answered just before a power loss may come back");
    }
    // In full: a relative --db is relative to the working directory, and
    // "where is my neptun.db?" is the usual question.
    let full_path = std::path::absolute(db_path).unwrap_or_else(|_| db_path.to_owned());
    log::info!("database {}", db::describe(&full_path, db_path));
    if was_empty {
        // Every request would then get 401, and the advice to mint a
        // session would hide that the data is gone.
        log::warn!(
            "the database file was empty, so a new database was made in it. {}",
            super::IF_IT_HELD_DATA
        );
    }
    // Warned of at every start, not only by `doctor`: a server is started
    // far more often than a database is checked. Their commands name the
    // file in full, for a log read elsewhere (systemd's journal).
    for warning in [
        db::more_than_one_name(&full_path),
        db::open_to_other_users(&full_path),
    ]
    .into_iter()
    .flatten()
    {
        log::warn!("{warning}");
    }
    warn_of_what_the_schema_lacks(&db);

    match server::raise_open_file_limit() {
        Ok(Some(limit)) => log::debug!("open file limit {limit}"),
        Ok(None) => {}
        Err(e) => log::warn!("could not raise the open file limit: {e}"),
    }
    server::log_panics_and_exit_if_the_transport_panics();
    let server = HttpServer::from_listener(listener).map_err(Error::Transport)?;
    let base_url = format!("http://{}", server.local_addr());
    // Everything that can still fail comes before the "listening on" line.
    // The signal handlers go in before the upkeep thread starts, so that a
    // failure leaves no thread behind. A signal from here on is kept until
    // the workers run, which then finish at once.
    let shutdown = server.shutdown_handle(workers);
    super::signals::on_stop_signals(move || {
        log::info!("shutting down: finishing requests in flight");
        shutdown.shutdown();
    })?;
    // Only once the server can start (a second demo on a taken address
    // must not bring back chats that the running one deleted), and before
    // the upkeep thread, so that a failed seed leaves no thread behind.
    if args.demo {
        let chat_ids = demo::seed(&db).map_err(|source| Error::Database {
            path: db_path.to_owned(),
            source,
        })?;
        let token = auth::new_session(&db, demo::DEMO_USER, auth::DEFAULT_SESSION_TTL)
            .map_err(Error::Session)?;
        print_demo_instructions(server.local_addr(), &token, &chat_ids);
    } else {
        say_if_no_session_can_sign_in(&db, db_path);
    }
    let watch = watch_database_file(db_path, server.shutdown_handle(workers))?;
    let upkeep =
        Maintenance::start(db.clone(), maintenance::Pacing::default()).map_err(Error::Io)?;
    // The one line on stdout: scripts and tests wait for it, and may then
    // read what the start-up logged (or the demo's instructions).
    crate::logging::flush();
    if let Err(e) = super::write_stdout(&format!("listening on {base_url}\n")) {
        // Whoever waited for it has gone; the server is still wanted.
        log::warn!("could not write the listening line to stdout: {e}");
    }

    let app = App {
        db: db.clone(),
        policy,
    };
    let served = server.run(workers, move |request| routes::handle(&app, request));
    let gone = watch.stop().map(|found| {
        // A change in the watch's last second, with a stop signal in it, is
        // found only by its last look, and was not logged.
        if !found.reported {
            let (file, what) = &found.change;
            log::error!("{} {what} while the server ran", file.display());
        }
        found.change
    });
    if gone
        .as_ref()
        .is_some_and(|(file, _)| *file == db::side_file(db_path, "-shm"))
    {
        // Other processes index the WAL in a new -shm now; see
        // `Database::close_without_checkpoint`.
        upkeep.stop_without_checkpoint();
        match db.close_without_checkpoint() {
            Ok(()) => log::info!("left the WAL as it is, for the next start to recover"),
            Err(e) => log::error!("could not leave the WAL as it is: {e}"),
        }
    } else {
        // Also after a transport failure: leave the file checkpointed and
        // clean. After a WAL deleted under the server, this copies what it
        // held into the database.
        upkeep.stop();
    }
    served.map_err(Error::Transport)?;
    if let Some((file, what)) = gone {
        return Err(if file == db_path {
            Error::DatabaseGone { path: file, what }
        } else {
            Error::SideFileGone { path: file, what }
        });
    }
    log::info!("stopped");
    Ok(())
}

/// Every request of a server whose database holds no live session gets 401
/// (a new `neptun.db`, say, started without `--demo`): says how to mint one
/// before a newcomer wonders why.
fn say_if_no_session_can_sign_in(db: &Database, db_path: &Path) {
    match db.has_live_session(auth::now_unix()) {
        Ok(true) => {}
        Ok(false) => {
            let same_db = if db_path == Path::new(super::DEFAULT_DB) {
                ""
            } else {
                ", each with the same --db"
            };
            log::info!(
                "no session in this database can sign in, so every request will get 401: \
                 `neptun-local session new USER` mints one (after `neptun-local user add \
                 USER`{same_db}), or start with --demo"
            );
        }
        // Only a hint: the requests will tell what is wrong.
        Err(e) => log::debug!("could not look for a live session: {e}"),
    }
}

/// Shuts the server down if its database file, or SQLite's `-wal` or
/// `-shm` file beside it, is deleted or replaced (see `file_watch`).
fn watch_database_file(db_path: &Path, shutdown: ShutdownHandle) -> Result<FileWatch, Error> {
    let files = db::database_files(db_path);
    FileWatch::start(&files, file_watch::CHECK_EVERY, move |file, what| {
        log::error!(
            "{} {what} while the server ran; stopping, so that no answer comes \
             from a file that no one else sees",
            file.display()
        );
        shutdown.shutdown();
    })
    .map_err(Error::Io)
}

/// Binds the listener; a non-loopback address needs `--allow-remote`.
fn bind(args: &ServeArgs) -> Result<TcpListener, Error> {
    use std::net::ToSocketAddrs;
    let bind_error = |source| Error::Bind {
        addr: args.addr.clone(),
        source,
    };
    // Each is else looked up as a host name, which fails as "Name or
    // service not known": the host name "", or "http" (a URL copied from
    // the line "listening on http://...").
    let malformed = if args.addr.starts_with(':') {
        Some("there is no host before the port")
    } else if args.addr.contains("://") {
        Some("that is a URL, not an address")
    } else {
        None
    };
    if let Some(why) = malformed {
        return Err(bind_error(io::Error::new(io::ErrorKind::InvalidInput, why)));
    }
    let addrs = in_listening_order(args.addr.to_socket_addrs().map_err(bind_error)?);
    if let Some(remote) = addrs.iter().find(|a| !a.ip().is_loopback()) {
        if !args.allow_remote {
            return Err(Error::NotLoopback(remote.to_string()));
        }
        log::warn!(
            "listening on non-loopback {remote}: session tokens travel in clear text and \
             tiny_http has no timeouts or size limits; put a TLS reverse proxy in front"
        );
    }
    TcpListener::bind(&addrs[..]).map_err(bind_error)
}

/// A table or index dropped by hand (`doctor` says the same). Deletes
/// work without them, but each one without an index reads a whole table.
fn warn_of_what_the_schema_lacks(db: &Database) {
    match db.with_connection(|conn| Ok(db::missing_from_schema(conn)?)) {
        Ok(missing) => {
            for db::Missing { kind, name, .. } in missing {
                log::warn!(
                    "the {kind} {name} of the schema is missing from the database: \
                     `neptun-local doctor` says what to do"
                );
            }
        }
        // Damage shows in the answers to requests, and in `doctor`.
        Err(e) => log::debug!("could not compare the schema: {e}"),
    }
}

/// The addresses a name resolved to, in the order to try binding them.
/// One listener takes one address. A name such as `localhost` usually
/// resolves to ::1 first, and bound there alone, the server would refuse
/// clients of 127.0.0.1 (the default address, and the one README's proxy
/// setup names). So IPv4 comes first, as Go's `net.Listen` prefers it for
/// a name; `[::1]:PORT` still binds IPv6.
fn in_listening_order(resolved: impl Iterator<Item = SocketAddr>) -> Vec<SocketAddr> {
    let mut addrs: Vec<SocketAddr> = resolved.collect();
    addrs.sort_by_key(SocketAddr::is_ipv6);
    addrs
}

/// Windows PowerShell 5.1 takes a bare `curl` for its own Invoke-WebRequest,
/// which refuses curl's options; `curl.exe` (in Windows since 10 1803)
/// works there, in PowerShell 7 and in cmd.
const CURL: &str = if cfg!(windows) { "curl.exe" } else { "curl" };

fn print_demo_instructions(listening: SocketAddr, token: &Token, chat_ids: &[i64]) {
    let server = reachable_here(listening);
    let user = demo::DEMO_USER;
    let chats = chat_ids
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let first = chat_ids.first().copied().unwrap_or(1);
    let token = token.expose();
    // stderr, because stdout carries only the "listening on" line. The URL
    // is quoted: zsh, macOS's shell, takes an IPv6 address's `[::1]` for a
    // pattern and refuses the line. Double quotes work in every shell here
    // and in cmd and PowerShell.
    super::tell(format_args!(
        "demo user {user:?} owns chats {chats}\n\
         demo session token: {token}\n\
         try:\n  {CURL} -i -X DELETE -H \"Cookie: neptun-session={token}\" \"http://{server}/api/users/{user}/chats/{first}\"\n\
         for a front end on localhost, paste this in its browser console (see README, \"From a front end in development\"):\n  \
         document.cookie = \"neptun-session={token}; path=/\""
    ));
}

/// The address a client on this machine connects to: the loopback address
/// for a server listening on every address (`0.0.0.0`, `[::]`), which
/// Windows refuses to connect to and browsers block.
fn reachable_here(listening: SocketAddr) -> SocketAddr {
    let ip = match listening.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listening.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_sends_a_server_on_every_address_to_loopback() {
        let reachable = |text: &str| reachable_here(text.parse().unwrap()).to_string();
        assert_eq!(reachable("0.0.0.0:7150"), "127.0.0.1:7150");
        assert_eq!(reachable("[::]:7150"), "[::1]:7150");
        assert_eq!(reachable("192.168.1.20:7150"), "192.168.1.20:7150");
        assert_eq!(reachable("[::1]:7150"), "[::1]:7150");
    }

    #[test]
    fn a_name_of_both_families_is_bound_on_ipv4_first() {
        let addr = |text: &str| text.parse::<SocketAddr>().unwrap();
        let resolved = [addr("[::1]:7150"), addr("127.0.0.1:7150")];
        assert_eq!(
            in_listening_order(resolved.into_iter()),
            [addr("127.0.0.1:7150"), addr("[::1]:7150")]
        );
        let only_ipv6 = [addr("[::1]:7150")];
        assert_eq!(in_listening_order(only_ipv6.into_iter()), only_ipv6);
    }
}
