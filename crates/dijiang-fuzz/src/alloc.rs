//! The fuzz test binary's global allocator: the system allocator, plus per-thread accounting that
//! a fuzzed input runs under ([`track`] ... [`finish`]): the largest single request and the peak
//! of bytes live on that thread since the input started.
//!
//! The bound itself is applied by the runner after the input ends, so that an input asking for too
//! much is reported (and minimised) like any other failure. Only a request the machine should never
//! be asked for, over [`HARD_LIMIT`], is refused on the spot: an allocator must not unwind, so that
//! one aborts the process with a message naming the input's directory.
//!
//! Memory-mapped files are not allocations, so mapping a large checkpoint costs no budget; reading
//! one tensor into a `Vec` does.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

/// Requests (or live totals) above this abort the process at once: 1 GiB, far above any budget an
/// input of a few MB earns, and small enough that serving it would not endanger a shared machine.
pub const HARD_LIMIT: usize = 1 << 30;

thread_local! {
    static TRACKING: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    /// What to name when aborting (the input's directory), set by [`track`].
    static LABEL: Cell<&'static str> = const { Cell::new("") };
}

/// Whether [`BoundedAlloc`] is the global allocator (it sets this on its first call).
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// What one input allocated on its thread.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// The largest single request, in bytes.
    pub largest: usize,
    /// The peak of bytes allocated and not yet freed on the thread, in bytes.
    pub peak: usize,
}

/// Starts accounting on this thread; `label` names the input if it has to be aborted.
pub fn track(label: &'static str) {
    LIVE.set(0);
    PEAK.set(0);
    LARGEST.set(0);
    LABEL.set(label);
    TRACKING.set(true);
}

/// Stops accounting on this thread and returns what the input used.
pub fn finish() -> Usage {
    TRACKING.set(false);
    Usage { largest: LARGEST.get(), peak: PEAK.get() }
}

/// Whether [`BoundedAlloc`] is installed (accounting is silent otherwise).
pub fn installed() -> bool {
    // Any allocation goes through the global allocator; make sure at least one has.
    drop(std::hint::black_box(vec![0u8; 1]));
    INSTALLED.load(Ordering::Relaxed)
}

fn note_alloc(size: usize) {
    // `try_with`: a thread being torn down may still allocate after its locals are gone.
    let _ = TRACKING.try_with(|tracking| {
        if !tracking.get() {
            return;
        }
        let live = LIVE.get().saturating_add(size);
        LIVE.set(live);
        PEAK.set(PEAK.get().max(live));
        LARGEST.set(LARGEST.get().max(size));
        if size > HARD_LIMIT || live > HARD_LIMIT {
            tracking.set(false);
            abort_over(size, live);
        }
    });
}

fn note_free(size: usize) {
    let _ = TRACKING.try_with(|tracking| {
        if tracking.get() {
            LIVE.set(LIVE.get().saturating_sub(size));
        }
    });
}

/// Decimal digits of `n` into `buf`, without allocating.
fn digits(mut n: usize, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// Reports an allocation over [`HARD_LIMIT`] and aborts (writes to stderr without allocating).
fn abort_over(size: usize, live: usize) -> ! {
    let (mut a, mut b) = ([0u8; 20], [0u8; 20]);
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(b"\ndijiang-fuzz: an input asked for ");
    let _ = err.write_all(digits(size, &mut a));
    let _ = err.write_all(b" bytes with ");
    let _ = err.write_all(digits(live, &mut b));
    let _ = err.write_all(b" bytes live, over the hard limit of 1 GiB; aborting. The input is in ");
    let _ = err.write_all(LABEL.get().as_bytes());
    let _ = err.write_all(b"\n");
    std::process::abort();
}

/// The system allocator with the accounting above. Install it in the fuzz test binary:
/// `#[global_allocator] static ALLOC: BoundedAlloc = BoundedAlloc;`
#[derive(Debug)]
pub struct BoundedAlloc;

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the accounting
// touches only const-initialised thread-locals without destructors, which never allocate.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for BoundedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        INSTALLED.store(true, Ordering::Relaxed);
        note_alloc(layout.size());
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        INSTALLED.store(true, Ordering::Relaxed);
        note_alloc(layout.size());
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note_free(layout.size());
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_free(layout.size());
        note_alloc(new_size);
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn digits_without_allocating() {
        let mut buf = [0u8; 20];
        assert_eq!(super::digits(0, &mut buf), b"0");
        assert_eq!(super::digits(usize::MAX, &mut buf), b"18446744073709551615");
    }
}
