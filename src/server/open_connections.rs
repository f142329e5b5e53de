//! Tells whether a connection to the server is open in this process (see
//! [`any_accepted_on`]).

/// Whether one of this process's open sockets is a connection accepted on
/// `port`: connected, with `port` as its own end. Every connection that
/// tiny_http holds is one, those waiting in its queue too, so without one
/// nothing can wait there (see `SpareThreads::threads_for_the_queue`).
///
/// Read from the process's descriptors, on Linux: `None` elsewhere, or if
/// they cannot be listed. (macOS's `/dev/fd` is said to leave sockets out,
/// and a connection missed would be left waiting in the queue.)
#[cfg(target_os = "linux")]
pub(super) fn any_accepted_on(port: u16) -> Option<bool> {
    let descriptors = std::fs::read_dir("/proc/self/fd").ok()?;
    Some(
        descriptors
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
            .any(|fd| is_connection_accepted_on(fd, port)),
    )
}

#[cfg(not(target_os = "linux"))]
pub(super) fn any_accepted_on(_port: u16) -> Option<bool> {
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
    fn sees_the_accepted_connections_and_nothing_else() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        assert_eq!(any_accepted_on(addr.port()), Some(false), "the listener");

        // Our end of a connection to the server is not one either.
        let ours = TcpStream::connect(addr).unwrap();
        assert_eq!(any_accepted_on(addr.port()), Some(false), "not accepted");
        let (accepted, _) = listener.accept().unwrap();
        assert_eq!(any_accepted_on(addr.port()), Some(true));
        drop(accepted);
        assert_eq!(any_accepted_on(addr.port()), Some(false), "closed");

        // Only this port's.
        let elsewhere = TcpListener::bind("127.0.0.1:0").unwrap();
        let _to_elsewhere = TcpStream::connect(elsewhere.local_addr().unwrap()).unwrap();
        let (_accepted_elsewhere, _) = elsewhere.accept().unwrap();
        assert_eq!(any_accepted_on(addr.port()), Some(false), "elsewhere");
        drop(ours);
    }
}
