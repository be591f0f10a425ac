//! dijiang patch: element-wise maps over large contiguous buffers, split over rayon's threads.
//!
//! Upstream runs unary, scalar and broadcast binary element-wise ops on the calling thread, so in a training step
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

/// `f(first_row, rows)` over `dst` cut into chunks of whole rows of `row_len` elements (one
/// chunk, the whole of `dst`, below `PAR_MIN`).
pub(crate) fn for_row_chunks<E, F>(dst: &mut [E], row_len: usize, f: F)
where
    E: Send,
    F: Fn(usize, &mut [E]) + Sync + Send,
{
    #[cfg(feature = "rayon")]
    if dst.len() >= PAR_MIN && row_len > 0 {
        use rayon::prelude::*;
        let rows = CHUNK.div_ceil(row_len);
        dst.par_chunks_mut(rows * row_len).enumerate().for_each(|(i, c)| f(i * rows, c));
        return;
    }
    f(0, dst)
}

/// A copy of `src` on which `f(first_row, rows)` ran chunk by chunk, as in [`for_row_chunks`]:
/// each chunk is copied and computed by the same thread.
pub(crate) fn copy_then_rows<E, F>(src: &[E], row_len: usize, f: F) -> Vec<E>
where
    E: Copy + Send + Sync,
    F: Fn(usize, &mut [E]) + Sync + Send,
{
    #[cfg(feature = "rayon")]
    if src.len() >= PAR_MIN && row_len > 0 {
        use rayon::prelude::*;
        let rows = CHUNK.div_ceil(row_len);
        let mut out: Vec<E> = Vec::with_capacity(src.len());
        out.spare_capacity_mut()[..src.len()]
            .par_chunks_mut(rows * row_len)
            .zip(src.par_chunks(rows * row_len))
            .enumerate()
            .for_each(|(i, (dst, src))| {
                for (d, s) in dst.iter_mut().zip(src) {
                    d.write(*s);
                }
                // SAFETY: every element of this chunk was just written.
                let dst = unsafe { core::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<E>(), dst.len()) };
                f(i * rows, dst);
            });
        // SAFETY: the chunks cover `0..src.len()` and each was written above.
        unsafe { out.set_len(src.len()) };
        return out;
    }
    let mut out = src.to_vec();
    f(0, &mut out);
    out
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

    /// Row chunks see every row once, with its own index, in place and on a copy.
    #[test]
    fn row_chunks_cover_every_row_with_its_index() {
        for row_len in [1, 3, 1000, PAR_MIN + 5] {
            let rows = PAR_MIN * 2 / row_len + 3;
            let src: Vec<u32> = (0..rows * row_len).map(|i| i as u32).collect();
            let want: Vec<u32> = src.iter().map(|&x| x + 7 * (x / row_len as u32)).collect();
            let add_row_index = |first: usize, c: &mut [u32]| {
                for (r, row) in c.chunks_mut(row_len).enumerate() {
                    row.iter_mut().for_each(|x| *x += 7 * (first + r) as u32);
                }
            };
            assert_eq!(copy_then_rows(&src, row_len, add_row_index), want, "copy, rows of {row_len}");
            let mut inplace = src.clone();
            for_row_chunks(&mut inplace, row_len, add_row_index);
            assert_eq!(inplace, want, "in place, rows of {row_len}");
        }
    }
}
