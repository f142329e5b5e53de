//! The command line: `serve` (the default), `user add|list`,
//! `session new|revoke|list|prune`, `doctor`, `backup` and `restore`.
//!
//! Every option has an environment-variable fallback, so that the server can
//! be configured the same way from a shell, a service file or a test.

use std::fmt;
use std::io::{self, BufRead, IsTerminal, Write as _};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use log::LevelFilter;
use rusqlite::Connection;

use crate::auth::{self, Token};
use crate::db::{self, Database, Durability};
use crate::{backup, doctor, logging, maintenance, restore};

mod file_commands;
mod listings;
mod reading;
mod serve;
mod signals;
mod table;
mod values;
use listings::{chats_table, sessions_table, users_table};
use serve::serve;
use values::{
    parse_busy_timeout, parse_chat_name, parse_durability, parse_log_level, parse_model,
    parse_switch, parse_ttl, parse_user_name,
};

/// Loopback only: a browser on this machine can reach it, nobody else can.
/// Not 3000, which front-end dev servers usually take.
pub const DEFAULT_ADDR: &str = "127.0.0.1:7150";
pub const DEFAULT_DB: &str = "neptun.db";

/// Serves the Neptun chat API's delete-chat endpoint from a local SQLite file.
#[derive(Parser, Debug)]
#[command(name = "neptun-local", version)]
pub struct Cli {
    /// The SQLite database file; serve, user add and restore create it, with the schema, if missing.
    #[arg(long, env = "NEPTUN_DB", default_value = DEFAULT_DB, global = true)]
    pub db: PathBuf,

