//! dijiang patch 7 (vendor/README.md): helper threads that spin between back-to-back small jobs.
//!
//! A decoded token is ~200 one-row products of 0.1-1 Mi weights in a row, each ~20-100 us on one
//! core. Handing half of each to rayon costs more than it saves on a VM (~150 us per product
//! measured: rayon's idle workers go to sleep on a futex within microseconds, and waking a halted
//! vCPU is slow), so those products ran on one core while the other idled. These helpers, after a
//! job, spin (yielding to anything else runnable) for a short while before parking, so the next
//! product of the same token finds them awake. No crate does this: rayon, crossbeam and the gemm
//! crate's own parallelism all put idle threads to sleep at once.
//!
//! Parts are claimed, not assigned: the caller claims parts too, so a helper that is asleep or
//! descheduled (a busy machine) costs only the parts it already took. One caller at a time uses
//! the helpers; a caller that finds them taken (another thread's product) runs every part itself.
//! Jobs must not panic (a helper that panicked would never report its part done).

extern crate std;

use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::thread::Thread;
use std::time::{Duration, Instant};
use std::vec::Vec;

/// How long an idle helper stays awake after its last job: longer than the gaps between one
/// token's products, shorter than a scheduler slice, so a busy machine loses little.
const SPIN: Duration = Duration::from_micros(300);

/// A job: `f(part)` for every part, each claimed by whoever gets there first (the caller
/// included), so a helper that is asleep or descheduled costs nothing but the parts it took.
struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync),
}

struct Shared {
    /// The caller holding the helpers.
    busy: AtomicBool,
    /// The current job's epoch (bits 32-63), its number of parts (16-31) and the parts claimed so
    /// far (0-15). A part is claimed by a compare-exchange that also checks the epoch, so a helper
    /// late for a job that is over can never run a part of it (nor of the next one with the old
    /// job's closure), and it reads the job only after a successful claim.
    state: AtomicU64,
    /// The current job, on its caller's stack; valid while its epoch's parts are not all done.
    job: AtomicPtr<Job<'static>>,
    /// Parts of the current job finished.
    done: AtomicUsize,
    /// Per helper: parked (or about to park) and must be unparked.
    sleeping: Vec<AtomicBool>,
    threads: OnceLock<Vec<Thread>>,
}

const EPOCHS: u64 = 0xffff_ffff;
const FIELD: u64 = 0xffff;

fn shared() -> &'static Shared {
    static POOL: OnceLock<&'static Shared> = OnceLock::new();
    POOL.get_or_init(|| {
        let helpers = helper_count();
        let shared: &'static Shared = std::boxed::Box::leak(std::boxed::Box::new(Shared {
            busy: AtomicBool::new(false),
            state: AtomicU64::new(0),
            job: AtomicPtr::new(core::ptr::null_mut()),
            done: AtomicUsize::new(0),
            sleeping: (0..helpers).map(|_| AtomicBool::new(false)).collect(),
            threads: OnceLock::new(),
        }));
        let threads = (0..helpers)
            .map(|i| {
                std::thread::Builder::new()
                    .name(std::format!("flex-spin-{}", i + 1))
                    .spawn(move || helper(shared, i))
                    .expect("spawning a matrix-vector helper thread")
                    .thread()
                    .clone()
            })
            .collect();
        let _ = shared.threads.set(threads);
        shared
    })
}

/// As many helpers as rayon's global pool has threads, less the caller.
fn helper_count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| {
        let threads = std::env::var("RAYON_NUM_THREADS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&n| n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        threads.clamp(1, 64) - 1
    })
}

fn helper(shared: &'static Shared, index: usize) {
    let mut seen = 0u64;
    loop {
        seen = wait_for_job(shared, index, seen);
        while let Some(part) = claim(shared, seen) {
            // SAFETY: the claim succeeded while the epoch `seen` was current with a part left, so
            // its caller is still waiting for that part, and `job`, stored before the epoch was
            // published, is that caller's live job.
            let job = shared.job.load(Ordering::Acquire);
            unsafe { ((*job).f)(part) };
            shared.done.fetch_add(1, Ordering::Release);
        }
    }
}

