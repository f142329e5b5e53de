//! The load benchmark: `cargo bench --bench load [-- --quick] [--chats N]
//! [--messages M] [--out DIR]`.
//!
//! In one run it:
//! 1. seeds a database through the project's own `db` functions;
//! 2. measures the in-process limit: the project's `Database::delete_chat`,
//!    its pragmas (synchronous=FULL) and its maintenance thread, one thread,
//!    no HTTP; then the same from 8, 16 and 64 threads, which the group
//!    commit serves together, so that each HTTP phase can be set beside
//!    what the database alone does at that concurrency; and 8 threads
//!    once more with the maintenance thread held back until the phase
//!    ends, which shows what upkeep adds to the latency at 8;
//! 3. starts the real `neptun-local` binary and drives it over keep-alive
//!    HTTP/1.1 at 1, 8 and 64 connections, every request deleting a
//!    distinct existing chat, then the 401 path at 8 connections; each
//!    phase starts once the server's upkeep is done with the one before;
//! 4. prints a table (req/s, ratio to the in-process limit, client-measured
//!    p50/p99/max latency, starved connections, lost responses, answers
//!    with the wrong status (non-2xx; on the 401 path, non-401),
//!    reconnects after `Connection: close`, CPU time per request of the
//!    serving process, server peak RSS) and writes it, with every latency,
//!    to `--out`;
//! 5. measures how the delete scales, in-process on fresh databases: with
//!    and without 1M unrelated messages, and with chats of 10 to 100,000
//!    messages.
//!
//! `--quick`, which is also what `cargo test --all-targets` runs, uses a
//! small database and fails (exit 1) unless the run was correct: every chat
//! deleted exactly once, every delete answered 200, and in every phase no
//! response lost (a request unanswered for 30 s) and no connection starved
//! (a first answer slower than 1 s); nothing left behind. It checks
//! correctness, not speed. Figures depend on the machine: compare ratios
//! from one run, not numbers across machines.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use neptun_local::auth;
use neptun_local::db::{self, Actor, Database};
use neptun_local::maintenance::{Maintenance, Pacing};

const USER: &str = "bench";
/// A connection whose first answer takes longer than this was starved.
const STARVED_AFTER: Duration = Duration::from_secs(1);
/// A request unanswered for this long is counted as lost.
const LOST_AFTER: Duration = Duration::from_secs(30);
/// The keep-alive connections of the HTTP phases.
const CONNECTIONS: [usize; 3] = [1, 8, 64];
/// The in-process phases beyond the single-thread limit: the HTTP phases'
/// 8 and 64 threads, and the server's default 16 workers (the most deletes
/// that one of its commits can carry). Set beside the HTTP phases, they
/// tell what the database costs from what HTTP adds. 8 threads also run
/// without upkeep: the concurrency of the latency target (p99 under 2 ms
/// at 8 connections).
const IN_PROCESS_PHASES: [(usize, Upkeep); 4] = [
    (8, Upkeep::During),
    (8, Upkeep::After),
    (16, Upkeep::During),
    (64, Upkeep::During),
];

