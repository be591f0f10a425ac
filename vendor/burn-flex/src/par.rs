//! dijiang patch: element-wise maps over large contiguous buffers, split over rayon's threads.
//!
//! Upstream runs unary and scalar element-wise ops on the calling thread, so in a training step
//! one core computed `exp` over the logits, GELU, scaling and the like while the other waited
//! (docs/profile.md). Each element's result does not depend on the split, so the output is the
//! same bit for bit at any thread count. Below `PAR_MIN` elements rayon's hand-over costs more
//! than the second core gains.

use alloc::vec::Vec;

/// Elements below which a map stays on the calling thread (1 MiB of f32).
pub(crate) const PAR_MIN: usize = 1 << 18;
#[cfg(feature = "rayon")]
const CHUNK: usize = 1 << 15;

/// `x = f(x)` for every element.
pub(crate) fn map_inplace<E, F>(s: &mut [E], f: F)
where
    E: Copy + Send + Sync,
    F: Fn(E) -> E + Sync + Send,
{
    #[cfg(feature = "rayon")]
    if s.len() >= PAR_MIN {
        use rayon::prelude::*;
        s.par_chunks_mut(CHUNK).for_each(|c| c.iter_mut().for_each(|x| *x = f(*x)));
        return;
    }
    s.iter_mut().for_each(|x| *x = f(*x));
}

/// `f(x)` of every element, in order.
pub(crate) fn map_collect<E, R, F>(s: &[E], f: F) -> Vec<R>
where
    E: Copy + Send + Sync,
    R: Send,
    F: Fn(E) -> R + Sync + Send,
{
    #[cfg(feature = "rayon")]
    if s.len() >= PAR_MIN {
        use rayon::prelude::*;
        let mut out = Vec::with_capacity(s.len());
        s.par_iter().with_min_len(CHUNK).map(|&x| f(x)).collect_into_vec(&mut out);
        return out;
    }
    s.iter().map(|&x| f(x)).collect()
}

#[cfg(all(test, feature = "rayon"))]
mod tests {
    use super::*;

    #[test]
    fn large_maps_equal_the_sequential_ones() {
        let n = PAR_MIN * 3 + 17;
        let src: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
        let want: Vec<f32> = src.iter().map(|x| x.exp() * 0.5).collect();
        assert_eq!(map_collect(&src, |x: f32| x.exp() * 0.5), want);
        let mut inplace = src.clone();
        map_inplace(&mut inplace, |x: f32| x.exp() * 0.5);
        assert_eq!(inplace, want);
    }
}
