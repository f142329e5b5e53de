//! The process's memory footprint under many connections and after a
//! large delete (glibc's malloc and `/proc`: Linux only).
#![cfg(all(target_os = "linux", target_env = "gnu"))]

use std::sync::Barrier;
use std::time::{Duration, Instant};

use crate::support::{
    TestServer, add_messages_to_the_last_chat, request, start_with_alice_and_bob,
};

/// Threads that allocate at the same moment share at most one glibc malloc
/// arena per CPU (glibc's default allows eight per CPU, each keeping the
/// memory its threads freed): see `memory.rs`. Without the cap, this load
/// left glibc's maximum of 16 arenas on 2 CPUs (3 runs of 3).
#[test]
fn many_connections_share_a_malloc_arena_per_cpu() {
    const CLIENTS: usize = 32;
    let server = TestServer::start_with(&["--workers", "32"]);
    let start = Barrier::new(CLIENTS);
    std::thread::scope(|s| {
        for _ in 0..CLIENTS {
            s.spawn(|| {
                start.wait();
                for _ in 0..50 {
                    let answer = request(server.addr, "DELETE", "/api/users/u/chats/1", &[]);
                    assert_eq!(answer.status, 401);
                }
            });
        }
    });
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    // The main arena is not one of the heaps.
    let arenas = 1 + arena_heaps(server.pid());
    assert!(
        arenas <= cpus.max(2),
        "{arenas} malloc arenas on {cpus} CPUs"
    );
}

/// A delete makes SQLite list the ids of the rows its cascade deletes,
/// about 24 bytes per message, and glibc kept that memory once it was
/// freed: after this delete an idle server held 24 MiB more than before,
/// for good. Upkeep gives it back once the server is idle (`memory.rs`).
#[test]
fn memory_a_large_delete_took_goes_back_to_the_os_once_idle() {
    let (server, db, token) = start_with_alice_and_bob(&[]);
    let chat = db.add_chat("alice", "large", "model", 0).unwrap();
    // Short messages: the list grows with their number, not their size.
    add_messages_to_the_last_chat(&server.sql(), 1_000_000, 2);
    let before = anonymous_rss_kib(server.pid());

    server
        .delete(&format!("/api/users/alice/chats/{chat}"), &token)
        .assert_true();
    // The delete alone keeps a few pages in SQLite's caches.
    let bound = before + 8 * 1024;
    let start = Instant::now();
    let mut now = anonymous_rss_kib(server.pid());
    while now > bound && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
        now = anonymous_rss_kib(server.pid());
    }
    assert!(
        now <= bound,
        "anonymous RSS {before} KiB before the delete, still {now} KiB after 10 s"
    );
}

/// The process's anonymous resident memory (its heaps, not the files it
/// maps), in KiB.
fn anonymous_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .unwrap();
    line.trim().trim_end_matches("kB").trim().parse().unwrap()
}

/// Counts glibc's secondary arenas in a process's memory map. Each one is a
/// heap reserved as 64 MiB at a 64 MiB-aligned address: a read-write part
/// that has been used so far, followed by the rest, inaccessible.
fn arena_heaps(pid: u32) -> usize {
    const HEAP_SIZE: u64 = 64 << 20;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let regions: Vec<(u64, u64, &str)> = maps
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (start, end) = fields.next()?.split_once('-')?;
            let permissions = fields.next()?;
            Some((
                u64::from_str_radix(start, 16).ok()?,
                u64::from_str_radix(end, 16).ok()?,
                permissions,
            ))
        })
        .collect();
    regions
        .windows(2)
        .filter(|pair| {
            let [(start, end, used), (rest_start, rest_end, rest)] = pair else {
                return false;
            };
            start % HEAP_SIZE == 0
                && used.starts_with("rw")
                && rest_start == end
                && rest.starts_with("---")
                && rest_end - start == HEAP_SIZE
        })
        .count()
}
