//! Counts the connections to the server that are open in this process (see
//! [`accepted_on`]).

/// How many of this process's open sockets are connections accepted on
/// `port`: connected, with `port` as their own end. Every connection that
/// tiny_http holds is one, those waiting in its queue too, so with none
/// nothing can wait there (see `SpareThreads::threads_for_the_queue`).
///
/// Read from the process's descriptors, on Linux: `None` elsewhere, or if
/// they cannot be listed. (macOS has `/dev/fd`, but whether it lists every
/// descriptor there was not tried, and a count too low would leave a
/// queued connection waiting.)
#[cfg(target_os = "linux")]
pub(super) fn accepted_on(port: u16) -> Option<usize> {
    let descriptors = std::fs::read_dir("/proc/self/fd").ok()?;
    let count = descriptors
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| is_connection_accepted_on(fd, port))
        .count();
    Some(count)
}

#[cfg(not(target_os = "linux"))]
pub(super) fn accepted_on(_port: u16) -> Option<usize> {
    None
}

/// Whether `fd` is a connected socket whose own port is `port`. The
/// listener has that port too, but no peer; our own connections to the
/// server have the server's port as their peer's.
#[cfg(target_os = "linux")]
fn is_connection_accepted_on(fd: libc::c_int, port: u16) -> bool {
    let own = address(fd, libc::getsockname);
    own.is_some_and(|own| own.port() == port) && address(fd, libc::getpeername).is_some()
}

/// The address that `query` (getsockname or getpeername) gives for `fd`, if
/// it is an IP socket with one.
#[cfg(target_os = "linux")]
fn address(
    fd: libc::c_int,
    query: unsafe extern "C" fn(
        libc::c_int,
        *mut libc::sockaddr,
        *mut libc::socklen_t,
    ) -> libc::c_int,
) -> Option<std::net::SocketAddr> {
    // SAFETY: `query` writes at most `len` bytes into the storage that
    // socket2 hands us, and sets `len`. Another thread may close `fd`, or
    // open another file under its number, while we ask: then the answer
    // is an error or another socket's address, and only this count is
    // off (by one, for one look).
    let (_, address) = unsafe {
        socket2::SockAddr::try_init(|storage, len| {
            if query(fd, storage.cast(), len) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        })
    }
    .ok()?;
    address.as_socket()
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn counts_the_accepted_connections_and_nothing_else() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(accepted_on(port), Some(0), "the listener is not one");

        // Our end of a connection to the server is not one either.
        let ours = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert_eq!(accepted_on(port), Some(0), "not accepted yet");
        let (accepted, _) = listener.accept().unwrap();
        assert_eq!(accepted_on(port), Some(1));
        let another = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (another_accepted, _) = listener.accept().unwrap();
        assert_eq!(accepted_on(port), Some(2));

        // Only this port's.
        let elsewhere = TcpListener::bind("127.0.0.1:0").unwrap();
        let _to_elsewhere = TcpStream::connect(elsewhere.local_addr().unwrap()).unwrap();
        let _accepted_elsewhere = elsewhere.accept().unwrap();
        assert_eq!(accepted_on(port), Some(2));

        drop((accepted, another_accepted));
        assert_eq!(accepted_on(port), Some(0), "closed");
        drop((ours, another));
    }
}