/// Claims the next part of the job of `epoch`, if that job is still current and has one left.
fn claim(shared: &Shared, epoch: u64) -> Option<usize> {
    let mut state = shared.state.load(Ordering::Acquire);
    loop {
        let (part, parts) = (state & FIELD, (state >> 16) & FIELD);
        if state >> 32 != epoch || part >= parts {
            return None;
        }
        match shared.state.compare_exchange_weak(state, state + 1, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Some(part as usize),
            Err(now) => state = now,
        }
    }
}

/// Spins (then parks) until the epoch moves past `seen`; returns the new epoch.
fn wait_for_job(shared: &Shared, index: usize, seen: u64) -> u64 {
    let start = Instant::now();
    let epoch = || shared.state.load(Ordering::SeqCst) >> 32;
    loop {
        for _ in 0..64 {
            let now = epoch();
            if now != seen {
                return now;
            }
            core::hint::spin_loop();
        }
        if start.elapsed() < SPIN {
            std::thread::yield_now();
            continue;
        }
        // Park; the caller unparks whoever it sees sleeping after publishing (both SeqCst, so
        // either this load sees the new epoch or the caller sees the flag).
        shared.sleeping[index].store(true, Ordering::SeqCst);
        if epoch() == seen {
            std::thread::park();
        }
        shared.sleeping[index].store(false, Ordering::SeqCst);
    }
}

/// The number of parts [`run`] splits work into: the calling context's rayon thread count (1 in a
/// one-thread pool), at most the helpers plus the caller.
pub(crate) fn parts() -> usize {
    rayon::current_num_threads().min(helper_count() + 1)
}

/// Runs `f(0) .. f(parts - 1)` on the calling thread and the spinning helpers, each part once,
/// whoever claims it first; every part on the calling thread when the helpers are taken.
pub(crate) fn run(parts: usize, f: &(dyn Fn(usize) + Sync)) {
    let shared = shared();
    if parts <= 1 || parts as u64 > FIELD || shared.sleeping.is_empty() || shared.busy.swap(true, Ordering::Acquire) {
        (0..parts).for_each(f);
        return;
    }
    let job = Job { f };
    let epoch = ((shared.state.load(Ordering::Relaxed) >> 32) + 1) & EPOCHS;
    shared.done.store(0, Ordering::Relaxed);
    shared.job.store((&job as *const Job<'_>).cast_mut().cast(), Ordering::Release);
    shared.state.store(epoch << 32 | (parts as u64) << 16, Ordering::SeqCst);
    let threads = shared.threads.get().expect("helpers started with the pool");
    for (sleeping, thread) in shared.sleeping.iter().zip(threads) {
        if sleeping.load(Ordering::SeqCst) {
            thread.unpark();
        }
    }
    let mut mine = 0;
    while let Some(part) = claim(shared, epoch) {
        f(part);
        mine += 1;
    }
    // Parts a helper claimed: wait for them, yielding so that a descheduled helper gets the core.
    let mut spins = 0u32;
    while shared.done.load(Ordering::Acquire) + mine < parts {
        spins += 1;
        if spins < 256 {
            core::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
    shared.busy.store(false, Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::sync::atomic::AtomicU32;

    #[test]
    fn every_part_runs_once() {
        for parts in [1, 2, parts()] {
            for _ in 0..1000 {
                let hits: Vec<AtomicU32> = (0..parts).map(|_| AtomicU32::new(0)).collect();
                run(parts, &|i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
            }
        }
    }

    #[test]
    fn concurrent_callers_each_get_all_their_parts() {
        let parts = parts().max(2);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..500 {
                        let sum = AtomicUsize::new(0);
                        run(parts, &|i| {
                            sum.fetch_add(i + 1, Ordering::Relaxed);
                        });
                        assert_eq!(sum.load(Ordering::Relaxed), parts * (parts + 1) / 2);
                    }
                });
            }
        });
    }
}
