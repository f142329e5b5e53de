//! Group commit: callers that arrive while a commit is in progress are
//! served together by the next one.
//!
//! With `synchronous=FULL` every commit waits for an fsync, and SQLite runs
//! one write transaction at a time; so concurrent deletes, one transaction
//! each, would queue up behind each other's fsync. Here the first caller in
//! line becomes the *leader*: it takes every job waiting behind it (up to a
//! cap), runs them as one batch, and hands each follower its own result. The
//! callers that arrive meanwhile form the next batch. One caller alone runs
//! alone, with no thread hand-off and no waiting for company.
//!
//! The same scheme as LevelDB's write queue (`DBImpl::Write`). This module
//! knows nothing about SQL: the batch runner decides what a batch means
//! (for deletes: one transaction, run again without a job that failed).

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};

/// A queue that runs jobs of type `J` in batches and returns each caller
/// the `R` that belongs to its own job.
pub struct GroupCommit<J, R> {
    state: Mutex<State<J, R>>,
    /// Signalled when a batch finishes: its followers take their results,
    /// and the next caller in line may lead.
    batch_done: Condvar,
    max_batch: usize,
}

struct State<J, R> {
    /// Jobs not yet taken by a leader, in arrival order.
    waiting: VecDeque<(u64, J)>,
    next_ticket: u64,
    /// Whether a leader is running a batch now.
    leading: bool,
    /// Results for followers, by ticket; `None` means the leader's batch
    /// runner panicked, so the outcome of that job is unknown.
    finished: HashMap<u64, Option<R>>,
}

impl<J, R> GroupCommit<J, R> {
    /// A queue whose batches hold at most `max_batch` jobs.
    pub fn new(max_batch: usize) -> GroupCommit<J, R> {
        GroupCommit {
            state: Mutex::new(State {
                waiting: VecDeque::new(),
                next_ticket: 0,
                leading: false,
                finished: HashMap::new(),
            }),
            batch_done: Condvar::new(),
            max_batch: max_batch.max(1),
        }
    }

    /// Queues `job` and returns its result once the batch it is in has run.
    ///
    /// If this caller becomes the leader, it runs `run_batch` on the jobs of
    /// its batch (its own first, then the others in arrival order);
    /// `run_batch` must return one result per job, in the same order.
    /// Otherwise `run_batch` is dropped unused and another caller's runs.
    ///
    /// # Panics
    /// If the batch runner that ran this job panicked (the leader's panic
    /// goes on unwinding; each follower panics with a message of its own).
    pub fn submit(&self, job: J, run_batch: impl FnOnce(Vec<J>) -> Vec<R>) -> R {
        let mut state = self.lock();
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        state.waiting.push_back((ticket, job));
        loop {
            if let Some(result) = state.finished.remove(&ticket) {
                return result.expect("the batch this job was in failed: its outcome is unknown");
            }
            let first_in_line = state.waiting.front().is_some_and(|(t, _)| *t == ticket);
            if first_in_line && !state.leading {
                break;
            }
            state = self
                .batch_done
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
        }

        state.leading = true;
        let take = state.waiting.len().min(self.max_batch);
        let (tickets, jobs): (Vec<u64>, Vec<J>) = state.waiting.drain(..take).unzip();
        drop(state);

        let mut leader = Leader {
            queue: self,
            tickets,
            results: None,
        };
        let results = run_batch(jobs);
        assert_eq!(
            results.len(),
            leader.tickets.len(),
            "a batch runner must return one result per job"
        );
        leader.results = Some(results);
        drop(leader);
        // The leader's own result was kept back under its ticket.
        self.lock()
            .finished
            .remove(&ticket)
            .flatten()
            .expect("the leader's result is stored with the others")
    }

    fn lock(&self) -> MutexGuard<'_, State<J, R>> {
        // Nothing in this module panics while holding the lock, so a
        // poisoned lock still holds a consistent state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The leader's duty to hand out results and give up the lead, done in
/// `Drop` so that it also happens if the batch runner panics (then every
/// job of the batch gets "unknown", and waiting callers are not stuck).
struct Leader<'a, J, R> {
    queue: &'a GroupCommit<J, R>,
    tickets: Vec<u64>,
    results: Option<Vec<R>>,
}

