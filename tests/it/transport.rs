//! The transport's own failure handling, on a real listener: handler panics,
//! shutdown of every worker, and a listener that stops accepting.

use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use neptun_local::http::{Request, Response};
use neptun_local::server::HttpServer;
use serde_json::Value;

use crate::support::*;

fn answer_or_panic(request: &Request) -> Response {
    if request.path() == "/panic" {
        panic!("deliberate test panic");
    }
    Response::json(200, &Value::Bool(true))
}

#[test]
fn a_handler_panic_answers_json_500_and_the_only_worker_lives_on() {
    let server = HttpServer::from_listener(TcpListener::bind("127.0.0.1:0").unwrap()).unwrap();
    let addr = server.local_addr();
    let shutdown = server.shutdown_handle(1);
    let running = std::thread::spawn(move || server.run(1, answer_or_panic));

    for _ in 0..3 {
        let r = request(addr, "GET", "/panic", &[]);
        assert_eq!(
            r.assert_error(500, "Internal Server Error"),
            "Internal server error"
        );
        let r = request(addr, "GET", "/", &[]);
        assert_eq!((r.status, r.text()), (200, "true"));
    }
    shutdown.shutdown();
    running.join().unwrap().unwrap();
}

#[test]
fn shutdown_releases_every_worker() {
    let server = HttpServer::from_listener(TcpListener::bind("127.0.0.1:0").unwrap()).unwrap();
    let addr = server.local_addr();
    let shutdown = server.shutdown_handle(5);
    let running = std::thread::spawn(move || server.run(5, answer_or_panic));
    assert_eq!(request(addr, "GET", "/", &[]).status, 200);
    shutdown.shutdown();
    shutdown.shutdown(); // idempotent
    let deadline = Instant::now() + Duration::from_secs(10);
    while !running.is_finished() {
        assert!(Instant::now() < deadline, "a worker was not released");
        std::thread::sleep(Duration::from_millis(10));
    }
    running.join().unwrap().unwrap();
}

#[test]
fn a_listener_that_stops_accepting_ends_run_with_an_error() {
    // SO_RCVTIMEO on a listening socket makes accept() fail with EAGAIN once
    // the timeout passes; tiny_http treats any accept error as fatal.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 200_000,
    };
    // SAFETY: setsockopt reads `timeout` for the given length only.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    let server = HttpServer::from_listener(listener).unwrap();
    let started = Instant::now();
    let result = server.run(3, answer_or_panic);
    assert!(result.is_err(), "run must report the dead listener");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn running_out_of_file_descriptors_exits_non_zero_instead_of_lingering() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(BIN);
    command
        .args(["--addr", "127.0.0.1:0", "--workers", "1", "--db"])
        .arg(dir.path().join("t.db"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe, as pre_exec requires.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 24,
                rlim_max: 24,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let mut child = command.spawn().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let addr: std::net::SocketAddr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap()
        .parse()
        .unwrap();

    // Hold connections open until the server can no longer accept.
    let mut held = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "server neither served nor exited"
        );
        if let Ok(stream) = std::net::TcpStream::connect(addr) {
            held.push(stream);
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stderr = std::io::read_to_string(child.stderr.take().unwrap()).unwrap();
    assert!(!status.success(), "exit status {status:?}");
    assert!(
        stderr.contains("transport thread panicked") || stderr.contains("stopped accepting"),
        "{stderr}"
    );
}
