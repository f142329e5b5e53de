//! Process limits that bound what tiny_http may be asked to do: running out
//! of file descriptors or of threads kills its accept thread.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::spare_threads::SPARE_CONNECTION_THREADS;

/// Raises the soft limit on open files as far as the system allows, so that
/// a burst of connections does not run the process out of descriptors
/// (which tiny_http cannot survive). Returns the new soft limit, `None`
/// where there is no such limit.
#[cfg(unix)]
pub fn raise_open_file_limit() -> io::Result<Option<u64>> {
    let mut limit = rlimit(libc::RLIMIT_NOFILE)?;
    let most = most_open_files_allowed(limit.rlim_max);
    if limit.rlim_cur < most {
        limit.rlim_cur = most;
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(Some(limit.rlim_cur))
}

/// Windows has no limit on open sockets or files to raise.
#[cfg(not(unix))]
pub fn raise_open_file_limit() -> io::Result<Option<u64>> {
    Ok(None)
}

/// The highest soft limit on open files that the kernel accepts: the hard
/// limit.
#[cfg(all(unix, not(target_os = "macos")))]
fn most_open_files_allowed(hard: libc::rlim_t) -> libc::rlim_t {
    hard
}

/// The highest soft limit on open files that the kernel accepts. macOS
/// reports an unlimited hard limit but refuses a soft limit above
/// `kern.maxfilesperproc`, and starts processes at 256 (Go's runtime caps
/// its own raise the same way).
#[cfg(target_os = "macos")]
fn most_open_files_allowed(hard: libc::rlim_t) -> libc::rlim_t {
    let mut per_process: libc::c_int = 0;
    let mut size = std::mem::size_of::<libc::c_int>();
    // SAFETY: the name is NUL-terminated, and the buffer is the size we pass.
    let read = unsafe {
        libc::sysctlbyname(
            c"kern.maxfilesperproc".as_ptr(),
            (&raw mut per_process).cast(),
            &mut size,
            std::ptr::null_mut(),
            0,
        )
    };
    match libc::rlim_t::try_from(per_process) {
        Ok(most) if read == 0 && most > 0 => hard.min(most),
        // macOS's own OPEN_MAX, which the kernel has always accepted.
        _ => hard.min(10_240),
    }
}

/// The soft limit on open files; `None` where there is none (Windows).
#[cfg(unix)]
fn open_file_soft_limit() -> Option<u64> {
    rlimit(libc::RLIMIT_NOFILE).ok().map(|l| l.rlim_cur)
}

#[cfg(not(unix))]
fn open_file_soft_limit() -> Option<u64> {
    None
}

/// The type of a resource for getrlimit: an enum of glibc's own, a plain
/// int in other C libraries (musl, macOS).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
type Resource = libc::__rlimit_resource_t;
#[cfg(all(unix, not(all(target_os = "linux", target_env = "gnu"))))]
type Resource = libc::c_int;

#[cfg(unix)]
fn rlimit(resource: Resource) -> io::Result<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    if unsafe { libc::getrlimit(resource, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(limit)
}

/// [`SPARE_CONNECTION_THREADS`], but at most a quarter of what a refresh
/// could exhaust, since it holds up to two connections per spare:
/// - one per 16 descriptors the open file limit allows (each connection
///   takes two: ours and the accepted one);
/// - one per 4 tasks that the process may still start, by its cgroups and
///   by `RLIMIT_NPROC` (each accepted connection takes a thread).
///
/// A process that runs out of either loses tiny_http's accept thread.
pub(super) fn default_spares() -> usize {
    let descriptors = open_file_soft_limit();
    let tasks = [cgroup_task_headroom(), user_task_headroom()]
        .into_iter()
        .flatten()
        .min();
    let by_descriptors = descriptors.map_or(u64::MAX, |descriptors| descriptors / 16);
    let by_tasks = tasks.map_or(u64::MAX, |tasks| tasks / 4);
    let cap = usize::try_from(by_descriptors.min(by_tasks)).unwrap_or(usize::MAX);
    let spares = SPARE_CONNECTION_THREADS.min(cap);
    if spares < SPARE_CONNECTION_THREADS {
        // The same limit caps clients' connections, and the server cannot
        // survive reaching it: worth saying before it happens.
        let limit = match tasks {
            Some(tasks) if by_tasks < by_descriptors => format!(
                "this process may start only {tasks} more threads (`ulimit -u`, or its cgroup's pids.max)"
            ),
            _ => format!("the open file limit is {}", descriptors.unwrap_or_default()),
        };
        log::warn!(
            "keeping {spares} spare connection threads instead of {SPARE_CONNECTION_THREADS}: \
             {limit}. Each open connection takes a thread and a descriptor, and the server \
             exits when it cannot get them"
        );
    }
    spares
}

/// How many more tasks (threads count) this process's cgroups allow: the
/// least `pids.max` − `pids.current` over its pids cgroup and that cgroup's
/// ancestors, under cgroup v1 or v2. `None` if no limit applies or none can
/// be read (not Linux, no cgroup file system).
///
/// A container runtime may set such a limit (`docker run --pids-limit`,
/// systemd's `TasksMax`). tiny_http's accept thread panics when it cannot
/// start a thread, and the process then exits.
fn cgroup_task_headroom() -> Option<u64> {
    let cgroups = fs::read_to_string("/proc/self/cgroup").ok()?;
    let mounts = fs::read_to_string("/proc/self/mountinfo").ok()?;
    pids_cgroup_dirs(&cgroups, &mounts)
        .iter()
        .filter_map(|dir| task_headroom_in(dir))
        .min()
}

/// The directories whose `pids.max` applies to this process: its pids
/// cgroup and each ancestor up to the mount point, for the cgroup v1
/// hierarchy with the `pids` controller and for the v2 hierarchy.
/// `cgroups` is `/proc/self/cgroup`, `mounts` is `/proc/self/mountinfo`.
fn pids_cgroup_dirs(cgroups: &str, mounts: &str) -> Vec<PathBuf> {
    let mut dirs = vec![];
    for line in cgroups.lines() {
        // hierarchy-ID:controllers:path; v2's controller list is empty.
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let v2 = controllers.is_empty();
        if !v2 && !controllers.split(',').any(|c| c == "pids") {
            continue;
        }
        let Some((root, mount_point)) = cgroup_mount(mounts, v2) else {
            continue;
        };
        // A mount shows the hierarchy from its root down: a container may
        // see its own cgroup as the root.
        let Ok(below_root) = Path::new(path).strip_prefix(root) else {
            continue;
        };
        let mut dir = Path::new(mount_point).join(below_root);
        while dir.starts_with(mount_point) {
            dirs.push(dir.clone());
            if !dir.pop() {
                break;
            }
        }
    }
    dirs
}

/// The root and mount point of the cgroup v2 hierarchy (`v2`), or of the v1
/// hierarchy that has the `pids` controller, from `/proc/self/mountinfo`.
fn cgroup_mount(mounts: &str, v2: bool) -> Option<(&str, &str)> {
    mounts.lines().find_map(|line| {
        // ID parent major:minor root mount-point options [optional...] - type source super-options
        let (mount, filesystem) = line.split_once(" - ")?;
        let mut mount = mount.split(' ').skip(3);
        let (root, mount_point) = (mount.next()?, mount.next()?);
        let mut filesystem = filesystem.split(' ');
        let (kind, options) = (filesystem.next()?, filesystem.nth(1)?);
        let wanted = if v2 {
            kind == "cgroup2"
        } else {
            kind == "cgroup" && options.split(',').any(|o| o == "pids")
        };
        wanted.then_some((root, mount_point))
    })
}

/// How many more tasks `RLIMIT_NPROC` (`ulimit -u`) lets this process
/// start; `None` if it does not bind. The limit counts every thread of
/// every process of the real user, and does not bind root. Found by hand:
/// as an unprivileged user with `ulimit -u 40`, the server exited 70 at
/// start-up, when its first refresh of spares asked for 64 threads.
///
/// Linux only: elsewhere (macOS) the limit counts processes, not threads.
#[cfg(target_os = "linux")]
fn user_task_headroom() -> Option<u64> {
    let limit = rlimit(libc::RLIMIT_NPROC).ok()?.rlim_cur;
    // SAFETY: getuid cannot fail and has no preconditions.
    let uid = unsafe { libc::getuid() };
    if limit == libc::RLIM_INFINITY || uid == 0 {
        return None;
    }
    // The usual limit (half the kernel's thread limit) is far above what
    // a user runs. Then every task on the machine, from one small file,
    // is close enough; counting the user's own reads a file per process.
    let all_tasks = fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|loadavg| tasks_in_loadavg(&loadavg));
    if let Some(all) = all_tasks {
        let headroom = limit.saturating_sub(all);
        if headroom / 4 >= SPARE_CONNECTION_THREADS as u64 {
            return Some(headroom);
        }
    }
    Some(limit.saturating_sub(tasks_of_user(uid)?))
}

#[cfg(not(target_os = "linux"))]
fn user_task_headroom() -> Option<u64> {
    None
}

/// The number of tasks on the machine: the 4th field of `/proc/loadavg`
/// ("running/existing").
#[cfg(target_os = "linux")]
fn tasks_in_loadavg(loadavg: &str) -> Option<u64> {
    loadavg.split(' ').nth(3)?.split_once('/')?.1.parse().ok()
}

/// The threads of all processes whose real user is `uid`, from
/// `/proc/*/status`; `None` without `/proc`.
#[cfg(target_os = "linux")]
fn tasks_of_user(uid: libc::uid_t) -> Option<u64> {
    let tasks = fs::read_dir("/proc")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            entry.file_name().to_str()?.parse::<u32>().ok()?;
            // A process may exit while we look: then it counts no more.
            let status = fs::read_to_string(entry.path().join("status")).ok()?;
            let (real_uid, threads) = real_uid_and_threads(&status)?;
            (real_uid == uid).then_some(threads)
        })
        .sum();
    Some(tasks)
}

