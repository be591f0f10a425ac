//! dijiang patch (change 10): `exp` and `sigmoid` of f32 tensors computed by a branch-free
//! polynomial that the compiler vectorises, instead of one call of the C library's scalar `expf`
//! per element.
//!
//! In a SmolLM2-shaped prefill, SiLU's sigmoid (the MLP's gate, and the swish output gate) and the
//! feature maps' `exp` spent ~16% of all samples in `__expf_fma` and the loop calling it
//! (docs/profile.md). No well-kept crate gives a vectorised f32 `exp` with runtime CPU dispatch on
//! stable Rust (`wide` picks its SIMD width at compile time, `sleef` needs nightly), hence this file.
//!
//! The lane function uses only IEEE additions, multiplications, divisions, comparisons and bit
//! operations, with no fused multiply-add (Rust never contracts `a * b + c`), so a lane computed in a
//! 16-wide AVX-512 register, an 8-wide AVX2 one or on its own gives the same bits: results do not
//! depend on the CPU's vector width, the thread count or the tensor's layout.
//!
//! Accuracy: Cephes' `expf` reduction and polynomial; measured against f64 on 2.3 M values from
//! -104 to 89, exp within 0.94 ulp, sigmoid within 2.1 ulp; subnormal results, infinities and NaN
//! as `f32::exp` (`dijiang_kernel::cpu`'s test
//! `exp_and_sigmoid_are_accurate_and_the_same_bits_in_every_layout`: this crate's own tests do not
//! run in the workspace).

/// `e^x` for one lane: `x = n ln 2 + r`, `|r| <= ln 2 / 2`, `e^r` by a degree-7 polynomial, then
/// scaled by `2^n` in two steps so that subnormal results round once.
#[inline(always)]
pub(crate) fn exp_lane(x: f32) -> f32 {
    const LOG2E: f32 = core::f32::consts::LOG2_E;
    // ln 2 split so that `n * LN2_HI` is exact for |n| <= 2^15.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding it rounds to the nearest integer, kept in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    // Beyond these, e^x is infinite or rounds to zero.
    let xc = x.clamp(-104.0, 88.8);
    let t = xc * LOG2E + ROUND;
    let n = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let nf = t - ROUND;
    let r = xc - nf * LN2_HI - nf * LN2_LO;
    let mut p = 1.987_569_2e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5.000_000_1e-1;
    let y = p * (r * r) + r + 1.0;
    // 2^n = 2^n1 2^n2 with both factors normal for n in [-150, 128].
    let n1 = n >> 1;
    let n2 = n - n1;
    let pow2 = |k: i32| f32::from_bits(((k + 127) as u32) << 23);
    let e = y * pow2(n1) * pow2(n2);
    if x.is_nan() { x } else { e }
}

/// `1 / (1 + e^-x)`, as upstream's `sigmoid_f32` computes it (`e^x / (1 + e^x)` below zero)
/// with [`exp_lane`], branch-free.
#[inline(always)]
pub(crate) fn sigmoid_lane(x: f32) -> f32 {
    let e = exp_lane(-x.abs());
    let num = if x >= 0.0 { 1.0 } else { e };
    num / (1.0 + e)
}

/// `f` on every element of `s`, compiled for the widest vector unit this CPU has.
#[inline(always)]
fn map<F: Fn(f32) -> f32 + Copy>(s: &mut [f32], f: F) {
    #[inline(always)]
    fn run<F: Fn(f32) -> f32>(s: &mut [f32], f: F) {
        s.iter_mut().for_each(|x| *x = f(*x));
    }
    #[cfg(all(target_arch = "x86_64", feature = "std"))]
    {
        #[target_feature(enable = "avx512f")]
        fn v4<F: Fn(f32) -> f32>(s: &mut [f32], f: F) {
            run(s, f)
        }
        #[target_feature(enable = "avx2")]
        fn v3<F: Fn(f32) -> f32>(s: &mut [f32], f: F) {
            run(s, f)
        }
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F.
            return unsafe { v4(s, f) };
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            return unsafe { v3(s, f) };
        }
    }
    run(s, f)
}

/// `e^x` of every element, in place.
pub(crate) fn exp_in_place(s: &mut [f32]) {
    map(s, exp_lane)
}

/// dijiang patch (change 13): `e^(x - shift)` of every element, in place (a softmax row's
/// exponentials after its maximum; the subtraction rounds as written before the lane function).
pub(crate) fn exp_shifted_in_place(s: &mut [f32], shift: f32) {
    map(s, move |x| exp_lane(x - shift))
}

/// `sigmoid(x)` of every element, in place.
pub(crate) fn sigmoid_in_place(s: &mut [f32]) {
    map(s, sigmoid_lane)
}
