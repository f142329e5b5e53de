//! Process limits that bound what tiny_http may be asked to do: running out
//! of file descriptors kills its accept thread.

use std::io;

use super::spare_threads::SPARE_CONNECTION_THREADS;

/// Raises the soft limit on open files to the hard limit, so that a burst of
/// connections does not run the process out of descriptors (which tiny_http
/// cannot survive). Returns the new soft limit.
pub fn raise_open_file_limit() -> io::Result<u64> {
    let mut limit = open_file_limit()?;
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur)
}

fn open_file_limit() -> io::Result<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(limit)
}

/// [`SPARE_CONNECTION_THREADS`], but no more than one per 16 descriptors
/// the open file limit allows, so that a refresh takes at most a quarter of
/// them: it holds up to two connections per spare, and each takes two
/// descriptors (ours and the accepted one). A process that runs out of
/// descriptors loses tiny_http's accept thread.
pub(super) fn default_spares() -> usize {
    let limit = open_file_limit().map_or(0, |l| l.rlim_cur);
    SPARE_CONNECTION_THREADS.min(usize::try_from(limit / 16).unwrap_or(usize::MAX))
}
