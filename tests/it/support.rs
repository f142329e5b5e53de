//! Test support: a real `neptun-local` process on `127.0.0.1:0` with its own
//! temporary database, a small HTTP/1.1 client over `TcpStream`, fixtures
//! written through the library, and database consistency checks.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rusqlite::OptionalExtension;

use neptun_local::auth::{self, Token};
/// Every test names the database's files as the server does.
pub use neptun_local::db::database_files;
use neptun_local::db::{self, Actor, Database, NewFile, NewSession};

const BIN: &str = env!("CARGO_BIN_EXE_neptun-local");

/// The binary under test, without the developer's own `NEPTUN_*` settings
/// (with `NEPTUN_LOG=off` exported, dozens of tests that read the log
/// failed): each test passes the settings it is about.
pub fn neptun_local() -> Command {
    neptun_local_under(&[])
}

/// [`neptun_local`] run through `wrapper`, a command that runs the rest of
/// its arguments (`nohup`, say). The child starts with SIGHUP heard, as
/// from a terminal, even when the tests run under `nohup`, since tests
/// stop servers with it.
pub fn neptun_local_under(wrapper: &[&str]) -> Command {
    let mut command = match wrapper {
        [] => Command::new(BIN),
        [program, args @ ..] => {
            let mut command = Command::new(program);
            command.args(args).arg(BIN);
            command
        }
    };
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("NEPTUN_") {
            command.env_remove(name);
        }
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: signal(2) is async-signal-safe, and sets a disposition the
        // child inherits across exec.
        unsafe {
            command.pre_exec(|| {
                libc::signal(libc::SIGHUP, libc::SIG_DFL);
                Ok(())
            });
        }
    }
    command
}

const START_TIMEOUT: Duration = Duration::from_secs(20);
const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// A running server process. Stopped (SIGTERM, then SIGKILL) when dropped;
/// if the test is failing, its stderr is printed to help the diagnosis.
pub struct TestServer {
    child: Option<Child>,
    /// Whatever the server prints on stdout after its listening line.
    later_stdout: Option<std::thread::JoinHandle<Vec<String>>>,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub db_path: PathBuf,
    stderr_path: PathBuf,
}

impl TestServer {
    pub fn start() -> TestServer {
        TestServer::start_with(&[])
    }

    /// Starts the binary with `extra` arguments on a fresh database.
    pub fn start_with(extra: &[&str]) -> TestServer {
        TestServer::start_under(&[], extra)
    }