struct Options {
    quick: bool,
    chats: usize,
    messages: usize,
    out: PathBuf,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this
    // binary without it, with libtest's arguments, for the quick run.
    if !args.iter().any(|a| a == "--bench") {
        if !selected_as_a_test(&args) {
            std::process::exit(0);
        }
        return Options::quick();
    }
    let mut o = Options {
        quick: false,
        chats: 10_000,
        messages: 20,
        out: PathBuf::from("bench-results"),
    };
    let mut out = None;
    // cargo puts its --bench after ours: a last `--out` must not take it.
    let mut args = args.into_iter().filter(|a| a != "--bench");
    while let Some(arg) = args.next() {
        let mut number = |name: &str, least: usize| -> usize {
            args.next()
                .and_then(|v| v.parse().ok())
                .filter(|&n| n >= least)
                .unwrap_or_else(|| refuse(&format!("{name} needs a number, at least {least}")))
        };
        match arg.as_str() {
            "--quick" => o = Options::quick(),
            "--chats" => o.chats = number("--chats", 1),
            "--messages" => o.messages = number("--messages", 0),
            "--out" => {
                let dir = args
                    .next()
                    .unwrap_or_else(|| refuse("--out needs a directory"));
                out = Some(PathBuf::from(dir));
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => refuse(&format!("unknown argument {other:?}")),
        }
    }
    Options {
        out: out.unwrap_or(o.out),
        ..o
    }
}

/// Says what is wrong with the bench's arguments, and what they are; exits
/// with 2, as a command does on a bad argument.
fn refuse(problem: &str) -> ! {
    eprintln!("load: {problem}\n{USAGE}");
    std::process::exit(2)
}

const USAGE: &str =
    "usage: cargo bench --bench load [-- [--quick] [--chats N] [--messages M] [--out DIR]]";

impl Options {
    fn quick() -> Options {
        Options {
            quick: true,
            chats: 300,
            messages: 5,
            // A quick run checks correctness; its figures are not worth
            // keeping next to those of a full run. They go under this
            // checkout's target directory, not to a fixed name in /tmp,
            // which another user's run (or another checkout's) may hold.
            out: Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-quick"),
        }
    }
}

/// The name of this binary's one test, the quick run, under `cargo test`.
const TEST_NAME: &str = "quick_run";

/// Whether libtest's `args` select the quick run, as they would select a
/// test of that name. `cargo test` passes what follows its `--` to every
/// test binary, this one too, which has its own main: before 2026-11-28,
/// `cargo test --all-targets -- --nocapture`, or with a name filter, failed
/// here on an unknown argument. Name filters, `--exact`, `--skip` and
/// `--ignored` select the run or not (then, as libtest, it says it ran
/// nothing), `--list` lists it, and the other flags change nothing here.
fn selected_as_a_test(args: &[String]) -> bool {
    const TAKE_A_VALUE: [&str; 7] = [
        "--test-threads",
        "--skip",
        "--color",
        "--format",
        "--logfile",
        "--shuffle-seed",
        "-Z",
    ];
    let (mut filters, mut skips) = (vec![], vec![]);
    let (mut exact, mut ignored_only, mut list) = (false, false, false);
    let mut args = args.iter().map(String::as_str);
    while let Some(arg) = args.next() {
        let (name, inline_value) = match arg.split_once('=') {
            Some((name, value)) if name.starts_with("--") => (name, Some(value)),
            _ => (arg, None),
        };
        match name {
            "--exact" => exact = true,
            "--ignored" => ignored_only = true,
            "--list" => list = true,
            _ if TAKE_A_VALUE.contains(&name) => {
                let value = inline_value.or_else(|| args.next()).unwrap_or_default();
                if name == "--skip" {
                    skips.push(value);
                }
            }
            _ if name.starts_with('-') => {} // --nocapture, --quiet, --include-ignored, ...
            filter => filters.push(filter),
        }
    }
    let matches = |pattern: &str| {
        if exact {
            TEST_NAME == pattern
        } else {
            TEST_NAME.contains(pattern)
        }
    };
    let selected = !ignored_only
        && (filters.is_empty() || filters.iter().any(|f| matches(f)))
        && !skips.iter().any(|s| matches(s));
    if list {
        if selected {
            println!("{TEST_NAME}: test");
        }
        return false;
    }
    if !selected {
        println!(
            "\nrunning 0 tests\n\ntest result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 1 filtered out\n"
        );
    }
    selected
}

/// One measured phase.
struct Phase {
    name: String,
    requests: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    /// Answers whose status was not the expected one (200 for a delete,
    /// 401 on the 401 path).
    wrong_status: usize,
    starved: usize,
    lost: usize,
    reconnects: usize,
    /// CPU time used meanwhile by the process that served: the server, or
    /// this one for the in-process phases.
    cpu: Duration,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        sorted
            .get(((sorted.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or_default()
    }
}

fn seed(path: &Path, chats: usize, messages: usize) -> (Vec<i64>, String) {
    let db = Database::open(path, &db::Settings::default()).unwrap();
    let ids = add_chats(&db, USER, chats, messages);
    let token = auth::new_session(&db, USER, auth::DEFAULT_SESSION_TTL).unwrap();
    // Leave a checkpointed file behind for the next phases.
    let upkeep = Maintenance::start(db.clone(), Pacing::default()).unwrap();
    upkeep.stop();
    (ids, token.expose().to_owned())
}

/// Adds `chats` chats of `messages` messages each for `user` (created if
/// missing), 1000 messages to a transaction; returns their ids.
fn add_chats(db: &Database, user: &str, chats: usize, messages: usize) -> Vec<i64> {
    if !db.user_exists(user).unwrap() {
        db.add_user(user, None).unwrap();
    }
    let text = "y".repeat(200);
    let per_tx = (1000 / messages.max(1)).max(1);
    let mut ids = Vec::with_capacity(chats);
    let mut left = chats;
    while left > 0 {
        let n = left.min(per_tx);
        left -= n;
        ids.extend(
            db.write(|tx| {
                (0..n)
                    .map(|_| {
                        let chat = db::insert_chat(tx, user, "scaling", "model")?;
                        // Big chats are split over several transactions.
                        for _ in 0..messages.min(1000) {
                            db::insert_message(tx, chat, Actor::User, &text)?;
                        }
                        Ok(chat)
                    })
                    .collect::<db::Result<Vec<_>>>()
            })
            .unwrap(),
        );
    }
    for &chat in &ids {
        let mut added = messages.min(1000);
        while added < messages {
            let n = (messages - added).min(1000);
            db.write(|tx| {
                for _ in 0..n {
                    db::insert_message(tx, chat, Actor::User, &text)?;
                }
                Ok(())
            })
            .unwrap();
            added += n;
        }
    }
    ids
}

/// Times one in-process delete of `USER`'s `chat`, asked by the session
/// whose token has the hash `session`.
fn time_delete(db: &Database, session: &[u8; 32], chat: i64) -> Duration {
    let t = Instant::now();
    assert_eq!(
        db.delete_chat(USER, chat, session).unwrap(),
        db::Deletion::Deleted,
        "chat {chat} was not deleted"
    );
    t.elapsed()
}

/// A new session of `USER`, who must exist: the hash of its token, which a
/// delete names.
fn session(db: &Database) -> [u8; 32] {
    auth::new_session(db, USER, auth::DEFAULT_SESSION_TTL)
        .unwrap()
        .hash()
}

/// Waits until the upkeep thread of whichever process has the database at
/// `path` open has done its work: the WAL truncated and the free pages
/// given back (up to its threshold).
fn wait_for_upkeep(path: &Path) {
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    let threshold = Pacing::default().vacuum_threshold_pages;
    let deadline = Instant::now() + Duration::from_secs(10);
    let conn = rusqlite::Connection::open(path).unwrap();
    loop {
        thread::sleep(Duration::from_millis(20));
        let wal_empty = std::fs::metadata(&wal).is_ok_and(|m| m.len() == 0);
        let free: i64 = conn
            .pragma_query_value(None, "freelist_count", |r| r.get(0))
            .unwrap();
        if (wal_empty && free < threshold) || Instant::now() > deadline {
            return;
        }
    }
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// Target 6 of the benchmark issue: delete cost independent of database
/// size, and linear in the chat's size. Returns a Markdown section.
///
/// The machine's speed drifts within a run, so each comparison interleaves
/// its sides: a delete on the small database, then one on the large one;
/// one chat of each size per round. Otherwise a slow spell lands on one side
/// only and shows up as a difference that the code does not make.
fn scaling(dir: &Path, quick: bool) -> String {
    // (unrelated messages, 20-message chats to compare, chat sizes, at most
    // this many chats per size)
    let (unrelated, sample, sizes, per_size): (usize, usize, &[usize], usize) = if quick {
        (20_000, 50, &[10, 100, 1000], 10)
    } else {
        (1_000_000, 1000, &[10, 100, 1000, 10_000, 100_000], 50)
    };
    let fresh = |name: &str| {
        let db = Database::open(&dir.join(name), &db::Settings::default()).unwrap();
        let upkeep = Maintenance::start(db.clone(), Pacing::default()).unwrap();
        (db, upkeep)
    };
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut out = String::from("\n## Scaling (in-process, one delete at a time)\n\n");

    // The same chats on a small database and on one with `unrelated` more
    // messages (another user's, 100 per chat), deleted in alternation.
    let (small, small_upkeep) = fresh("small.db");
    let (large, large_upkeep) = fresh("large.db");
    add_chats(&large, "other", unrelated / 100, 100);
    let pairs: Vec<(i64, i64)> = add_chats(&small, USER, sample, 20)
        .into_iter()
        .zip(add_chats(&large, USER, sample, 20))
        .collect();
    let (on_small_as, on_large_as) = (session(&small), session(&large));
    thread::sleep(Duration::from_millis(500)); // let upkeep settle
    let (small_times, large_times) = pairs
        .iter()
        .map(|&(a, b)| {
            (
                time_delete(&small, &on_small_as, a),
                time_delete(&large, &on_large_as, b),
            )
        })
        .unzip();
    let (on_small, on_large) = (median(small_times), median(large_times));
    small_upkeep.stop();
    large_upkeep.stop();
    out += &format!(
        "Database size: median delete of a 20-message chat {:.3} ms on a small database, \
         {:.3} ms with {unrelated} unrelated messages: {:.2}x.\n\n",
        ms(on_small),
        ms(on_large),
        on_large.as_secs_f64() / on_small.as_secs_f64()
    );

    // Chats of growing size on one database, one of each size per round.
    // Each delete starts once the upkeep thread is done with the one
    // before (a big delete leaves a big WAL to copy and pages to give
    // back), so that the time is the delete's own, in the same state each
    // time: as after a pause, which is how a person deletes a chat.
    let (db, upkeep) = fresh("sizes.db");
    let chats: Vec<Vec<i64>> = sizes
        .iter()
        .map(|&size| add_chats(&db, USER, (200_000 / size).clamp(5, per_size), size))
        .collect();
    let signed_in = session(&db);
    let mut times: Vec<Vec<Duration>> = vec![vec![]; sizes.len()];
    for round in 0..per_size {
        for (of_size, times) in chats.iter().zip(&mut times) {
            if let Some(&chat) = of_size.get(round) {
                wait_for_upkeep(db.path());
                times.push(time_delete(&db, &signed_in, chat));
            }
        }
    }
    upkeep.stop();
    out += "| messages in the chat | median delete ms | µs per message |\n|---|---|---|\n";
    let mut points = vec![];
    for (&size, times) in sizes.iter().zip(times) {
        let median = median(times);
        points.push((size as f64, median.as_secs_f64() * 1e6));
        out += &format!(
            "| {size} | {:.3} | {:.2} |\n",
            ms(median),
            median.as_secs_f64() * 1e6 / size as f64
        );
    }
    // Least-squares slope: the cost each further message adds.
    let n = points.len() as f64;
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let slope = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum::<f64>()
        / points.iter().map(|(x, _)| (x - mx).powi(2)).sum::<f64>();
    out += &format!(
        "\nFitted cost per further message: {slope:.2} µs (fixed part {:.0} µs).\n",
        my - slope * mx
    );
    out
}

/// Whether the maintenance thread runs during an in-process phase.
#[derive(Clone, Copy, PartialEq)]
enum Upkeep {
    During,
    /// Only once the phase is over. No checkpoint, WAL restart or
    /// truncation holds the write lock meanwhile, so the phase shows the
    /// latency of the deletes and their group commit alone: the floor
    /// under what upkeep costs (the WAL grows by every delete meanwhile).
    After,
}

/// Deletes `ids` in-process from `threads` threads, each deleting its
/// share back to back: the project's `Database::delete_chat` (with its group
/// commit), its pragmas and its maintenance thread (during the phase or
/// only after it), no HTTP.
fn in_process(path: &Path, ids: &[i64], threads: usize, upkeep: Upkeep) -> Phase {
    let db = Database::open(path, &db::Settings::default()).unwrap();
    let signed_in = session(&db);
    let start_upkeep = || Maintenance::start(db.clone(), Pacing::default()).unwrap();
    let during = (upkeep == Upkeep::During).then(start_upkeep);
    let cpu_before = cpu_time(std::process::id());
    let start = Instant::now();
    let latencies = thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (db, signed_in) = (&db, &signed_in);
                s.spawn(move || {
                    let share = ids.iter().skip(t).step_by(threads);
                    share
                        .map(|&id| time_delete(db, signed_in, id))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let elapsed = start.elapsed();
    let cpu = cpu_time(std::process::id()) - cpu_before;
    // Its last pass checkpoints and truncates the WAL for the next phase.
    during.unwrap_or_else(start_upkeep).stop();
    let name = match (threads, upkeep) {
        (1, Upkeep::During) => "in-process delete (limit)".into(),
        (_, Upkeep::During) => format!("in-process delete ({threads} threads)"),
        (_, Upkeep::After) => format!("in-process delete ({threads} threads, no upkeep)"),
    };
    Phase {
        name,
        requests: ids.len(),
        elapsed,
        latencies,
        wrong_status: 0,
        starved: 0,
        lost: 0,
        reconnects: 0,
        cpu,
    }
}

struct Server {
    child: Child,
    addr: SocketAddr,
    /// From spawning the process to its "listening on" line.
    startup: Duration,
}

fn start_server(db_path: &Path) -> Server {
    let spawned = Instant::now();
    let mut command = Command::new(env!("CARGO_BIN_EXE_neptun-local"));
    command
        .args(["--addr", "127.0.0.1:0", "--log-level", "warn", "--db"])
        .arg(db_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // The figures are the defaults', whatever the shell exports.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("NEPTUN_") {
            command.env_remove(name);
        }
    }
    // A bench that dies midway (Ctrl-C, or `| head` closing its output) must
    // not leave a server behind to load the next run's cores. Linux only.
    // SAFETY: prctl is async-signal-safe, as pre_exec requires.
    #[cfg(target_os = "linux")]
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let mut child = command.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .expect("listening line")
        .parse()
        .unwrap();
    Server {
        child,
        addr,
        startup: spawned.elapsed(),
    }
}

/// Sends one request on a keep-alive connection and reads the answer;
/// returns the status and whether the server closes the connection
/// (`Connection: close`), or `None` if nothing came back in time.
fn exchange(stream: &mut BufReader<TcpStream>, request: &[u8]) -> Option<(u16, bool)> {
    stream.get_mut().write_all(request).ok()?;
    let mut line = String::new();
    stream.read_line(&mut line).ok()?;
    let status = line.split(' ').nth(1)?.parse().ok()?;
    let (mut length, mut closes) = (0, false);
    loop {
        line.clear();
        stream.read_line(&mut line).ok()?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else {
            continue;
        };
        if name.eq_ignore_ascii_case("content-length") {
            length = value.trim().parse().ok()?;
        } else if name.eq_ignore_ascii_case("connection") {
            closes = value.trim().eq_ignore_ascii_case("close");
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).ok()?;
    Some((status, closes))
}

fn connect(addr: SocketAddr) -> BufReader<TcpStream> {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(LOST_AFTER)).unwrap();
    stream.set_nodelay(true).unwrap();
    BufReader::new(stream)
}

/// What one client saw.
#[derive(Default)]
struct ClientResult {
    latencies: Vec<Duration>,
    wrong_status: usize,
    /// Connections whose first answer took longer than `STARVED_AFTER`.
    starved: usize,
    lost: usize,
    /// New connections opened because the server closed one.
    reconnects: usize,
}

/// Drives `connections` keep-alive clients, each sending its share of
/// `requests` back to back, on a new connection whenever the server closes
/// one (as any HTTP client does). Every answer should have a status that
/// `expected` accepts.
fn load(
    name: &str,
    server: &Server,
    connections: usize,
    requests: Vec<Vec<u8>>,
    expected: fn(u16) -> bool,
) -> Phase {
    let addr = server.addr;
    let mut shares: Vec<Vec<Vec<u8>>> = vec![Vec::new(); connections];
    let total = requests.len();
    for (i, request) in requests.into_iter().enumerate() {
        shares[i % connections].push(request);
    }
    let cpu_before = cpu_time(server.child.id());
    let start = Instant::now();
    let per_client: Vec<ClientResult> = std::thread::scope(|s| {
        let handles: Vec<_> = shares
            .into_iter()
            .map(|share| {
                s.spawn(move || {
                    let mut seen = ClientResult {
                        latencies: Vec::with_capacity(share.len()),
                        ..ClientResult::default()
                    };
                    let mut stream = connect(addr);
                    let mut first_on_connection = true;
                    for (i, request) in share.iter().enumerate() {
                        let t = Instant::now();
                        let Some((status, closes)) = exchange(&mut stream, request) else {
                            seen.starved += usize::from(first_on_connection);
                            seen.lost = share.len() - i;
                            return seen;
                        };
                        let latency = t.elapsed();
                        seen.latencies.push(latency);
                        seen.wrong_status += usize::from(!expected(status));
                        seen.starved += usize::from(first_on_connection && latency > STARVED_AFTER);
                        first_on_connection = closes;
                        if closes && i + 1 < share.len() {
                            stream = connect(addr);
                            seen.reconnects += 1;
                        }
                    }
                    seen
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let elapsed = start.elapsed();
    let cpu = cpu_time(server.child.id()) - cpu_before;
    let mut phase = Phase {
        name: name.into(),
        requests: total,
        elapsed,
        latencies: vec![],
        wrong_status: 0,
        starved: 0,
        lost: 0,
        reconnects: 0,
        cpu,
    };
    for seen in per_client {
        phase.latencies.extend(seen.latencies);
        phase.wrong_status += seen.wrong_status;
        phase.starved += seen.starved;
        phase.lost += seen.lost;
        phase.reconnects += seen.reconnects;
    }
    phase
}

fn delete_request(addr: SocketAddr, chat: i64, token: &str) -> Vec<u8> {
    format!("DELETE /api/users/{USER}/chats/{chat} HTTP/1.1\r\nHost: {addr}\r\nCookie: neptun-session={token}\r\n\r\n").into_bytes()
}

/// The CPU time (user and system) that process `pid` has used so far, from
/// `/proc/PID/stat`, in clock ticks (10 ms here): a phase of a second or
/// more gets within a few percent. Zero where there is no `/proc` (macOS).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name, in parentheses, may hold spaces: count from after it.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    // utime and stime, fields 14 and 15 of the file.
    let ticks: u64 = after_name
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|field| field.parse::<u64>().ok())
        .sum();
    Duration::from_micros(ticks * 1_000_000 / clock_ticks_per_second())
}

/// Stops the server as a service manager would (SIGTERM), and returns how
/// it exited. Windows has no such signal: there it is killed, and its exit
/// is not checked (`None`).
#[cfg(unix)]
fn stop_server(mut child: Child) -> Option<std::process::ExitStatus> {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    Some(child.wait().unwrap())
}

#[cfg(not(unix))]
fn stop_server(mut child: Child) -> Option<std::process::ExitStatus> {
    child.kill().unwrap();
    child.wait().unwrap();
    None
}

#[cfg(unix)]
fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64
}

/// Linux's usual value; `cpu_time` finds no ticks to count there anyway.
#[cfg(not(unix))]
fn clock_ticks_per_second() -> u64 {
    100
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let o = options();
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("bench.db");
    // One chunk of chats for each phase that deletes.
    let chats = o.chats * (1 + IN_PROCESS_PHASES.len() + CONNECTIONS.len());
    eprintln!("seeding {chats} chats x {} messages ...", o.messages);
    let (ids, token) = seed(&db_path, chats, o.messages);
    let mut chunks = ids.chunks(o.chats);

    let limit = in_process(&db_path, chunks.next().unwrap(), 1, Upkeep::During);
    let mut phases = vec![];
    for (threads, upkeep) in IN_PROCESS_PHASES {
        wait_for_upkeep(&db_path);
        phases.push(in_process(
            &db_path,
            chunks.next().unwrap(),
            threads,
            upkeep,
        ));
    }
    let db_mib = std::fs::metadata(&db_path).map_or(0, |m| m.len()) as f64 / (1024.0 * 1024.0);
    let server = start_server(&db_path);
    for (connections, chats) in CONNECTIONS.into_iter().zip(chunks) {
        // Each phase starts once the server's upkeep is done with the phase
        // before (a truncated WAL, free pages given back), so that it does
        // not pay for that phase's deletes.
        wait_for_upkeep(&db_path);
        let requests = chats
            .iter()
            .map(|&c| delete_request(server.addr, c, &token))
            .collect();
        phases.push(load(
            &format!("DELETE {connections} conn"),
            &server,
            connections,
            requests,
            |s| s == 200,
        ));
    }
    let unknown = "0".repeat(64);
    let unauthorized = (0..o.chats * 4)
        .map(|i| delete_request(server.addr, i as i64 + 1, &unknown))
        .collect();
    wait_for_upkeep(&db_path);
    phases.push(load("401 path 8 conn", &server, 8, unauthorized, |s| {
        s == 401
    }));
    let rss = peak_rss_kib(server.child.id());
    let startup = server.startup;
    let exit = stop_server(server.child);
    eprintln!("measuring how the delete scales ...");
    let scaling = scaling(dir.path(), o.quick);

    // The report.
    let mut report = format!(
        "neptun-local load benchmark: {} chats x {} messages per phase, synchronous=FULL, {} CPUs\n\n",
        o.chats,
        o.messages,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    report += "| phase | requests | req/s | x in-process | p50 ms | p99 ms | max ms | starved conns | lost | wrong status | reconnects | CPU µs/req |\n";
    report += "|---|---|---|---|---|---|---|---|---|---|---|---|\n";
    for p in std::iter::once(&limit).chain(&phases) {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        report += &format!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.1} | {} | {} | {} | {} | {:.0} |\n",
            p.name,
            p.requests,
            p.rate(),
            p.rate() / limit.rate(),
            ms(p.percentile(0.5)),
            ms(p.percentile(0.99)),
            ms(p.percentile(1.0)),
            p.starved,
            p.lost,
            p.wrong_status,
            p.reconnects,
            p.cpu.as_secs_f64() * 1e6 / p.requests as f64
        );
    }
    report += &format!(
        "\nserver peak RSS: {:.1} MiB; start-up to listening: {:.1} ms on a {db_mib:.0} MiB \
         database; server exit: {}\n",
        rss as f64 / 1024.0,
        startup.as_secs_f64() * 1000.0,
        exit.map_or("not checked (killed: no SIGTERM here)".to_string(), |e| e
            .to_string())
    );
    report += &scaling;
    print!("{report}");
    std::fs::create_dir_all(&o.out).unwrap();
    std::fs::write(o.out.join("results.md"), &report).unwrap();
    let mut csv = String::from("phase,latency_ms\n");
    for p in std::iter::once(&limit).chain(&phases) {
        for l in &p.latencies {
            // Quoted: a phase name may hold a comma.
            csv += &format!("\"{}\",{:.4}\n", p.name, l.as_secs_f64() * 1000.0);
        }
    }
    std::fs::write(o.out.join("latencies.csv"), csv).unwrap();
    eprintln!(
        "wrote {}/results.md and latencies.csv (plot: python3 benches/plot_latency.py {})",
        o.out.display(),
        o.out.display()
    );

    if o.quick {
        let db = Database::open(&db_path, &db::Settings::default()).unwrap();
        let left: i64 = db
            .with_connection(|c| Ok(c.query_row("SELECT count(*) FROM chats", [], |r| r.get(0))?))
            .unwrap();
        let orphans: i64 = db
            .with_connection(
                |c| Ok(c.query_row("SELECT count(*) FROM messages", [], |r| r.get(0))?),
            )
            .unwrap();
        let mut problems = vec![];
        if left != 0 || orphans != 0 {
            problems.push(format!("{left} chats and {orphans} messages left behind"));
        }
        for p in &phases {
            if p.wrong_status != 0
                || p.lost != 0
                || p.starved != 0
                || p.latencies.len() != p.requests
            {
                problems.push(format!(
                    "{}: {} wrong status, {} lost, {} starved connections",
                    p.name, p.wrong_status, p.lost, p.starved
                ));
            }
        }
        if let Some(exit) = exit.filter(|e| !e.success()) {
            problems.push(format!("server exit {exit}"));
        }
        if problems.is_empty() {
            println!(
                "quick run correct: every chat deleted exactly once, every request answered, no error"
            );
        } else {
            eprintln!("quick run INCORRECT:\n  {}", problems.join("\n  "));
            std::process::exit(1);
        }
    }
}