/// The real user id and thread count from a `/proc/PID/status` file.
#[cfg(target_os = "linux")]
fn real_uid_and_threads(status: &str) -> Option<(libc::uid_t, u64)> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name)?.split_whitespace().next())
    };
    Some((
        field("Uid:")?.parse().ok()?,
        field("Threads:")?.parse().ok()?,
    ))
}

/// `pids.max` − `pids.current` in one cgroup directory; `None` without a
/// limit ("max") or without the files (a root cgroup has none).
fn task_headroom_in(dir: &Path) -> Option<u64> {
    let read = |name: &str| -> Option<u64> {
        fs::read_to_string(dir.join(name)).ok()?.trim().parse().ok()
    };
    Some(read("pids.max")?.saturating_sub(read("pids.current")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTS: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 /docker/abc /sys/fs/cgroup/pids rw,relatime shared:9 - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate";

    #[test]
    fn the_pids_cgroup_and_its_ancestors_are_found_under_their_mounts() {
        let cgroups = "8:pids:/docker/abc/worker\n4:memory:/docker/abc\n0::/user.slice/app";
        assert_eq!(
            pids_cgroup_dirs(cgroups, MOUNTS),
            [
                "/sys/fs/cgroup/pids/worker",
                "/sys/fs/cgroup/pids",
                "/sys/fs/cgroup/unified/user.slice/app",
                "/sys/fs/cgroup/unified/user.slice",
                "/sys/fs/cgroup/unified",
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn a_cgroup_outside_its_mount_or_without_a_mount_is_skipped() {
        let no_v2 = MOUNTS.lines().take(3).collect::<Vec<_>>().join("\n");
        assert!(pids_cgroup_dirs("8:pids:/elsewhere\n0::/app", &no_v2).is_empty());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_tasks_on_the_machine_come_from_loadavg() {
        assert_eq!(tasks_in_loadavg("0.90 1.37 1.43 1/75 16458\n"), Some(75));
        assert_eq!(tasks_in_loadavg("0.90 1.37"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_status_file_gives_the_real_user_and_the_threads() {
        let status = "Name:\tneptun-local\nUid:\t1000\t0\t0\t0\nGid:\t1000\t1000\t1000\t1000\nThreads:\t23\n";
        assert_eq!(real_uid_and_threads(status), Some((1000, 23)));
        assert_eq!(real_uid_and_threads("Name:\tx\nUid:\t1000\n"), None);
    }

    /// This test's own process is one of its user's, with all its threads.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_users_tasks_include_this_process() {
        // SAFETY: getuid cannot fail and has no preconditions.
        let uid = unsafe { libc::getuid() };
        let own = fs::read_to_string("/proc/self/status").unwrap();
        let (_, threads) = real_uid_and_threads(&own).unwrap();
        assert!(tasks_of_user(uid).unwrap() >= threads);
    }

    #[test]
    fn headroom_is_the_limit_less_the_tasks_and_none_without_a_limit() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(task_headroom_in(dir.path()), None, "no files");
        fs::write(dir.path().join("pids.current"), "12\n").unwrap();
        fs::write(dir.path().join("pids.max"), "max\n").unwrap();
        assert_eq!(task_headroom_in(dir.path()), None, "no limit");
        fs::write(dir.path().join("pids.max"), "60\n").unwrap();
        assert_eq!(task_headroom_in(dir.path()), Some(48));
    }
}
