//! The CPU backend that the workspace's tests run on: the binary's default CPU backend.
//!
//! One alias so that the whole test suite (parity fixtures, exact resume, importers) runs on the
//! backend users get: Burn's Flex under this crate's default `flex` feature (so `cargo test -p X`
//! and `cargo test --workspace` run on the same backend), NdArray without it.

/// The default CPU backend, `f32` floats.
#[cfg(feature = "flex")]
pub type Cpu = burn::backend::Flex;

/// The default CPU backend, `f32` floats.
#[cfg(not(feature = "flex"))]
pub type Cpu = burn::backend::NdArray<f32>;

#[cfg(test)]
mod tests {
    use burn::tensor::{Distribution, Tensor};

    use super::Cpu;

    /// A one-row product (each decoded token's) gives the same bits on one thread and on several
    /// (Flex's is split over threads by columns: vendor/burn-flex), for a row-major weight and a
    /// transposed one (a tied embedding as the output head), and matches a naive f64 product; so
    /// does its transpose, a one-column product (the tied head's `table @ x^T`, split by rows).
    #[test]
    fn one_row_products_do_not_depend_on_the_thread_count() {
        let device = Default::default();
        // 1000 columns: not a multiple of 64, so the last block is ragged.
        let (k, n) = (512, 1000);
        let x = Tensor::<Cpu, 2>::random([1, k], Distribution::Normal(0.0, 1.0), &device);
        let w = Tensor::<Cpu, 2>::random([k, n], Distribution::Normal(0.0, 1.0), &device);
        let w_t = Tensor::<Cpu, 2>::random([n, k], Distribution::Normal(0.0, 1.0), &device);
        for (weight, one_column) in
            [(w.clone(), false), (w_t.clone().transpose(), false), (w, true), (w_t.transpose(), true)]
        {
            let product = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let (x, weight) = (x.clone(), weight.clone());
                // `[n, k] x [k, 1]`: the same dot products, one per output row.
                let y = pool
                    .install(|| if one_column { weight.transpose().matmul(x.transpose()) } else { x.matmul(weight) });
                assert_eq!(y.dims(), if one_column { [n, 1] } else { [1, n] });
                y.into_data().to_vec::<f32>().unwrap()
            };
            let one = product(1);
            for threads in [2, 3, 7] {
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&product(threads)), bits(&one), "{threads} threads");
            }
            // Several threads at once: one holds the spinning helpers (vendor/burn-flex patch 7),
            // the others compute their products alone; every result is the same bits.
            std::thread::scope(|s| {
                let handles: Vec<_> =
                    (0..4).map(|_| s.spawn(|| (0..50).map(|_| product(2)).collect::<Vec<_>>())).collect();
                for handle in handles {
                    for got in handle.join().unwrap() {
                        assert!(got.iter().zip(&one).all(|(a, b)| a.to_bits() == b.to_bits()), "concurrent products");
                    }
                }
            });
            let (xs, ws) = (x.to_data().to_vec::<f32>().unwrap(), weight.to_data().to_vec::<f32>().unwrap());
            for (j, got) in one.iter().enumerate() {
                let want: f64 = (0..k).map(|i| xs[i] as f64 * ws[i * n + j] as f64).sum();
                assert!((*got as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()), "column {j}: {got} vs {want}");
            }
        }
    }

    /// Large same-shape element-wise ops (Flex splits them over threads in chunks, and computes a
    /// shared left operand chunk by chunk on a copy: vendor/burn-flex patch 8) equal the scalar op
    /// element by element at any thread count, whether the left operand is shared or not, and
    /// leave a shared operand unchanged.
    #[test]
    fn large_element_wise_ops_equal_the_scalar_ones_on_any_thread_count() {
        let device = Default::default();
        // 2^19 + 37 elements: over the parallel threshold, the last chunk ragged.
        let n = (1 << 19) + 37;
        let a = Tensor::<Cpu, 1>::random([n], Distribution::Normal(0.0, 1.0), &device);
        let b = Tensor::<Cpu, 1>::random([n], Distribution::Uniform(0.5, 2.0), &device);
        let (av, bv) = (a.to_data().to_vec::<f32>().unwrap(), b.to_data().to_vec::<f32>().unwrap());
        type Op = fn(Tensor<Cpu, 1>, Tensor<Cpu, 1>) -> Tensor<Cpu, 1>;
        type Scalar = fn(f32, f32) -> f32;
        let ops: [(&str, Op, Scalar); 4] = [
            ("add", |x, y| x + y, |x, y| x + y),
            ("sub", |x, y| x - y, |x, y| x - y),
            ("mul", |x, y| x * y, |x, y| x * y),
            ("div", |x, y| x / y, |x, y| x / y),
        ];
        for (name, op, scalar) in ops {
            let want: Vec<u32> = av.iter().zip(&bv).map(|(&x, &y)| scalar(x, y).to_bits()).collect();
            for threads in [1, 2, 3] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let bits = |t: Tensor<Cpu, 1>| {
                    t.into_data().to_vec::<f32>().unwrap().iter().map(|x| x.to_bits()).collect::<Vec<_>>()
                };
                // `a` stays alive: the op sees a shared left operand.
                let shared = pool.install(|| op(a.clone(), b.clone()));
                assert_eq!(bits(shared), want, "{name}, shared, {threads} threads");
                let unique = Tensor::<Cpu, 1>::from_data(a.to_data(), &device);
                let unique = pool.install(|| op(unique, b.clone()));
                assert_eq!(bits(unique), want, "{name}, unique, {threads} threads");
            }
            assert_eq!(a.to_data().to_vec::<f32>().unwrap(), av, "{name} changed its shared operand");
        }
    }
}
