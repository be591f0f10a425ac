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
    /// transposed one (a tied embedding as the output head), and matches a naive f64 product.
    #[test]
    fn one_row_products_do_not_depend_on_the_thread_count() {
        let device = Default::default();
        // 1000 columns: not a multiple of 64, so the last block is ragged.
        let (k, n) = (512, 1000);
        let x = Tensor::<Cpu, 2>::random([1, k], Distribution::Normal(0.0, 1.0), &device);
        let w = Tensor::<Cpu, 2>::random([k, n], Distribution::Normal(0.0, 1.0), &device);
        let w_t = Tensor::<Cpu, 2>::random([n, k], Distribution::Normal(0.0, 1.0), &device);
        for weight in [w, w_t.transpose()] {
            let product = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                pool.install(|| x.clone().matmul(weight.clone()).into_data().to_vec::<f32>().unwrap())
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
}
