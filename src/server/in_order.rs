//! Requests pipelined on one connection are handled one after another, in
//! the order they came (see [`InOrder`]).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};

/// Hands each worker the next request, holding back a request whose
/// connection already has one in the works.
///
/// tiny_http reads a connection's next request as soon as the previous one
/// is read, not answered, and queues each for whichever worker is free. So
/// two DELETEs pipelined on one connection ran at the same time, and the
/// second could take effect first: of 200 connections that each pipelined
/// two DELETEs of one chat, 26 got `404` for the first and `200` for the
/// second. RFC 9112 §9.3.2 allows handling pipelined requests in parallel
/// only when all are safe, and DELETE is not.
///
/// A connection is told apart by its peer address. A request taken off the
/// queue while its connection is in the works waits in that connection's
/// line, and the worker handling the connection takes it next. No worker
/// waits for another: a client pipelining many requests keeps one worker
/// busy, not all of them.
pub struct InOrder<R> {
    /// Held while a worker takes a request off tiny_http's queue and looks
    /// up its connection, so that requests are lined up in the order they
    /// left the queue, which is the order each connection sent them.
    taking: Mutex<()>,
    /// Connections with a request in the works, and what waits behind it.
    busy: Mutex<HashMap<SocketAddr, VecDeque<R>>>,
}

/// What [`InOrder::next`] gives a worker.
pub enum Next<R, E> {
    /// A request to handle now, and the connection whose line it heads (to
    /// give [`InOrder::after`] once it is answered).
    Handle(R, Option<SocketAddr>),
    /// The queue said this instead of a request.
    Stop(E),
}

impl<R> Default for InOrder<R> {
    fn default() -> InOrder<R> {
        InOrder {
            taking: Mutex::new(()),
            busy: Mutex::new(HashMap::new()),
        }
    }
}

impl<R> InOrder<R> {
    /// Takes requests off the queue with `take` until one can be handled
    /// now. `peer` names a request's connection; a request without one is
    /// always handled at once.
    pub fn next<E>(
        &self,
        take: impl Fn() -> Result<R, E>,
        peer: impl Fn(&R) -> Option<SocketAddr>,
    ) -> Next<R, E> {
        let _taking = lock(&self.taking);
        loop {
            let request = match take() {
                Ok(request) => request,
                Err(e) => return Next::Stop(e),
            };
            let Some(addr) = peer(&request) else {
                return Next::Handle(request, None);
            };
            let mut busy = lock(&self.busy);
            match busy.get_mut(&addr) {
                Some(line) => line.push_back(request),
                None => {
                    busy.insert(addr, VecDeque::new());
                    return Next::Handle(request, Some(addr));
                }
            }
        }
    }

    /// Called once the request [`InOrder::next`] gave for `addr` has been
    /// answered: the next request in that connection's line, which the same
    /// worker must handle (and then call this again), or `None` when the
    /// line is empty and the connection no longer in the works.
    pub fn after(&self, addr: SocketAddr) -> Option<R> {
        let mut busy = lock(&self.busy);
        let next = busy.get_mut(&addr).and_then(VecDeque::pop_front);
        if next.is_none() {
            busy.remove(&addr);
        }
        next
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while these are held, so the state stays consistent.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// A queue of (connection port, request number), taken in order.
    fn queue(items: &[(u16, u32)]) -> RefCell<VecDeque<(u16, u32)>> {
        RefCell::new(items.iter().copied().collect())
    }

    fn next(order: &InOrder<(u16, u32)>, q: &RefCell<VecDeque<(u16, u32)>>) -> Option<(u16, u32)> {
        match order.next(|| q.borrow_mut().pop_front().ok_or(()), |r| Some(addr(r.0))) {
            Next::Handle(request, _) => Some(request),
            Next::Stop(()) => None,
        }
    }

    #[test]
    fn a_connection_in_the_works_has_its_next_requests_held_in_order() {
        let order = InOrder::default();
        let q = queue(&[(1, 1), (1, 2), (2, 1), (1, 3), (2, 2)]);
        // A worker takes connection 1's first request; the next worker skips
        // 1's second and gets connection 2's first.
        assert_eq!(next(&order, &q), Some((1, 1)));
        assert_eq!(next(&order, &q), Some((2, 1)));
        // Connection 1's third is held, too; connection 2's second as well.
        assert_eq!(next(&order, &q), None);
        assert_eq!(order.after(addr(1)), Some((1, 2)));
        assert_eq!(order.after(addr(1)), Some((1, 3)));
        assert_eq!(order.after(addr(1)), None);
        assert_eq!(order.after(addr(2)), Some((2, 2)));
        assert_eq!(order.after(addr(2)), None);
        // Done with both: a new request on connection 1 is handled at once.
        let q = queue(&[(1, 4)]);
        assert_eq!(next(&order, &q), Some((1, 4)));
    }

    #[test]
    fn requests_without_a_peer_are_never_held() {
        let order = InOrder::default();
        let q = queue(&[(0, 1), (0, 2)]);
        let take = || q.borrow_mut().pop_front().ok_or(());
        for expected in [1, 2] {
            match order.next(take, |_| None) {
                Next::Handle((_, n), None) => assert_eq!(n, expected),
                _ => panic!("request {expected} was held"),
            }
        }
    }
}