    /// Log level on stderr: off, error, warn, info (one line per request), debug, trace.
    #[arg(long, env = "NEPTUN_LOG", default_value = "info", global = true,
          value_parser = parse_log_level)]
    pub log_level: LevelFilter,

    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the API (what runs when no subcommand is given).
    Serve(ServeArgs),
    /// Manage users.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage sessions.
    #[command(subcommand)]
    Session(SessionCommand),
    /// List and add chats.
    #[command(subcommand)]
    Chat(ChatCommand),
    /// Check the database file (integrity, foreign keys, settings, sizes);
    /// exits non-zero if something is wrong.
    Doctor {
        /// Before the check, make any index of the schema that the file
        /// lacks, and rebuild every index from its table's rows (SQLite's
        /// REINDEX): the repair for damaged or missing indexes, which loses
        /// nothing and is safe while the server runs.
        #[arg(long)]
        reindex: bool,
        /// Before the check (after --reindex), delete every orphaned row: one
        /// whose parent is gone, which a cascade should have deleted with it.
        /// Refused while the file is damaged, since a damaged index can hide
        /// a parent.
        #[arg(long)]
        delete_orphans: bool,
    },
    /// Write a consistent copy of the database to a new file, safe while the
    /// server runs (copying the file with cp is not); then check the copy.
    Backup {
        /// Where to write the copy; must not exist yet.
        out: PathBuf,
    },
    /// Put a backup's contents in place of the database's, safe while the
    /// server runs (copying the file over it with cp is not); the backup is
    /// checked first.
    Restore {
        /// The backup to restore from.
        backup: PathBuf,
        /// Replace the users and chats the database holds (that cannot be
        /// undone); without it, only an empty database is restored into.
        #[arg(long)]
        replace: bool,
    },
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "NEPTUN_ADDR", default_value = DEFAULT_ADDR)]
    pub addr: String,

    /// Number of threads answering requests. A worker waits while its
    /// delete commits, and the deletes waiting together share one commit, so
    /// more workers means bigger group commits.
    #[arg(long, env = "NEPTUN_WORKERS", default_value_t = 16,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub workers: u16,

    /// How long a request waits for a database lock before answering 503 (e.g. 5s, 250ms).
    #[arg(long, env = "NEPTUN_BUSY_TIMEOUT", default_value = "5s", value_parser = parse_busy_timeout)]
    pub busy_timeout: Duration,

    /// Seed a demo user with chats, mint a session, and print a ready-to-paste curl command.
    #[arg(long)]
    pub demo: bool,

    /// Also accept this name in the Host header (repeatable; comma-separated
    /// in the env var). localhost, 127.0.0.1 and ::1 always are on loopback.
    #[arg(
        long = "allowed-host",
        env = "NEPTUN_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    pub allowed_hosts: Vec<String>,

    /// Let a front end served from this exact origin (e.g. http://localhost:3000)
    /// make credentialed cross-origin requests (repeatable; comma-separated in the env var).
    /// Not needed when the front end's dev server proxies the API.
    #[arg(
        long = "allow-origin",
        env = "NEPTUN_ALLOW_ORIGINS",
        value_delimiter = ','
    )]
    pub allow_origins: Vec<String>,

    /// Allow listening on a non-loopback address. Only behind a TLS reverse
    /// proxy: tokens would otherwise cross the network in clear text.
    #[arg(long, env = "NEPTUN_ALLOW_REMOTE", value_parser = parse_switch)]
    pub allow_remote: bool,

    /// "full": a delete answered 200 survives power loss (one disk sync per
    /// commit). "normal": faster, but the last deletes before a power loss or
    /// OS crash may come back.
    #[arg(long, env = "NEPTUN_SYNCHRONOUS", default_value = "full", value_parser = parse_durability)]
    pub synchronous: Durability,
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Add a user.
    Add {
        /// The user's id (as it appears in API paths).
        id: String,
        /// A display name.
        #[arg(long, value_parser = parse_user_name)]
        name: Option<String>,
    },
    /// List the users, with how many chats and active sessions each has.
    List,
    /// Remove a user and its sessions (refused while it has chats, unless
    /// --with-chats deletes them too; that cannot be undone).
    Remove {
        /// The user's id (as it appears in API paths).
        id: String,
        /// Also delete the user's chats, and everything that hangs off them.
        #[arg(long)]
        with_chats: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum SessionCommand {
    /// Create a session; prints only its token on stdout.
    New {
        /// The user's id (as it appears in API paths).
        user_id: String,
        /// Lifetime, e.g. 7d, 12h, 30m, 90s.
        #[arg(long, default_value = "7d", value_parser = parse_ttl)]
        ttl: Duration,
    },
    /// Revoke the session with this token ("-" reads it from stdin, which
    /// keeps it out of the process list and shell history), or with --user
    /// every session of a user.
    Revoke {
        /// The token, as `session new` printed it, or "-" to read it from
        /// stdin.
        #[arg(required_unless_present = "user", conflicts_with = "user")]
        token: Option<String>,
        /// Revoke every session of this user instead: signs them out
        /// everywhere, without their tokens.
        #[arg(long, value_name = "USER_ID")]
        user: Option<String>,
    },
    /// List a user's sessions (never their tokens).
    List {
        /// The user's id (as it appears in API paths).
        user_id: String,
    },
    /// Delete expired sessions (the server also does this every 15 minutes).
    Prune,
}

/// The most messages `chat add` writes into one chat: as many as the
/// bench's largest chat, whose delete takes about a quarter of a second.
const MAX_NEW_CHAT_MESSAGES: u32 = 100_000;

/// The model `chat add` records unless told another: the one the demo's
/// chats record.
const DEFAULT_MODEL: &str = "qwen2.5-coder:7b";

#[derive(Subcommand, Debug)]
pub enum ChatCommand {
    /// List a user's chats: the ids that API paths take, with their messages,
    /// files and share.
    List {
        /// The user's id (as it appears in API paths).
        user_id: String,
    },
    /// Add a chat, something to delete while a front end is developed or
    /// demonstrated; prints only its id on stdout.
    Add {
        /// The user's id (as it appears in API paths).
        user_id: String,
        /// The chat's name (its title).
        #[arg(value_parser = parse_chat_name)]
        name: String,
        /// The model name the chat records.
        #[arg(long, default_value = DEFAULT_MODEL, value_parser = parse_model)]
        model: String,
        /// How many messages to put in it, taking turns between the user and
        /// the assistant.
        #[arg(long, default_value_t = 0,
              value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_NEW_CHAT_MESSAGES)))]
        messages: u32,
    },
}

