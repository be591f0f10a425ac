//! Whole-tensor sums whose order does not depend on thread scheduling.
//!
//! Burn's Flex backend sums a contiguous tensor of 4 Mi elements or more with rayon's parallel
//! `sum`, whose reduction tree follows work stealing: one tensor can sum to values that differ in
//! their last bits from run to run, and a gradient norm that differs so breaks exact resume. Its
//! sums along a dimension go row by row (rows in parallel, each row in order), so summing rows of
//! at most 64 Ki elements first and then the row sums gives the same bits at any thread count (the
//! row sums are far fewer than 4 Mi). Used wherever a trainer's number comes from a large tensor.

use burn::tensor::{Tensor, backend::Backend};

/// The longest row: a divisor of the element count, so that the reshape needs no padding.
const MAX_ROW: usize = 1 << 16;

/// The sum of every element, as a one-element tensor.
pub fn sum<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, 1> {
    let n = x.shape().num_elements();
    if n <= MAX_ROW {
        return x.sum();
    }
    let row = (1..=MAX_ROW).rev().find(|r| n.is_multiple_of(*r)).unwrap_or(1);
    x.reshape([n / row, row]).sum_dim(1).sum()
}

/// The mean of every element, as a one-element tensor.
pub fn mean<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, 1> {
    let n = x.shape().num_elements();
    sum(x).div_scalar(n.max(1) as f64)
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Distribution, Tensor, TensorData, Tolerance};

    type B = crate::cpu::Cpu;

    #[test]
    fn sums_and_means_equal_the_plain_ones() {
        let device = Default::default();
        // 3 x 5 x 7 x 1,001 elements: more than one row, a row length that is not a power of two.
        let x = Tensor::<B, 4>::random([3, 5, 7, 1001], Distribution::Normal(0.0, 1.0), &device);
        let plain = x.clone().sum().into_data();
        super::sum(x.clone()).into_data().assert_approx_eq::<f32>(&plain, Tolerance::relative(1e-4));
        let plain = x.clone().mean().into_data();
        super::mean(x).into_data().assert_approx_eq::<f32>(&plain, Tolerance::relative(1e-4));
        let small = Tensor::<B, 1>::from_data(TensorData::from([1.0f32, 2.0, 3.5]), &device);
        assert_eq!(super::sum(small).into_scalar(), 6.5);
    }
}
