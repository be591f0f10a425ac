//! Runs one input through a target on a worker thread, under a watchdog: a panic is caught (and
//! its message and location kept), a run past the time limit is a hang, and the worker's
//! allocations are accounted by [`crate::alloc`].
//!
//! A thread cannot be killed, so after a hang the worker is abandoned (still running) and the
//! runner refuses further inputs: a campaign stops at its first hang.

use std::cell::RefCell;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::alloc::{self, Usage};
use crate::targets::{Errors, Target};

/// Worker threads are named with this prefix; the panic hook stays quiet for them.
const WORKER_PREFIX: &str = "fuzz-worker-";

thread_local! {
    /// The last panic on this (worker) thread: "message at file:line".
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs (once) a panic hook that records worker panics instead of printing them: a campaign
/// catches thousands, and reports each distinct one itself.
fn quiet_worker_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if thread::current().name().is_some_and(|n| n.starts_with(WORKER_PREFIX)) {
                let message = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "(non-string panic payload)".into());
                let at = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
                LAST_PANIC.with(|p| *p.borrow_mut() = Some(format!("{message} at {at}")));
            } else {
                previous(info);
            }
        }));
    });
}

/// How one input ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Ending {
    /// Every step ended in `Ok` or an error (the errors, each with the names it must mention).
    Returned(Vec<(String, Vec<String>)>),
    /// A panic: "message at file:line".
    Panicked(String),
    /// Still running after the time limit.
    Hung,
}

/// One input's ending, what it allocated and how long it took.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub ending: Ending,
    pub usage: Usage,
    pub elapsed: Duration,
}

struct Job {
    dir: PathBuf,
}

struct Done {
    ending: Ending,
    usage: Usage,
    elapsed: Duration,
}

/// A worker thread bound to one target.
#[derive(Debug)]
pub struct Runner {
    jobs: Option<Sender<Job>>,
    done: Receiver<Done>,
    worker: Option<JoinHandle<()>>,
    timeout: Duration,
    hung: bool,
}

impl Runner {
    /// A worker for `target`; `label` names the input directory should the allocator abort.
    pub fn new(target: &'static Target, label: &'static str, timeout: Duration) -> Self {
        assert!(
            alloc::installed(),
            "install dijiang_fuzz::alloc::BoundedAlloc as the #[global_allocator] of the fuzz binary"
        );
        quiet_worker_panics();
        let (jobs, job_rx) = mpsc::channel::<Job>();
        let (done_tx, done) = mpsc::channel();
        let worker = thread::Builder::new()
            .name(format!("{WORKER_PREFIX}{}", target.name))
            .spawn(move || {
                for job in job_rx {
                    let start = Instant::now();
                    alloc::track(label);
                    let ending = run_one(target, &job.dir);
                    let usage = alloc::finish();
                    if done_tx.send(Done { ending, usage, elapsed: start.elapsed() }).is_err() {
                        return;
                    }
                }
            })
            .expect("spawn a fuzz worker");
        Self { jobs: Some(jobs), done, worker: Some(worker), timeout, hung: false }
    }

    /// Runs the input written in `dir`. After a hang, every later call is a hang too.
    pub fn run(&mut self, dir: &Path) -> Run {
        let hung = Run { ending: Ending::Hung, usage: Usage::default(), elapsed: self.timeout };
        if self.hung {
            return hung;
        }
        let jobs = self.jobs.as_ref().expect("runner not shut down");
        if jobs.send(Job { dir: dir.to_path_buf() }).is_err() {
            return hung;
        }
        match self.done.recv_timeout(self.timeout) {
            Ok(d) => Run { ending: d.ending, usage: d.usage, elapsed: d.elapsed },
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                self.hung = true;
                hung
            }
        }
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        // Closing the channel ends the worker's loop; a hung worker is left behind.
        self.jobs = None;
        if !self.hung
            && let Some(worker) = self.worker.take()
        {
            worker.join().ok();
        }
    }
}

fn run_one(target: &Target, dir: &Path) -> Ending {
    LAST_PANIC.with(|p| p.borrow_mut().take());
    let mut errors = Errors::default();
    match panic::catch_unwind(AssertUnwindSafe(|| (target.run)(dir, &mut errors))) {
        Ok(()) => Ending::Returned(errors.into_inner()),
        Err(_) => Ending::Panicked(LAST_PANIC.with(|p| p.borrow_mut().take()).unwrap_or_default()),
    }
}