/// Everything that makes the command fail.
#[derive(Debug)]
pub enum Error {
    Database {
        path: PathBuf,
        source: db::Error,
    },
    /// `doctor --delete-orphans` on a damaged file, which could take rows
    /// for orphans whose parent a damaged index hides.
    DamagedFirst,
    /// The file is too damaged for SQLite to open it: not even `restore`
    /// can put a backup in its place, only into a new file.
    DamagedBeyondOpening {
        path: PathBuf,
        cause: String,
    },
    NotADatabase(PathBuf),
    Bind {
        addr: String,
        source: io::Error,
    },
    NotLoopback(String),
    Policy(String),
    Transport(io::Error),
    Session(auth::NewSessionError),
    Backup(backup::Error),
    Restore(restore::Error),
    InvalidUserId(&'static str),
    MalformedToken,
    NoSuchSession,
    Unhealthy(usize),
    /// A command that only reads or changes existing data was pointed at a
    /// file that does not exist.
    NoDatabase(PathBuf),
    /// Such a command was pointed at an empty file, which SQLite would take
    /// for a new database and write one into.
    EmptyDatabaseFile(PathBuf),
    /// The database file would be created in a directory that does not exist.
    NoDirectory {
        path: PathBuf,
        dir: PathBuf,
    },
    /// `--db` names no file: a directory, which SQLite reports only as
    /// "unable to open database file"; a name that ends in a separator,
    /// which SQLite would take for the file without it (created mode 0644,
    /// and beyond the server's file watch); or a device, a FIFO or a
    /// socket, which SQLite reports as "disk I/O error" or worse, and a
    /// FIFO blocks the commands that read its header.
    NotAFile(PathBuf, db::NotAFile),
    /// The database file was deleted or replaced while the server ran.
    DatabaseGone {
        path: PathBuf,
        what: &'static str,
    },
    /// SQLite's `-wal` or `-shm` file beside the database was deleted or
    /// replaced while the server ran.
    SideFileGone {
        path: PathBuf,
        what: &'static str,
    },
    /// stdout failed, other than by a reader that went away.
    Output(io::Error),
    /// `session new` could not write its token, so no one has it.
    TokenNotWritten {
        e: io::Error,
        revoked: bool,
    },
    Io(io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Database { path, source } => {
                write!(f, "{}: {source}", path.display())?;
                let what_to_do = match source {
                    db::Error::Damaged(_) => Some(doctor::SEE_DOCTOR),
                    other => other.what_to_do(),
                };
                match what_to_do {
                    Some(advice) => write!(f, "; {advice}"),
                    None => Ok(()),
                }
            }
            Error::DamagedFirst => f.write_str(
                "the file is damaged, so no orphan was deleted: a damaged index can hide a \
                 row's parent, and the row would be taken for an orphan; repair it first \
                 (`neptun-local doctor` says how)",
            ),
            Error::DamagedBeyondOpening { path, cause } => write!(
                f,
                "{}: the file is too damaged to be opened (sqlite: {cause}); {}",
                path.display(),
                db::MOVE_ASIDE_AND_RESTORE
            ),
            Error::NotADatabase(path) => write!(
                f,
                "{}: {}, and it was left as it was. Is --db right? If it names neptun-local's \
                 database, {}",
                path.display(),
                db::Error::NotADatabase,
                db::MOVE_ASIDE_AND_RESTORE
            ),
            Error::Bind { addr, source } => {
                write!(f, "cannot listen on {addr}: {source}")?;
                match source.kind() {
                    // Most often a server started earlier is still running.
                    io::ErrorKind::AddrInUse => {
                        write!(f, "; stop what runs there, or choose a port with --addr")?
                    }
                    // A missing or malformed port ("127.0.0.1", "x:99999").
                    io::ErrorKind::InvalidInput => {
                        write!(f, "; --addr takes HOST:PORT, for example {DEFAULT_ADDR}")?
                    }
                    _ => {}
                }
                Ok(())
            }
            Error::NotLoopback(addr) => write!(
                f,
                "{addr} is not a loopback address; pass --allow-remote to listen there \
                 (and put a TLS reverse proxy in front)"
            ),
            Error::Policy(why) => f.write_str(why),
            Error::Transport(e) => write!(f, "the HTTP server failed: {e}"),
            Error::Session(e) => e.fmt(f),
            Error::Backup(e) => e.fmt(f),
            Error::Restore(e) => e.fmt(f),
            Error::InvalidUserId(why) => write!(f, "invalid user id: {why}"),
            Error::MalformedToken => f.write_str("that is not a neptun-local session token"),
            Error::NoSuchSession => {
                f.write_str("no session has that token (already revoked or expired?)")
            }
            Error::Unhealthy(n) => write!(f, "the doctor found {n} problem(s)"),
            Error::NoDatabase(path) => {
                write!(f, "{}: no database file there", path.display())?;
                // A relative name is looked up in the working directory,
                // which may not be the one the server ran in: the default,
                // neptun.db, is one.
                if path.is_relative() {
                    if let Ok(dir) = std::env::current_dir() {
                        write!(f, " (in {}, the working directory)", dir.display())?;
                    }
                }
                f.write_str(advice_for(
                    path,
                    "; is --db right? `neptun-local serve` or `neptun-local user add` creates one",
                ))
            }
            Error::EmptyDatabaseFile(path) => write!(
                f,
                "{}: the file is empty, so it holds no database. {IF_IT_HELD_DATA}. \
                 `neptun-local serve` or `neptun-local user add` makes a new database there",
                path.display()
            ),
            Error::NoDirectory { path, dir } => write!(
                f,
                "{}: the directory {} does not exist{}",
                path.display(),
                dir.display(),
                advice_for(path, "; create it first, or choose another --db")
            ),
            Error::NotAFile(path, kind) => match kind.explain(path, "--db takes the database file")
            {
                Some(why) => f.write_str(&why),
                None => write!(
                    f,
                    "{}: that is a directory; --db takes the database file, for example {}",
                    path.display(),
                    path.join(DEFAULT_DB).display()
                ),
            },
            Error::DatabaseGone { path, what } => write!(
                f,
                "{}: the database file {what} while the server ran; start the server \
                 again to serve the file that is there now",
                path.display()
            ),
            Error::SideFileGone { path, what } => write!(
                f,
                "{}, which SQLite keeps beside the database while it is open, {what} while \
                 the server ran, so the server stopped; start it again, and leave that \
                 file alone while the database is in use (SQLite removes it when the last \
                 connection closes)",
                path.display()
            ),
            Error::Output(e) => write!(f, "cannot write to stdout: {e}"),
            Error::TokenNotWritten { e, revoked: true } => write!(
                f,
                "cannot write the token to stdout ({e}); the session was revoked, since no one has its token"
            ),
            Error::TokenNotWritten { e, revoked: false } => write!(
                f,
                "cannot write the token to stdout ({e}); the session it names stays until it expires"
            ),
            Error::Io(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for Error {}

impl Error {
    /// The process's exit status for this error: 130 for a command stopped
    /// by a signal, as shells report Ctrl+C; 1 for every other failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Backup(backup::Error::Stopped)
            | Error::Restore(restore::Error::Stopped | restore::Error::StoppedUnchecked) => 130,
            _ => 1,
        }
    }
}

/// Parses the command line, exiting with clap's message and code 2 on error.
/// Takes an empty `NEPTUN_*` variable as unset, which is what it means in
/// a compose file (`${NEPTUN_WORKERS}` of a variable that is not set) or a
/// unit (`Environment=NEPTUN_WORKERS=`). clap would read it as the value ""
/// and refuse it, naming only the flag.
///
/// # Safety
///
/// Changes the environment, so it must run before any thread starts (at the
/// top of `main`): no other thread may read the environment meanwhile.
pub unsafe fn forget_empty_environment_variables() {
    let empty: Vec<std::ffi::OsString> = std::env::vars_os()
        .filter(|(name, value)| {
            value.is_empty() && name.to_str().is_some_and(|n| n.starts_with("NEPTUN_"))
        })
        .map(|(name, _)| name)
        .collect();
    for name in empty {
        // SAFETY: the caller guarantees that no other thread runs.
        unsafe { std::env::remove_var(name) };
    }
}

pub fn parse() -> Cli {
    parse_from(std::env::args_os()).unwrap_or_else(|e| {
        // clap writes its errors itself, and the journal needs them with an
        // error's priority (a bad value in a unit's environment file).
        if e.use_stderr() && logging::stderr_is_journal() {
            logging::say_error(e.render().to_string());
            std::process::exit(e.exit_code());
        }
        e.exit()
    })
}

/// The ids of [`ServeArgs`]' options, as clap names them.
const SERVE_OPTIONS: [&str; 8] = [
    "addr",
    "workers",
    "busy_timeout",
    "demo",
    "synchronous",
    "allowed_hosts",
    "allow_origins",
    "allow_remote",
];

/// Parses `args`. Serve options may be written before `serve` as well as
/// after it (`neptun-local --addr X serve`), but not on both sides, and not
/// before another subcommand (`neptun-local --addr X user add U`), where
/// they would otherwise be silently ignored.
pub fn parse_from<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::parser::ValueSource;
    use clap::{ArgMatches, CommandFactory, FromArgMatches};

    let mut command = Cli::command();
    let matches = command.try_get_matches_from_mut(args)?;
    // As written on the command line: `allowed_hosts` is `--allowed-host`.
    let flags: Vec<(&str, String)> = command
        .get_arguments()
        .filter(|arg| SERVE_OPTIONS.contains(&arg.get_id().as_str()))
        .filter_map(|arg| Some((arg.get_id().as_str(), format!("--{}", arg.get_long()?))))
        .collect();
    let given = |matches: &ArgMatches| -> Vec<String> {
        flags
            .iter()
            .filter(|(id, _)| matches.value_source(id) == Some(ValueSource::CommandLine))
            .map(|(_, flag)| flag.clone())
            .collect()
    };
    let mut cli = Cli::from_arg_matches(&matches)?;
    let before = given(&matches);
    let Some((subcommand, sub_matches)) = matches.subcommand() else {
        return Ok(cli);
    };
    let Some(first) = before.first() else {
        return Ok(cli);
    };
    let message = if subcommand != "serve" {
        format!("{first} is a serve option and cannot be used with '{subcommand}'")
    } else if let Some(after) = given(sub_matches).first() {
        format!("{first} before 'serve' and {after} after it: write serve options on one side")
    } else {
        // `neptun-local --addr X serve` is `neptun-local --addr X`.
        cli.command = None;
        return Ok(cli);
    };
    Err(command.error(clap::error::ErrorKind::ArgumentConflict, message))
}

/// What to do about a database file found empty, which a server makes a
/// new database in and the other commands refuse.
const IF_IT_HELD_DATA: &str = "If it held data, something cut it to nothing: \
                               `neptun-local restore BACKUP` puts a backup in it, \
                               even while a server runs on it";

/// The advice that ends a message about a missing `--db`: `usual`, unless
/// `path` begins with a `~` that nothing expanded. A shell expands it only
/// at the start of a word (not in `--db=~/…`), and an environment file, a
/// systemd unit or a compose file never does.
fn advice_for(path: &Path, usual: &'static str) -> &'static str {
    if path.components().next() == Some(Component::Normal("~".as_ref())) {
        ": nothing expanded the ~ to a home directory; write the full path"
    } else {
        usual
    }
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<(), Error> {
    logging::init(cli.log_level);
    ignore_file_size_signal();
    // Before anything opens it: every command would stumble on it in
    // its own way, and a reading one could block on a FIFO.
    if let Some(kind) = db::not_a_file(&cli.db) {
        return Err(Error::NotAFile(cli.db.clone(), kind));
    }
    // Serving, adding a user and restoring create the file if it is
    // missing; SQLite would refuse a missing directory with only "unable to
    // open database file".
    let open = |settings: &db::Settings| {
        // Or, for a link, where it leads.
        let target = db::resolved_path(&cli.db);
        let dir = target.parent().filter(|d| !d.as_os_str().is_empty());
        if let Some(dir) = dir.filter(|d| !d.exists()) {
            return Err(Error::NoDirectory {
                path: cli.db.clone(),
                dir: dir.to_owned(),
            });
        }
        Database::open(&cli.db, settings).map_err(|source| failed_to_open(&cli.db, source))
    };
    // The other commands read or change what is there: run on a mistyped
    // path, they would create an empty file and report on it. Nor do they
    // make a database in an empty file: it may be one that lost its data
    // (to a failed copy, say), which `doctor` must report, not mend.
    let open_existing = || {
        if !cli.db.exists() {
            return Err(Error::NoDatabase(cli.db.clone()));
        }
        if db::is_empty_file(&cli.db) {
            return Err(Error::EmptyDatabaseFile(cli.db.clone()));
        }
        open(&db::Settings::default())
    };
    let db_error = db_error(&cli.db);
    // The listings only read: see `reading` for how they open the file.
    let list = |query: &dyn Fn(&Connection) -> db::Result<String>| {
        let reading = reading::open(&cli.db, open_existing)?;
        let text = reading.read(query).and_then(|text| text);
        print_result(&text.map_err(db_error)?)
    };
    match cli.command {
        None => serve(&cli.db, &cli.serve, open),
        Some(Command::Serve(ref args)) => serve(&cli.db, args, open),
        Some(Command::User(UserCommand::Add { ref id, ref name })) => {
            check_user_id(id)?;
            open(&db::Settings::default())?
                .add_user(id, name.as_deref())
                .map_err(db_error)?;
            tell(format_args!("added user {id:?}"));
            Ok(())
        }
        Some(Command::User(UserCommand::Remove { ref id, with_chats })) => {
            let db = open_existing()?;
            let removed = db.remove_user(id, with_chats).map_err(db_error)?;
            tell(format_args!(
                "removed user {id:?}, its {} chat(s) and {} session(s)",
                removed.chats, removed.sessions
            ));
            erase_now(&db);
            Ok(())
        }
        Some(Command::User(UserCommand::List)) => {
            list(&|conn| Ok(users_table(&db::listings::users(conn, auth::now_unix())?)))
        }
        Some(Command::Session(SessionCommand::New { ref user_id, ttl })) => {
            let db = open_existing()?;
            let token = auth::new_session(&db, user_id, ttl).map_err(|e| match e {
                // Named with the file, as the other commands' database errors are.
                auth::NewSessionError::Db(source) => db_error(source),
                random => Error::Session(random),
            })?;
            write_stdout(&format!("{}\n", token.expose())).map_err(|e| {
                // No one has the token: the session would only wait to expire.
                let revoked = db.delete_session(&token.hash()).is_ok_and(|gone| gone);
                Error::TokenNotWritten { e, revoked }
            })
        }
        Some(Command::Session(SessionCommand::Revoke {
            ref token,
            ref user,
        })) => match (token, user) {
            (_, Some(user_id)) => {
                let revoked = open_existing()?
                    .delete_sessions_of(user_id)
                    .map_err(db_error)?;
                tell(format_args!(
                    "revoked {revoked} session(s) of user {user_id:?}"
                ));
                Ok(())
            }
            (Some(token), None) => {
                let token = read_token_argument(token)?;
                let db = open_existing()?;
                if db.delete_session(&token.hash()).map_err(db_error)? {
                    tell(format_args!("session revoked"));
                    Ok(())
                } else {
                    Err(Error::NoSuchSession)
                }
            }
            (None, None) => unreachable!("clap requires a token or --user"),
        },
        Some(Command::Session(SessionCommand::List { ref user_id })) => list(&|conn| {
            let sessions = db::listings::sessions(conn, user_id)?;
            Ok(sessions_table(&sessions, auth::now_unix()))
        }),
        Some(Command::Session(SessionCommand::Prune)) => {
            let db = open_existing()?;
            let pruned = db.prune_sessions(auth::now_unix()).map_err(db_error)?;
            print_result(&format!("pruned {pruned} expired session(s)\n"))
        }
        Some(Command::Chat(ChatCommand::List { ref user_id })) => {
            list(&|conn| Ok(chats_table(&db::listings::chats(conn, user_id)?)))
        }
        Some(Command::Chat(ChatCommand::Add {
            ref user_id,
            ref name,
            ref model,
            messages,
        })) => {
            let id = open_existing()?
                .add_chat(user_id, name, model, messages)
                .map_err(db_error)?;
            print_result(&format!("{id}\n"))
        }
        Some(Command::Doctor {
            reindex,
            delete_orphans,
        }) => file_commands::doctor(&cli.db, reindex, delete_orphans, &open_existing),
        Some(Command::Backup { ref out }) => file_commands::backup(&cli.db, out, &open_existing),
        Some(Command::Restore {
            ref backup,
            replace,
        }) => file_commands::restore(&cli.db, backup, replace, open),
    }
}

/// Why the database at `path` could not be opened, as every command says
/// it: damage that keeps SQLite from opening the file, or a file it does
/// not know for a database, comes with what to do about it.
fn failed_to_open(path: &Path, source: db::Error) -> Error {
    match source {
        db::Error::Damaged(cause) => Error::DamagedBeyondOpening {
            path: path.to_owned(),
            cause,
        },
        db::Error::NotADatabase => Error::NotADatabase(path.to_owned()),
        source => Error::Database {
            path: path.to_owned(),
            source,
        },
    }
}

/// A database error of the file at `path`, as the commands report it.
fn db_error(path: &Path) -> impl Fn(db::Error) -> Error + Copy + '_ {
    move |source| Error::Database {
        path: path.to_owned(),
        source,
    }
}

/// Clears what a command deleted or replaced from the files: a running
/// server would do so within a second or so, but none may be running.
fn erase_now(db: &Database) {
    let long = |mib| {
        tell(format_args!(
            "giving the {mib} MiB now free back to the file system"
        ))
    };
    match maintenance::erase_now(db, long) {
        Ok(true) => {}
        Ok(false) => tell(format_args!(
            "a reader held the WAL; a running server clears it once the reader is \
             done, or the next start does"
        )),
        Err(e) => tell(format_args!("could not checkpoint the WAL now: {e}")),
    }
}

/// Under a file-size limit (`ulimit -f`), a write past it sends SIGXFSZ,
/// which by default kills the process. Ignored, the write fails with EFBIG
/// instead: a request gets an error answer and the server keeps running
/// until the limit is lifted; a command (a backup, say) says what failed and
/// removes what it wrote; nothing is half-written.
#[cfg(unix)]
fn ignore_file_size_signal() {
    // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

/// Windows has no such signal: a write past a quota just fails.
#[cfg(not(unix))]
fn ignore_file_size_signal() {}

/// Writes a command's result on stdout. A reader that has gone (`| head
/// -1`) took what it wanted, so a broken pipe ends the output quietly;
/// `print!` would panic.
fn print_result(text: &str) -> Result<(), Error> {
    match write_stdout(text) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(Error::Output(e)),
        _ => Ok(()),
    }
}

fn write_stdout(text: &str) -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()
}

/// A line on stderr for the person who ran the command, after the log
/// lines before it. If stderr is gone there is no one to tell, which is no
/// reason to fail (`eprintln!` would panic).
pub fn tell(message: fmt::Arguments) {
    logging::say(format!("{message}\n"));
}

fn check_user_id(id: &str) -> Result<(), Error> {
    if id.is_empty() {
        Err(Error::InvalidUserId("it is empty"))
    } else if id.chars().count() > 256 {
        Err(Error::InvalidUserId("it is longer than 256 characters"))
    } else if id.trim() != id {
        Err(Error::InvalidUserId("it begins or ends with white space"))
    } else if id.chars().any(char::is_control) {
        Err(Error::InvalidUserId("it contains control characters"))
    } else if id == "." || id == ".." {
        Err(Error::InvalidUserId(
            "\".\" and \"..\" cannot appear in a URL path",
        ))
    } else {
        Ok(())
    }
}

fn read_token_argument(argument: &str) -> Result<Token, Error> {
    let text = if argument == "-" {
        let stdin = io::stdin();
        // Typed or pasted at a terminal: without a word, the command would
        // seem to hang.
        if stdin.is_terminal() {
            logging::say("session token (paste it, then press Enter): ".to_owned());
        }
        let mut line = String::new();
        stdin.lock().read_line(&mut line).map_err(Error::Io)?;
        line.trim().to_owned()
    } else {
        argument.to_owned()
    };
    Token::parse(&text).ok_or(Error::MalformedToken)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// `--help` shows a bare `<USER_ID>` for an argument without a doc
    /// comment; six had none.
    #[test]
    fn every_command_and_argument_says_what_it_is() {
        fn undocumented(command: &clap::Command, path: &str, found: &mut Vec<String>) {
            for arg in command.get_arguments() {
                let builtin = ["help", "version"].contains(&arg.get_id().as_str());
                if arg.get_help().is_none() && !builtin {
                    found.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in command.get_subcommands() {
                let path = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() {
                    found.push(path.clone());
                }
                undocumented(sub, &path, found);
            }
        }
        let mut found = Vec::new();
        undocumented(&Cli::command(), "neptun-local", &mut found);
        assert_eq!(found, Vec::<String>::new());
    }

    #[test]
    fn no_subcommand_means_serve_and_options_apply() {
        let cli = parse_from(["neptun-local", "--addr", "127.0.0.1:0", "--workers", "2"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(
            (cli.serve.addr.as_str(), cli.serve.workers),
            ("127.0.0.1:0", 2)
        );
        assert!(parse_from(["neptun-local", "--workers", "0"]).is_err());
    }

    #[test]
    fn serve_options_before_another_subcommand_are_refused_but_globals_are_not() {
        assert!(parse_from(["neptun-local", "--addr", "x", "user", "add", "u"]).is_err());
        let err = parse_from(["neptun-local", "--allowed-host", "h", "doctor"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--allowed-host is a serve option"), "{err}");
        assert!(parse_from(["neptun-local", "--demo", "doctor"]).is_err());
        let cli = parse_from(["neptun-local", "--db", "x.db", "user", "add", "u"]).unwrap();
        assert_eq!(cli.db, std::path::Path::new("x.db"));
        let cli = parse_from(["neptun-local", "session", "new", "u", "--db", "y.db"]).unwrap();
        assert_eq!(cli.db, std::path::Path::new("y.db"));
        let cli = parse_from(["neptun-local", "serve", "--demo"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Serve(ServeArgs { demo: true, .. }))
        ));
    }

    #[test]
    fn serve_options_names_every_serve_argument() {
        let serve = ServeArgs::augment_args(clap::Command::new("serve"));
        let mut ids: Vec<&str> = serve.get_arguments().map(|a| a.get_id().as_str()).collect();
        ids.sort_unstable();
        let mut listed = SERVE_OPTIONS.to_vec();
        listed.sort_unstable();
        assert_eq!(ids, listed);
    }

    #[test]
    fn serve_options_apply_before_serve_but_not_on_both_sides_of_it() {
        let cli = parse_from(["neptun-local", "--addr", "127.0.0.1:0", "--demo", "serve"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.serve.addr, "127.0.0.1:0");
        assert!(cli.serve.demo);

        let err = parse_from([
            "neptun-local",
            "--addr",
            "127.0.0.1:0",
            "serve",
            "--workers",
            "2",
        ])
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("--addr before 'serve' and --workers after it"),
            "{err}"
        );
    }
}