impl<J, R> Drop for Leader<'_, J, R> {
    fn drop(&mut self) {
        let mut state = self.queue.lock();
        let mut results = self.results.take().map(Vec::into_iter);
        for &ticket in &self.tickets {
            let result = results.as_mut().and_then(Iterator::next);
            state.finished.insert(ticket, result);
        }
        state.leading = false;
        drop(state);
        self.queue.batch_done.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};
    use std::thread;
    use std::time::Duration;

    #[test]
    fn one_caller_runs_its_own_job_alone() {
        let queue = GroupCommit::new(8);
        let mut batches = vec![];
        let result = queue.submit(21, |jobs: Vec<i32>| {
            batches.push(jobs.clone());
            jobs.iter().map(|j| j * 2).collect()
        });
        assert_eq!((result, batches), (42, vec![vec![21]]));
    }

    /// Callers that arrive while a batch runs are served by one later batch,
    /// each with its own result.
    #[test]
    fn callers_waiting_behind_a_batch_share_the_next_one() {
        let queue = Arc::new(GroupCommit::new(64));
        let batches = Arc::new(Mutex::new(Vec::<Vec<u32>>::new()));
        let run = |batches: Arc<Mutex<Vec<Vec<u32>>>>| {
            move |jobs: Vec<u32>| {
                // Long enough for every other caller to queue up behind it.
                thread::sleep(Duration::from_millis(100));
                batches.lock().unwrap().push(jobs.clone());
                jobs.iter().map(|j| j + 1000).collect::<Vec<_>>()
            }
        };
        let blocker = {
            let (queue, batches) = (Arc::clone(&queue), Arc::clone(&batches));
            thread::spawn(move || queue.submit(0, run(batches)))
        };
        thread::sleep(Duration::from_millis(20));
        let start = Arc::new(Barrier::new(16));
        let callers: Vec<_> = (1..=16)
            .map(|job| {
                let (queue, batches, start) =
                    (Arc::clone(&queue), Arc::clone(&batches), Arc::clone(&start));
                thread::spawn(move || {
                    start.wait();
                    (job, queue.submit(job, run(batches)))
                })
            })
            .collect();
        assert_eq!(blocker.join().unwrap(), 1000);
        for caller in callers {
            let (job, result) = caller.join().unwrap();
            assert_eq!(result, job + 1000, "each caller gets its own job's result");
        }
        let batches = batches.lock().unwrap();
        let mut all: Vec<u32> = batches.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(
            all,
            (0..=16).collect::<Vec<_>>(),
            "every job ran exactly once"
        );
        assert_eq!(batches[0], vec![0]);
        assert_eq!(
            batches.len(),
            2,
            "the 16 callers that waited behind the first batch share one: {batches:?}"
        );
    }

    #[test]
    fn batches_are_capped() {
        let queue = Arc::new(GroupCommit::new(3));
        let sizes = Arc::new(Mutex::new(vec![]));
        let callers: Vec<_> = (0..12)
            .map(|job| {
                let (queue, sizes) = (Arc::clone(&queue), Arc::clone(&sizes));
                thread::spawn(move || {
                    queue.submit(job, |jobs: Vec<i32>| {
                        thread::sleep(Duration::from_millis(5));
                        sizes.lock().unwrap().push(jobs.len());
                        jobs
                    })
                })
            })
            .collect();
        for (job, caller) in callers.into_iter().enumerate() {
            assert_eq!(caller.join().unwrap(), job as i32);
        }
        let sizes = sizes.lock().unwrap();
        assert_eq!(sizes.iter().sum::<usize>(), 12);
        assert!(sizes.iter().all(|&n| (1..=3).contains(&n)), "{sizes:?}");
    }

    #[test]
    fn followers_of_a_panicking_batch_panic_instead_of_waiting() {
        let queue = Arc::new(GroupCommit::<i32, i32>::new(64));
        let running = Arc::new(Barrier::new(2));
        // A first batch keeps the lead long enough for two callers to queue
        // up behind it; they then share the second batch, whose runner panics.
        let first = {
            let (queue, running) = (Arc::clone(&queue), Arc::clone(&running));
            thread::spawn(move || {
                queue.submit(0, move |jobs| {
                    running.wait();
                    thread::sleep(Duration::from_millis(100));
                    jobs
                })
            })
        };
        running.wait();
        let second_batch = Arc::new(Mutex::new(vec![]));
        let second_leader = {
            let (queue, second_batch) = (Arc::clone(&queue), Arc::clone(&second_batch));
            thread::spawn(move || {
                queue.submit(1, move |jobs| {
                    *second_batch.lock().unwrap() = jobs;
                    panic!("batch runner failed")
                })
            })
        };
        thread::sleep(Duration::from_millis(20));
        let follower = {
            let queue = Arc::clone(&queue);
            thread::spawn(move || queue.submit(2, |jobs| jobs))
        };
        assert_eq!(first.join().unwrap(), 0);
        assert!(
            second_leader.join().is_err(),
            "the leader's panic propagates"
        );
        assert!(
            follower.join().is_err(),
            "a follower of a failed batch must not wait forever, nor get a result"
        );
        assert_eq!(
            *second_batch.lock().unwrap(),
            vec![1, 2],
            "they shared a batch"
        );
        assert_eq!(queue.submit(3, |jobs| jobs), 3, "the queue goes on");
    }
}