    /// [`TestServer::start_with`], through `wrapper` (see
    /// [`neptun_local_under`]).
    pub fn start_under(wrapper: &[&str], extra: &[&str]) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let db_path = dir.path().join("neptun.db");
        TestServer::launch(wrapper, dir, db_path, extra)
    }

    /// Starts the binary on `db_path` (which may already hold data).
    pub fn start_in(dir: tempfile::TempDir, db_path: PathBuf, extra: &[&str]) -> TestServer {
        TestServer::launch(&[], dir, db_path, extra)
    }

    fn launch(
        wrapper: &[&str],
        dir: tempfile::TempDir,
        db_path: PathBuf,
        extra: &[&str],
    ) -> TestServer {
        let stderr_path = dir.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let default_addr: &[&str] = if extra.contains(&"--addr") {
            &[]
        } else {
            &["--addr", "127.0.0.1:0"]
        };
        let mut child = spawn(
            neptun_local_under(wrapper)
                .args(default_addr)
                .arg("--db")
                .arg(&db_path)
                .args(extra)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(stderr),
        );
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let later_stdout = std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next().and_then(Result::ok);
            let _ = tx.send(first);
            lines.map_while(Result::ok).collect()
        });
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(Some(line)) => line,
            other => {
                let _ = child.kill();
                panic!(
                    "server did not print its listening line ({other:?}); stderr:\n{}",
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                );
            }
        };
        let addr = line
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap();
        TestServer {
            child: Some(child),
            later_stdout: Some(later_stdout),
            addr,
            dir,
            db_path,
            stderr_path,
        }
    }

    /// Opens the server's database through the library (a second process
    /// writing to the same WAL file, exactly as the CLI would).
    pub fn db(&self) -> Database {
        Database::open(&self.db_path, &db::Settings::default()).unwrap()
    }

    /// A plain SQLite connection to the server's database, for raw checks.
    pub fn sql(&self) -> rusqlite::Connection {
        let conn = rusqlite::Connection::open(&self.db_path).unwrap();
        conn.busy_timeout(IO_TIMEOUT).unwrap();
        conn
    }

    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
        request(self.addr, method, path, headers)
    }

    /// `DELETE path` with the session cookie set to `token`.
    pub fn delete(&self, path: &str, token: &str) -> HttpResponse {
        let cookie = format!("neptun-session={token}");
        self.request("DELETE", path, &[("Cookie", &cookie)])
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap()
    }

    /// The server's stderr once it holds every one of `needles`. The server
    /// writes its log lines from a thread of its own, so a request's line
    /// may come just after its answer.
    pub fn log_with(&self, needles: &[&str]) -> String {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            let log = self.stderr();
            if needles.iter().all(|needle| log.contains(needle)) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "not all of {needles:?} in the log within {IO_TIMEOUT:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The log once `needle` occurs in it `count` times: the log's thread
    /// may write a request's line after its answer has gone out.
    pub fn log_with_count(&self, needle: &str, count: usize) -> String {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            let log = self.stderr();
            if log.matches(needle).count() >= count {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "not {count} of {needle:?} in the log within {IO_TIMEOUT:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Kills the server (SIGKILL: no chance to clean up) and returns its
    /// directory, to start another on the same files.
    pub fn kill(mut self) -> tempfile::TempDir {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    /// Stops the server (asserting a clean exit) and starts a new one on the
    /// same database with `extra` arguments.
    #[cfg(unix)]
    pub fn restart(mut self, extra: &[&str]) -> TestServer {
        let mut child = self.child.take().unwrap();
        signal(child.id(), libc::SIGTERM);
        let status = wait_with_deadline(&mut child);
        assert!(status.success(), "exit status {status:?}");
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        TestServer::start_in(dir, self.db_path.clone(), extra)
    }

    /// Sends SIGTERM, waits for the process to exit, and returns its exit
    /// status and anything it printed on stdout after the listening line.
    #[cfg(unix)]
    pub fn stop(self) -> Stopped {
        signal(self.pid(), libc::SIGTERM);
        self.wait_for_exit()
    }

    /// Waits (without signalling) for the process to exit; returns like `stop`.
    pub fn wait_for_exit(mut self) -> Stopped {
        let mut child = self.child.take().unwrap();
        let status = wait_with_deadline(&mut child);
        let later_stdout = self.later_stdout.take().unwrap().join().unwrap();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        Stopped {
            status,
            later_stdout,
            dir,
        }
    }
}

pub fn wait_with_deadline(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("server did not exit within {IO_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The C library's words for the OS error `code` (`strerror`), as the
/// server's messages quote them: glibc and musl word some of them
/// differently ("File name too long" and "Filename too long").
pub fn os_error_text(code: i32) -> String {
    let text = std::io::Error::from_raw_os_error(code).to_string();
    match text.strip_suffix(&format!(" (os error {code})")) {
        Some(words) => words.to_owned(),
        None => text,
    }
}

#[cfg(unix)]
pub fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if std::thread::panicking() {
                eprintln!("--- server stderr ---\n{}", self.stderr());
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What is left of a stopped server.
pub struct Stopped {
    pub status: ExitStatus,
    /// Whatever it printed on stdout after its listening line.
    pub later_stdout: Vec<String>,
    /// Its directory, database included.
    pub dir: tempfile::TempDir,
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.text()))
    }

    /// Asserts the contract's error shape and returns the message.
    pub fn assert_error(&self, status: u16, status_message: &str) -> String {
        assert_eq!(self.status, status, "body: {}", self.text());
        assert_eq!(self.header("Content-Type"), Some("application/json"));
        assert_eq!(self.header("Cache-Control"), Some("no-store"));
        let body = self.json();
        let object = body.as_object().expect("error body is an object");
        assert_eq!(
            object.keys().collect::<Vec<_>>(),
            ["statusCode", "statusMessage", "data"],
            "{body}"
        );
        assert_eq!(body["statusCode"], status);
        assert_eq!(body["statusMessage"], status_message);
        assert_eq!(body["data"].as_object().unwrap().len(), 1, "{body}");
        body["data"]["message"]
            .as_str()
            .expect("data.message is a string")
            .to_owned()
    }

    pub fn assert_true(&self) {
        assert_eq!(self.status, 200, "body: {}", self.text());
        assert_eq!(self.header("Content-Type"), Some("application/json"));
        assert_eq!(self.header("Cache-Control"), Some("no-store"));
        assert_eq!(self.text(), "true");
    }
}

/// Sends one request with `Connection: close` and reads the whole answer.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> HttpResponse {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        raw.push_str(&format!("{name}: {value}\r\n"));
    }
    raw.push_str("\r\n");
    parse_response(&send_raw(addr, raw.as_bytes()), method == "HEAD")
        .unwrap_or_else(|| panic!("no valid response to {method} {path}"))
}

/// Writes `bytes` and reads until the server closes the connection.
pub fn send_raw(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    try_send_raw(addr, bytes).expect("the server answered in time")
}

fn try_send_raw(addr: SocketAddr, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.write_all(bytes)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    Ok(answer)
}

/// Like `TestServer::delete`, but `None` instead of a panic when the server
/// is gone or does not answer (for tests that kill it).
pub fn try_delete(addr: SocketAddr, path: &str, token: &str) -> Option<HttpResponse> {
    let raw = format!(
        "DELETE {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Cookie: neptun-session={token}\r\n\r\n"
    );
    parse_response(&try_send_raw(addr, raw.as_bytes()).ok()?, false)
}

/// Reads exactly one response (head and Content-Length body) off a
/// keep-alive connection, leaving the stream at the start of the next one.
pub fn read_response(stream: &mut BufReader<TcpStream>) -> std::io::Result<HttpResponse> {
    let head = read_head(stream)?;
    let length = head
        .header("Content-Length")
        .map_or(Ok(0), str::parse)
        .map_err(|_| std::io::ErrorKind::InvalidData)?;
    let mut body = vec![0; length];
    stream.read_exact(&mut body)?;
    Ok(HttpResponse { body, ..head })
}

/// Reads the status line and headers of one response (all there is of an
/// answer to HEAD) off a keep-alive connection.
pub fn read_head(stream: &mut BufReader<TcpStream>) -> std::io::Result<HttpResponse> {
    let mut raw = Vec::new();
    while !raw.ends_with(b"\r\n\r\n") {
        if stream.read_until(b'\n', &mut raw)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    parse_response(&raw, true).ok_or_else(|| std::io::ErrorKind::InvalidData.into())
}

/// Parses one response (status line, headers, Content-Length body; no body
/// at all when answering HEAD). `None` if it is incomplete or malformed.
pub fn parse_response(raw: &[u8], head_request: bool) -> Option<HttpResponse> {
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..head_end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let body_start = head_end + 4;
    if head_request {
        return Some(HttpResponse {
            status,
            headers,
            body: Vec::new(),
        });
    }
    let length = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("Content-Length"))
        .map_or(raw.len() - body_start, |(_, v)| v.parse().unwrap());
    let body = raw.get(body_start..body_start + length)?.to_vec();
    Some(HttpResponse {
        status,
        headers,
        body,
    })
}

/// Spawns `command` and waits for its "listening on" line.
pub fn spawn_listening(mut command: Command) -> (Child, SocketAddr) {
    let mut child = spawn(&mut command);
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap()
        .parse()
        .unwrap();
    (child, addr)
}

/// Spawns `command`. Under Wine, CreateProcess failed once with
/// ERROR_INTERNAL_ERROR (1359) while the suite ran in parallel, and the
/// same spawn succeeded when the test was run again: a Wine hiccup, so that
/// one error gets one more try there.
pub fn spawn(command: &mut Command) -> Child {
    match command.spawn() {
        #[cfg(windows)]
        Err(e) if e.raw_os_error() == Some(1359) => {
            std::thread::sleep(Duration::from_millis(100));
            command.spawn().unwrap()
        }
        result => result.unwrap(),
    }
}

/// Runs the binary with `args` on `db_path` and returns its output.
pub fn run_cli(db_path: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = spawn(
        neptun_local()
            .arg("--db")
            .arg(db_path)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

/// `command`, run as nobody if the tests run as root, whom no file mode
/// stops: so that a directory of mode 0555 is closed to it, as it is to
/// any other user. Whatever it reads must be open to others.
#[cfg(unix)]
pub fn without_root(command: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: geteuid cannot fail and has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        command.uid(65534).gid(65534);
    }
    command
}

/// Runs a command as [`run_cli`] does (with no stdin), but with no file
/// of its own allowed to grow past `bytes` (`ulimit -f`): the way a test
/// fills the disk under one process. It must end within [`IO_TIMEOUT`]
/// (`serve` that does not fail would run on).
#[cfg(unix)]
pub fn run_cli_with_file_size_limit(db_path: &Path, args: &[&str], bytes: u64) -> Output {
    use std::os::unix::process::CommandExt;

    let mut command = cli_command(db_path, args);
    // SAFETY: setrlimit is async-signal-safe, and the closure allocates nothing.
    unsafe {
        command.pre_exec(move || {
            let file_size = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: libc::RLIM_INFINITY,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &file_size) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    output_within_deadline(command, args)
}

/// Runs the CLI with `args` on `db_path`, as [`run_cli`] with no input, but
/// fails the test if it has not ended within [`IO_TIMEOUT`]: for a command
/// that may block.
pub fn run_cli_within_deadline(db_path: &Path, args: &[&str]) -> Output {
    output_within_deadline(cli_command(db_path, args), args)
}

/// The CLI with `args` on `db_path`, with no input.
fn cli_command(db_path: &Path, args: &[&str]) -> Command {
    let mut command = neptun_local();
    command
        .arg("--db")
        .arg(db_path)
        .args(args)
        .stdin(Stdio::null());
    command
}

fn output_within_deadline(mut command: Command, args: &[&str]) -> Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + IO_TIMEOUT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{args:?} still ran after {IO_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// What a finished command wrote on stderr.
pub fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every row id that belongs to one seeded chat, table by table.
#[derive(Debug, Clone)]
pub struct SeededChat {
    pub chat: i64,
    pub messages: Vec<i64>,
    pub files: Vec<i64>,
    pub share: i64,
    pub whitelist_entries: Vec<i64>,
}

/// A new database at `path`, made through the commands: alice and her
/// chat named `chat`.
pub fn alice_with_a_chat(path: &Path, chat: &str) {
    for args in [
        &["user", "add", "alice"][..],
        &["chat", "add", "alice", chat],
    ] {
        let out = run_cli(path, args, None);
        assert!(out.status.success(), "{args:?}: {}", stderr_of(&out));
    }
}

/// Adds 150,000 messages of 200 bytes to the newest chat: about 30 MB, so
/// that a backup or a restore of the file takes long enough to be stopped.
#[cfg(unix)]
pub fn add_30_mb_to_the_last_chat(conn: &rusqlite::Connection) {
    add_messages_to_the_last_chat(conn, 150_000, 200);
}

/// Adds `count` messages of `bytes` bytes each to the newest chat, in one
/// statement.
pub fn add_messages_to_the_last_chat(conn: &rusqlite::Connection, count: u32, bytes: u32) {
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
         INSERT INTO messages (chat_id, actor, message)
         SELECT (SELECT max(id) FROM chats), 'user', printf('%.*c', ?2, 'x') FROM n",
        [count, bytes],
    )
    .unwrap();
}

pub fn add_user(db: &Database, id: &str) {
    db.add_user(id, Some("Test User")).unwrap();
}

/// The usual cast: a server started with `args`, users alice and bob, and a
/// session token for alice.
pub fn start_with_alice_and_bob(args: &[&str]) -> (TestServer, Database, String) {
    let server = TestServer::start_with(args);
    let db = server.db();
    add_user(&db, "alice");
    add_user(&db, "bob");
    let token = login(&db, "alice");
    (server, db, token)
}

/// Mints a session through the library (the same code the CLI uses).
pub fn login(db: &Database, user: &str) -> String {
    auth::new_session(db, user, auth::DEFAULT_SESSION_TTL)
        .unwrap()
        .expose()
        .to_owned()
}

/// Stores a session whose expiry is already past.
pub fn expired_session(db: &Database, user: &str) -> String {
    let token = Token::generate().unwrap();
    let now = auth::now_unix();
    db.add_session(&NewSession {
        token_hash: token.hash(),
        user_id: user,
        created_at: now - 100,
        expires_at: now - 1,
    })
    .unwrap();
    token.expose().to_owned()
}

/// A chat for `user` with three messages, two files (one tied to a message),
/// and a protected share whitelisting `friend`.
pub fn seed_chat(db: &Database, user: &str, friend: &str) -> SeededChat {
    db.write(|tx| {
        let chat = db::insert_chat(tx, user, "a chat", "test-model")?;
        let messages = vec![
            db::insert_message(tx, chat, Actor::User, "hello")?,
            db::insert_message(tx, chat, Actor::Assistant, "hi there")?,
            db::insert_message(tx, chat, Actor::User, "bye")?,
        ];
        let files = vec![
            db::insert_file(
                tx,
                &NewFile {
                    chat_id: chat,
                    message_id: Some(messages[0]),
                    name: "a.txt",
                    mime_type: "text/plain",
                    content: b"attached to a message",
                },
            )?,
            db::insert_file(
                tx,
                &NewFile {
                    chat_id: chat,
                    message_id: None,
                    name: "b.bin",
                    mime_type: "application/octet-stream",
                    content: &[0, 1, 2, 3],
                },
            )?,
        ];
        let share = db::insert_share(tx, chat, &format!("share-{chat}"), true)?;
        db::insert_share_whitelist_entry(tx, share, friend)?;
        let whitelist_entries = vec![tx.last_insert_rowid()];
        Ok(SeededChat {
            chat,
            messages,
            files,
            share,
            whitelist_entries,
        })
    })
    .unwrap()
}

/// How many of a seeded chat's rows remain, table by table.
pub fn remaining_rows(
    conn: &rusqlite::Connection,
    chat: &SeededChat,
) -> [(&'static str, usize); 5] {
    // Row ids other than chat ids can be reused after a delete, so a row
    // counts only if it still hangs off this chat.
    let count = |sql: &str, ids: &[i64]| -> usize {
        ids.iter()
            .filter(|id| {
                conn.query_row(sql, [**id, chat.chat], |_| Ok(()))
                    .optional()
                    .unwrap()
                    .is_some()
            })
            .count()
    };
    [
        ("chats", count("SELECT 1 FROM chats WHERE id = ?1 AND id = ?2", &[chat.chat])),
        ("messages", count("SELECT 1 FROM messages WHERE id = ?1 AND chat_id = ?2", &chat.messages)),
        ("chat_files", count("SELECT 1 FROM chat_files WHERE id = ?1 AND chat_id = ?2", &chat.files)),
        ("chat_shares", count("SELECT 1 FROM chat_shares WHERE id = ?1 AND chat_id = ?2", &[chat.share])),
        (
            "chat_share_whitelist_entries",
            count(
                "SELECT 1 FROM chat_share_whitelist_entries AS w JOIN chat_shares AS s ON s.id = w.share_id
                 WHERE w.id = ?1 AND s.chat_id = ?2",
                &chat.whitelist_entries,
            ),
        ),
    ]
}

pub fn assert_fully_present(conn: &rusqlite::Connection, chat: &SeededChat) {
    assert_eq!(
        remaining_rows(conn, chat),
        [
            ("chats", 1),
            ("messages", chat.messages.len()),
            ("chat_files", chat.files.len()),
            ("chat_shares", 1),
            ("chat_share_whitelist_entries", chat.whitelist_entries.len()),
        ]
    );
}

pub fn assert_fully_gone(conn: &rusqlite::Connection, chat: &SeededChat) {
    assert_eq!(
        remaining_rows(conn, chat),
        [
            ("chats", 0),
            ("messages", 0),
            ("chat_files", 0),
            ("chat_shares", 0),
            ("chat_share_whitelist_entries", 0),
        ]
    );
}

/// The first column of every row that `sql` returns.
pub fn column<T: rusqlite::types::FromSql>(conn: &rusqlite::Connection, sql: &str) -> Vec<T> {
    conn.prepare(sql)
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// The bytes of the file at `db_path` that hold the first page of the
/// table or index `name`. Checkpoints first, so that the file itself holds
/// every page and no WAL frame hides an edit to it; no other connection
/// may have the file open.
pub fn first_page_of(db_path: &Path, name: &str) -> std::ops::Range<usize> {
    let sql = rusqlite::Connection::open(db_path).unwrap();
    sql.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap();
    let page_size: u32 = sql.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
    let page: u32 = sql
        .query_row(
            "SELECT rootpage FROM sqlite_schema WHERE name = ?1",
            [name],
            |r| r.get(0),
        )
        .unwrap();
    let start = (page as usize - 1) * page_size as usize;
    start..start + page_size as usize
}

/// Overwrites the first page of each named table or index with bytes that
/// are no b-tree page: what a bad sector or a torn copy leaves.
pub fn damage(db_path: &Path, names: &[&str]) {
    let pages: Vec<_> = names.iter().map(|n| first_page_of(db_path, n)).collect();
    let mut file = std::fs::read(db_path).unwrap();
    for page in pages {
        file[page].fill(0xFF);
    }
    std::fs::write(db_path, file).unwrap();
}

/// `integrity_check` is ok and `foreign_key_check` finds nothing.
pub fn assert_consistent(conn: &rusqlite::Connection) {
    let integrity: Vec<String> = column(conn, "PRAGMA integrity_check");
    assert_eq!(integrity, ["ok"]);
    let violations: Vec<String> = column(conn, "PRAGMA foreign_key_check");
    assert!(
        violations.is_empty(),
        "foreign key violations in {violations:?}"
    );
}

/// The one line of `log` that contains `needle`.
pub fn log_line<'a>(log: &'a str, needle: &str) -> &'a str {
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(needle)).collect();
    assert_eq!(lines.len(), 1, "one line with {needle:?} in:\n{log}");
    lines[0]
}
