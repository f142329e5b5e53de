//! How the process allocates memory, and gives it back.

/// Caps glibc's malloc at one arena per CPU (at least two) instead of its
/// default of eight per CPU.
///
/// Every connection has a thread of its own (tiny_http), and glibc gives
/// threads that allocate at the same moment arenas of their own, each of
/// which keeps the memory its threads freed. In the load bench (64
/// connections, 32 workers, 2 CPUs) peak RSS was 16.8–22.1 MiB with glibc's
/// default and 13.9–14.1 MiB with two arenas, at the same throughput.
///
/// Call it first thing in `main`: a thread picks its arena when it first
/// allocates, so only threads started later keep to the cap.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let arenas = libc::c_int::try_from(cpus.max(2)).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only sets a tuning parameter of the allocator.
        // Its failure (0) leaves glibc's default, which is only bigger.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) };
    }
}

/// Gives the memory that malloc holds freed back to the OS.
///
/// glibc keeps what a thread freed for its next allocations, and a large
/// delete frees a lot at once: SQLite lists the ids of the rows its
/// cascade deletes, about 24 bytes per message, so deleting a chat of
/// 2,000,000 messages took the server from 8 to 58 MiB of RSS, and it
/// stayed there while idle. Trimming took it back to 9.6 MiB. It takes about
/// 50 µs with nothing to give back (6 ms for those 50 MiB), and it locks
/// each arena in turn: call it where no request waits for it, once the
/// server has gone idle.
pub fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only releases free memory of malloc's own
        // heaps; its result says whether any was released.
        unsafe { libc::malloc_trim(0) };
    }
}
