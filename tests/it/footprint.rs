//! The process's memory footprint under many connections (glibc's malloc
//! and `/proc`: Linux only).
#![cfg(all(target_os = "linux", target_env = "gnu"))]

use std::sync::Barrier;

use crate::support::{TestServer, request};

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
