//! The connections to the server that are open in this process (see
//! [`accepted_on`]).

use std::collections::HashSet;
use std::net::SocketAddr;

/// The connections accepted on `port` that are open in this process, by
/// their peer's address: connected sockets with `port` as their own end.
/// Every connection that tiny_http holds is one, those waiting in its
/// queue too, so no more can wait there (see
/// `SpareThreads::check_the_queue`).
///
/// Read from the process's descriptors, on Linux: `None` elsewhere, or if
/// they cannot be listed. (macOS's `/dev/fd` is said to leave sockets out,
/// and a connection missed could be left waiting in the queue.)
#[cfg(target_os = "linux")]
pub(super) fn accepted_on(port: u16) -> Option<HashSet<SocketAddr>> {
    let descriptors = std::fs::read_dir("/proc/self/fd").ok()?;
    // A set, because tiny_http holds each connection twice (a descriptor to
    // read and a clone to write).
    Some(
        descriptors
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
            .filter_map(|fd| peer_of_a_connection_accepted_on(fd, port))
            .collect(),
    )
}

#[cfg(not(target_os = "linux"))]
pub(super) fn accepted_on(_port: u16) -> Option<HashSet<SocketAddr>> {
    None
}

/// The peer of `fd`, if it is a connected socket whose own port is `port`.
/// The listener has that port too, but no peer; our own connections to the
/// server have the server's port as their peer's.
#[cfg(target_os = "linux")]
fn peer_of_a_connection_accepted_on(fd: libc::c_int, port: u16) -> Option<SocketAddr> {
    let own = address(fd, libc::getsockname)?;
    if own.port() != port {
        return None;
    }
    address(fd, libc::getpeername)
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
) -> Option<SocketAddr> {
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

    fn count(port: u16) -> Option<usize> {
        accepted_on(port).map(|peers| peers.len())
    }

    #[test]
    fn counts_the_accepted_connections_and_nothing_else() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        assert_eq!(count(addr.port()), Some(0), "the listener");

        // Our end of a connection to the server is not one either.
        let ours = TcpStream::connect(addr).unwrap();
        assert_eq!(count(addr.port()), Some(0), "not accepted");
        let (accepted, _) = listener.accept().unwrap();
        let peers = HashSet::from([ours.local_addr().unwrap()]);
        assert_eq!(accepted_on(addr.port()), Some(peers), "known by its peer");
        // Held twice, as tiny_http holds each: still one.
        let clone = accepted.try_clone().unwrap();
        assert_eq!(count(addr.port()), Some(1), "a clone");
        let another = TcpStream::connect(addr).unwrap();
        let (another_accepted, _) = listener.accept().unwrap();
        assert_eq!(count(addr.port()), Some(2));
        drop((accepted, clone, another_accepted));
        assert_eq!(count(addr.port()), Some(0), "closed");

        // Only this port's.
        let elsewhere = TcpListener::bind("127.0.0.1:0").unwrap();
        let _to_elsewhere = TcpStream::connect(elsewhere.local_addr().unwrap()).unwrap();
        let (_accepted_elsewhere, _) = elsewhere.accept().unwrap();
        assert_eq!(count(addr.port()), Some(0), "elsewhere");
        drop((ours, another));
    }
}
