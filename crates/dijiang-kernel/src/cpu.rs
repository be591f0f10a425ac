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

    /// An element-wise tensor op and its scalar twin.
    type OpPair<const D: usize> =
        (&'static str, fn(Tensor<Cpu, D>, Tensor<Cpu, D>) -> Tensor<Cpu, D>, fn(f32, f32) -> f32);

    /// Add, sub, mul and div, each as a tensor op and as the scalar op it must equal bit for bit.
    fn four_ops<const D: usize>() -> [OpPair<D>; 4] {
        [
            ("add", |x, y| x + y, |x, y| x + y),
            ("sub", |x, y| x - y, |x, y| x - y),
            ("mul", |x, y| x * y, |x, y| x * y),
            ("div", |x, y| x / y, |x, y| x / y),
        ]
    }

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
        let ops = four_ops::<1>();
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

    /// Element-wise ops against a right operand that is rows at arbitrary strides (Flex takes them
    /// row by row over threads: vendor/burn-flex change 14), such as a per-head decay matrix
    /// broadcast over batch and chunks, a per-row scalar broadcast over batch, or a permuted
    /// operand (and, for add and mul, the same with the operands the other way round), equal the
    /// scalar op on the operand written out, bit for bit, on any thread count, shared or unique.
    #[test]
    fn strided_row_operands_equal_the_scalar_op_on_any_thread_count() {
        use burn::tensor::TensorData;
        let device = Default::default();
        let (b, h, n, c) = (4, 9, 4, 64);
        let big = [b, h, n, c, c]; // 589,824 elements: over Flex's parallel threshold
        let x = Tensor::<Cpu, 5>::random(big, Distribution::Normal(0.0, 1.0), &device);
        let small = Tensor::<Cpu, 5>::random([2, 3, 2, 8, 9], Distribution::Normal(0.0, 1.0), &device);
        let positive = |shape: [usize; 5]| Tensor::<Cpu, 5>::random(shape, Distribution::Uniform(0.5, 2.0), &device);
        let operands: Vec<(&str, Tensor<Cpu, 5>, Tensor<Cpu, 5>)> = vec![
            ("rows strided over heads", x.clone(), positive([1, h, 1, c, c])),
            ("one scalar per row", x.clone(), positive([1, h, 1, c, 1])),
            ("one scalar per matrix", x.clone(), positive([b, h, 1, 1, 1])),
            ("permuted", x.clone(), positive([b, n, h, c, c]).swap_dims(1, 2)),
            ("small, rows and scalars", small.clone(), positive([1, 3, 1, 8, 1])),
            ("small, inner rows", small, positive([2, 1, 2, 1, 9])),
        ];
        let ops = four_ops::<5>();
        let bits =
            |t: Tensor<Cpu, 5>| t.into_data().to_vec::<f32>().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        for (case, lhs, rhs) in operands {
            let shape = lhs.dims();
            let (lv, rv) = (
                lhs.to_data().to_vec::<f32>().unwrap(),
                rhs.clone().expand(shape).into_data().to_vec::<f32>().unwrap(),
            );
            for (name, op, scalar) in ops {
                let want: Vec<u32> = lv.iter().zip(&rv).map(|(&x, &y)| scalar(x, y).to_bits()).collect();
                let swapped: Vec<u32> = lv.iter().zip(&rv).map(|(&x, &y)| scalar(y, x).to_bits()).collect();
                for threads in [1, 2, 3] {
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                    let shared = pool.install(|| op(lhs.clone(), rhs.clone()));
                    assert_eq!(bits(shared), want, "{case}: {name}, shared, {threads} threads");
                    let unique = Tensor::<Cpu, 5>::from_data(TensorData::new(lv.clone(), shape), &device);
                    let unique = pool.install(|| op(unique, rhs.clone()));
                    assert_eq!(bits(unique), want, "{case}: {name}, unique, {threads} threads");
                    let other_way = pool.install(|| op(rhs.clone(), lhs.clone()));
                    assert_eq!(bits(other_way), swapped, "{case}: {name}, operands swapped, {threads} threads");
                }
            }
            assert_eq!(lhs.to_data().to_vec::<f32>().unwrap(), lv, "{case} changed its shared operand");
        }
    }

    /// Views whose rows are contiguous runs (Flex copies them row by row: vendor/burn-flex patch
    /// 11) give the element walk's values: a causal mask broadcast over batch and heads fills the
    /// same elements as the mask written out in full, and a broadcast and a narrowed view read
    /// back as indexing the source gives them.
    #[test]
    fn broadcast_and_gapped_rows_copy_as_the_element_walk() {
        use burn::tensor::{Bool, TensorData};
        let device = Default::default();
        let (b, h, t, s) = (2, 3, 5, 7);
        let scores = Tensor::<Cpu, 4>::random([b, h, t, s], Distribution::Normal(0.0, 1.0), &device);
        let causal = |i: usize, j: usize| j > i + 2;
        let small: Vec<bool> = (0..t * s).map(|e| causal(e / s, e % s)).collect();
        let full: Vec<bool> = (0..b * h).flat_map(|_| small.clone()).collect();
        let mask = Tensor::<Cpu, 4, Bool>::from_data(TensorData::new(small, [1, 1, t, s]), &device);
        let mask_full = Tensor::<Cpu, 4, Bool>::from_data(TensorData::new(full, [b, h, t, s]), &device);
        let bits =
            |x: Tensor<Cpu, 4>| x.into_data().to_vec::<f32>().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(scores.clone().mask_fill(mask, f32::NEG_INFINITY)),
            bits(scores.clone().mask_fill(mask_full, f32::NEG_INFINITY))
        );

        let values: Vec<f32> = (0..t * s).map(|e| e as f32).collect();
        let x = Tensor::<Cpu, 4>::from_data(TensorData::new(values.clone(), [1, 1, t, s]), &device);
        let expanded = x.clone().expand([b, h, t, s]).into_data().to_vec::<f32>().unwrap();
        let want: Vec<f32> = (0..b * h).flat_map(|_| values.clone()).collect();
        assert_eq!(expanded, want);
        let narrowed = x.narrow(3, 1, 4).into_data().to_vec::<f32>().unwrap();
        let want: Vec<f32> = (0..t).flat_map(|i| values[i * s + 1..i * s + 5].to_vec()).collect();
        assert_eq!(narrowed, want);
    }

    /// Causal attention (Flex fuses it: vendor/burn-flex change 12, each head on rayon's workers,
    /// the query rows that see no key of a tile left out of its products) gives the bits of the
    /// same attention with the causal mask written out (every row multiplied, then masked), on any
    /// thread count: past Flex's untiled budget (600 x 600 scores), queries aligned with the last
    /// keys after a cache (400 x 700), and untiled (37 x 37; change 13's blocks of causal rows:
    /// 300 x 300, 200 x 500, and 70 x 40 whose first 30 queries see no key).
    #[test]
    fn causal_attention_skips_tiles_without_changing_a_bit() {
        use burn::tensor::module::attention;
        use burn::tensor::ops::AttentionModuleOptions;
        use burn::tensor::{Bool, TensorData};
        let device = Default::default();
        let normal = Distribution::Normal(0.0, 1.0);
        // Flex's tiled form (the first two) and its naive form (the score matrix under 256 Ki
        // elements), one block of causal rows and several (vendor/burn-flex change 13).
        for (t, tk) in [(600, 600), (400, 700), (37, 37), (300, 300), (200, 500), (70, 40)] {
            let q = Tensor::<Cpu, 4>::random([2, 3, t, 16], normal, &device);
            let k = Tensor::<Cpu, 4>::random([2, 3, tk, 16], normal, &device);
            let v = Tensor::<Cpu, 4>::random([2, 3, tk, 16], normal, &device);
            // Query i sits at position tk - t + i and sees the keys up to it (none before 0).
            let offset = tk as isize - t as isize;
            let masked: Vec<bool> = (0..t * tk).map(|e| (e % tk) as isize > (e / tk) as isize + offset).collect();
            let mask = Tensor::<Cpu, 4, Bool>::from_data(TensorData::new(masked, [1, 1, t, tk]), &device);
            let run = |threads: usize, causal: bool| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let options = AttentionModuleOptions { scale: None, softcap: None, is_causal: causal };
                let mask = (!causal).then(|| mask.clone());
                let out = pool.install(|| attention(q.clone(), k.clone(), v.clone(), mask, None, options));
                out.into_data().to_vec::<f32>().unwrap().iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            };
            let want = run(1, false);
            for threads in [1, 2, 3] {
                assert!(run(threads, true) == want, "{t} x {tk}, {threads} threads");
            }
        }
    }

    /// `exp` and `sigmoid` (Flex computes f32 ones with a vectorised polynomial: vendor/burn-flex
    /// patch 10) are within 1 ulp (sigmoid 2.5) of the exact f64 values from -104 to 89, give
    /// `f32::exp`'s infinities, zeros and NaN, and give the same bits whatever the layout (unique,
    /// shared, transposed, offset, strided: the last runs element by element) and thread count.
    #[test]
    fn exp_and_sigmoid_are_accurate_and_the_same_bits_in_every_layout() {
        use burn::tensor::activation::sigmoid;
        use burn::tensor::{TensorData, s};
        let device = Default::default();
        // Every 997th f32 magnitude below 104 (negative) and 89 (positive): ~2.3 M values.
        let mut values: Vec<f32> = (0..104f32.to_bits()).step_by(997).map(|b| -f32::from_bits(b)).collect();
        values.extend((0..89f32.to_bits()).step_by(997).map(f32::from_bits));
        values.extend([0.0, -0.0, 88.72283, 88.7229, -87.33655, -103.97, 1e-30, -1e-30, 200.0, -200.0]);
        values.extend([f32::INFINITY, f32::NEG_INFINITY, f32::NAN]);
        values.resize(values.len().div_ceil(64) * 64, 0.5);
        let n = values.len();
        let x = Tensor::<Cpu, 1>::from_data(TensorData::new(values.clone(), [n]), &device);
        let ulps = |got: f32, want: f64| {
            let w = want as f32;
            if got.to_bits() == w.to_bits() {
                return 0.0;
            }
            let ulp = (f32::from_bits(w.abs().to_bits() + 1) - w.abs()) as f64;
            (got as f64 - want).abs() / ulp
        };
        type Op = fn(Tensor<Cpu, 2>) -> Tensor<Cpu, 2>;
        type Exact = fn(f64) -> f64;
        let ops: [(&str, Op, Exact, f64); 2] =
            [("exp", |t| t.exp(), f64::exp, 1.0), ("sigmoid", sigmoid, |x| 1.0 / (1.0 + (-x).exp()), 2.5)];
        let flat = |t: Tensor<Cpu, 2>| t.into_data().to_vec::<f32>().unwrap();
        let rows = x.clone().reshape([n / 64, 64]);
        for (name, op, exact, bound) in ops {
            let got = flat(op(x.clone().reshape([1, n])));
            let mut worst = 0.0f64;
            for (&v, &g) in values.iter().zip(&got) {
                let want = exact(v as f64);
                if v.is_nan() {
                    assert!(g.is_nan(), "{name}(NaN) = {g}");
                } else if want > f32::MAX as f64 {
                    assert_eq!(g, f32::INFINITY, "{name}({v})");
                } else if want < f32::MIN_POSITIVE as f64 {
                    // A subnormal result rounds once: within one subnormal step.
                    assert!((g as f64 - want).abs() <= f32::from_bits(1) as f64, "{name}({v}) = {g}, want {want}");
                } else {
                    worst = worst.max(ulps(g, want));
                }
            }
            assert!(worst <= bound, "{name}: worst error {worst} ulp");
            let bits = |t: Tensor<Cpu, 2>| flat(t).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            let want: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
            for threads in [1, 3] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                pool.install(|| {
                    let unique = Tensor::<Cpu, 2>::from_data(rows.to_data(), &device);
                    assert_eq!(bits(op(unique)), want, "{name}, unique, {threads} threads");
                    assert_eq!(bits(op(rows.clone())), want, "{name}, shared, {threads} threads");
                    let transposed = op(rows.clone().transpose()).transpose();
                    assert_eq!(bits(transposed), want, "{name}, transposed, {threads} threads");
                    let offset = op(rows.clone().slice(s![1.., ..]));
                    assert_eq!(bits(offset), want[64..].to_vec(), "{name}, offset, {threads} threads");
                    let strided = op(rows.clone().slice(s![.., 0..32]));
                    let want_strided: Vec<u32> = want.chunks(64).flat_map(|row| row[..32].to_vec()).collect();
                    assert_eq!(bits(strided), want_strided, "{name}, strided, {threads} threads");
                });
            }
        }
    }
}
