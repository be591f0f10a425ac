//! The C heap's policy for large blocks.
//!
//! glibc serves every allocation above its mmap threshold (at most 32 MiB) from a fresh mapping and
//! unmaps it on free, so each large tensor of each step (pythia-70m's logits at 2048 tokens: 2048 x
//! 50,304 x 4 B = 412 MB, and their gradients) comes as new pages that the kernel zeroes on first
//! touch: 35% of a pythia-70m training step in `perf` (docs/profile.md). Keeping freed memory in the
//! heap lets the next step reuse those pages. Measured on `dijiang bench train --model pythia-70m`
//! (2 cores, release): 143 -> 174 and 157 -> 167 tokens/s at 2048 x 1, 158 -> 202 at 512 x 4.
//! The cost: the process keeps its peak heap until it exits. Values do not change.

/// Before any thread starts: keep freed memory in the heap (unless the user tuned glibc's
/// `MALLOC_*` variables already, which then decide).
#[allow(unsafe_code)]
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_MMAP_MAX_").is_none() && std::env::var_os("MALLOC_TRIM_THRESHOLD_").is_none() {
        // SAFETY: mallopt changes glibc's allocation policy only; it is called at the start of
        // main, before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_MMAP_MAX, 0);
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        }
    }
}
