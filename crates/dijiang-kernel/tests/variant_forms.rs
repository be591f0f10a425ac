//! The normalised and sliding-window hybrid variants of causal linear attention: their chunked and
//! recurrent forms agree with their quadratic twins in values, final states and gradients (through
//! Burn autodiff) on awkward sizes (odd lengths, head sizes that are not powers of two, chunks
//! that do not divide the length, windows of 1 and longer than the sequence), with grouped-query
//! heads and a mix of decays; prefill then decoding equals one pass; and the quadratic twins
//! match scalar f64 loops written from the definitions.

use burn::backend::Autodiff;
use burn::tensor::{Tensor, TensorData, backend::AutodiffBackend};
use dijiang_kernel::linear_attention::{
    HybridInputs, WindowState, hybrid_chunked, hybrid_parallel, hybrid_recurrent, normalized_chunked,
    normalized_parallel, normalized_recurrent,
};
use rand::{RngExt, SeedableRng, rngs::StdRng};

mod common;
use common::{assert_close, flat};

/// The normaliser's epsilon. Every form adds it the same way, so its value does not change what is
/// compared; it is larger than the model's (1e-6) because at t = 1 a normalised output is `v_0`
/// up to `eps`, and its gradient with respect to the features, `O(eps / score)`, is then the
/// difference of two near-equal f32 terms: relative to its own tiny scale, round-off would exceed
/// the tolerance whatever the form.
const EPS: f64 = 1e-2;
/// Batch 2, 4 query heads over 2 key/value heads; decays: none, then the reference's range.
const B: usize = 2;
const HQ: usize = 4;
const HKV: usize = 2;
const GAMMAS: [f64; HQ] = [1.0, 0.96875, 0.99, 0.998];

type Cpu = Autodiff<dijiang_kernel::cpu::Cpu>;

/// Host-side inputs: raw q, k (for the window's softmax; logits of a few units), features phi(q),
/// phi(k) (positive, rows summing to about 1 like the reference map), v, and a fixed cotangent.
struct Case {
    t: usize,
    d: usize,
    m: usize,
    q: Vec<f32>,
    k: Vec<f32>,
    phi_q: Vec<f32>,
    phi_k: Vec<f32>,
    v: Vec<f32>,
    cotangent: Vec<f32>,
}

impl Case {
    fn new(t: usize, d: usize, m: usize, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut draw = |n: usize, lo: f32, hi: f32| -> Vec<f32> { (0..n).map(|_| rng.random_range(lo..hi)).collect() };
        let feature = 2.0 / m as f32;
        Self {
            t,
            d,
            m,
            q: draw(B * HQ * t * d, -2.0, 2.0),
            k: draw(B * HKV * t * d, -2.0, 2.0),
            phi_q: draw(B * HQ * t * m, 0.0, feature),
            phi_k: draw(B * HKV * t * m, 0.0, feature),
            v: draw(B * HKV * t * d, -1.0, 1.0),
            cotangent: draw(B * HQ * t * d, -1.0, 1.0),
        }
    }

    /// The inputs as tracked tensors (d_v = d).
    fn inputs<AB: AutodiffBackend>(&self, device: &AB::Device) -> HybridInputs<AB> {
        let tensor = |values: &[f32], heads: usize, e: usize| {
            Tensor::<AB, 4>::from_data(TensorData::new(values.to_vec(), [B, heads, self.t, e]), device).require_grad()
        };
        let log_decay: Vec<f32> = GAMMAS.iter().map(|g| g.ln() as f32).collect();
        HybridInputs {
            q: tensor(&self.q, HQ, self.d),
            k: tensor(&self.k, HKV, self.d),
            phi_q: tensor(&self.phi_q, HQ, self.m),
            phi_k: tensor(&self.phi_k, HKV, self.m),
            v: tensor(&self.v, HKV, self.d),
            log_decay: Tensor::<AB, 1>::from_data(TensorData::new(log_decay, [HQ]), device).require_grad(),
        }
    }
}

/// Values, final state tensors (where the form has them) and the gradients of
/// `sum(output * cotangent)` with respect to every input, flattened to f64.
struct Outcome {
    output: Vec<f64>,
    state: Vec<Vec<f64>>,
    grads: Vec<(&'static str, Vec<f64>)>,
}

fn run<AB: AutodiffBackend>(
    case: &Case,
    device: &AB::Device,
    form: impl Fn(HybridInputs<AB>) -> (Tensor<AB, 4>, Vec<Tensor<AB, 4>>),
) -> Outcome {
    let x = case.inputs::<AB>(device);
    let (output, state) = form(x.clone());
    let cotangent =
        Tensor::<AB, 4>::from_data(TensorData::new(case.cotangent.clone(), [B, HQ, case.t, case.d]), device);
    let grads = (output.clone() * cotangent).sum().backward();
    // An input a form does not read (q, k in the pure normalised form) has no gradient: zeros.
    let grad = |x: &Tensor<AB, 4>| {
        x.grad(&grads).map(|g| flat(g.into_data())).unwrap_or_else(|| vec![0.0; x.dims().iter().product()])
    };
    Outcome {
        output: flat(output.into_data()),
        state: state.into_iter().map(|s| flat(s.into_data())).collect(),
        grads: vec![
            ("q", grad(&x.q)),
            ("k", grad(&x.k)),
            ("phi_q", grad(&x.phi_q)),
            ("phi_k", grad(&x.phi_k)),
            ("v", grad(&x.v)),
            ("ln gamma", flat(x.log_decay.grad(&grads).expect("gradient").into_data())),
        ],
    }
}

fn assert_same(what: &str, got: &Outcome, want: &Outcome) {
    assert_close(&format!("{what} output"), &got.output, &want.output);
    for ((name, g), (_, w)) in got.grads.iter().zip(&want.grads) {
        assert_close(&format!("{what} d/d{name}"), g, w);
    }
}

fn assert_same_state(what: &str, got: &Outcome, want: &Outcome) {
    assert_eq!(got.state.len(), want.state.len());
    for (i, (g, w)) in got.state.iter().zip(&want.state).enumerate() {
        assert_close(&format!("{what} final state tensor {i}"), g, w);
    }
}

fn window_state<AB: AutodiffBackend>(s: WindowState<AB>) -> Vec<Tensor<AB, 4>> {
    vec![s.linear, s.keys, s.features, s.values]
}

fn normalized_state<AB: AutodiffBackend>(case: &Case, device: &AB::Device) -> Tensor<AB, 4> {
    Tensor::zeros([B, HQ, case.m, case.d + 1], device)
}

// ---------------------------------------------------------------------------------------------
// Normalised form

fn check_normalized(t: usize, m: usize, chunks: &[usize]) {
    let device = Default::default();
    let case = Case::new(t, m, m, (t * 1000 + m) as u64);
    let reference =
        run::<Cpu>(&case, &device, |x| (normalized_parallel(x.phi_q, x.phi_k, x.v, x.log_decay, EPS), vec![]));
    let stepwise = run::<Cpu>(&case, &device, |x| {
        let (o, s) = normalized_recurrent(x.phi_q, x.phi_k, x.v, x.log_decay, normalized_state(&case, &device), EPS);
        (o, vec![s])
    });
    assert_same(&format!("normalised recurrent t={t} m={m}"), &stepwise, &reference);
    for &c in chunks {
        let blocked = run::<Cpu>(&case, &device, |x| {
            let state = normalized_state(&case, &device);
            let (o, s) = normalized_chunked(x.phi_q, x.phi_k, x.v, x.log_decay, c, state, EPS);
            (o, vec![s])
        });
        let what = format!("normalised chunked c={c} t={t} m={m}");
        assert_same(&what, &blocked, &reference);
        assert_same_state(&what, &blocked, &stepwise);
    }
}

#[test]
fn normalized_forms_agree_in_values_states_and_gradients() {
    for t in [1, 7, 63, 64, 65] {
        check_normalized(t, 12, &[16, 10]);
    }
    check_normalized(65, 60, &[64]);
}

#[test]
fn normalized_parallel_matches_the_definition() {
    // o[b, i, n] = sum_j w_j v_j / (sum_j w_j + eps), w_j = gamma_i^(n - j) phi(q_n) . phi(k_j), in f64.
    let device = Default::default();
    let (t, m) = (9, 5);
    let case = Case::new(t, m, m, 3);
    let got = run::<Cpu>(&case, &device, |x| (normalized_parallel(x.phi_q, x.phi_k, x.v, x.log_decay, EPS), vec![]));
    let at =
        |x: &[f32], heads: usize, b: usize, h: usize, n: usize, e: usize| x[((b * heads + h) * t + n) * m + e] as f64;
    let mut want = Vec::new();
    for b in 0..B {
        for h in 0..HQ {
            let kv = h / (HQ / HKV);
            let weight = |n: usize, j: usize| {
                let score: f64 =
                    (0..m).map(|f| at(&case.phi_q, HQ, b, h, n, f) * at(&case.phi_k, HKV, b, kv, j, f)).sum();
                GAMMAS[h].powi((n - j) as i32) * score
            };
            for n in 0..t {
                let den: f64 = (0..=n).map(|j| weight(n, j)).sum::<f64>() + EPS;
                for e in 0..m {
                    let num: f64 = (0..=n).map(|j| weight(n, j) * at(&case.v, HKV, b, kv, j, e)).sum();
                    want.push(num / den);
                }
            }
        }
    }
    assert_close("normalised parallel vs definition", &got.output, &want);
}

#[test]
fn normalized_chunked_continues_from_a_handed_over_state() {
    let device = Default::default();
    let (t, m, split) = (90, 8, 37);
    let case = Case::new(t, m, m, 42);
    let whole = run::<Cpu>(&case, &device, |x| (normalized_parallel(x.phi_q, x.phi_k, x.v, x.log_decay, EPS), vec![]));
    let resumed = run::<Cpu>(&case, &device, |x| {
        let (head, tail) = (x.narrow(0, split), x.narrow(split, t - split));
        let state = normalized_state(&case, &device);
        let (o1, s1) = normalized_chunked(head.phi_q, head.phi_k, head.v, head.log_decay, 16, state, EPS);
        let (o2, s2) = normalized_recurrent(tail.phi_q, tail.phi_k, tail.v, tail.log_decay, s1, EPS);
        (Tensor::cat(vec![o1, o2], 2), vec![s2])
    });
    assert_same("normalised prefill + decode", &resumed, &whole);
}

// ---------------------------------------------------------------------------------------------
// Sliding-window hybrid

fn check_hybrid<AB: AutodiffBackend>(
    case: &Case,
    window: usize,
    chunks: &[usize],
    recurrent: bool,
    device: &AB::Device,
) {
    let (t, d) = (case.t, case.d);
    let reference = run::<AB>(case, device, |x| (hybrid_parallel(x, window), vec![]));
    let stepwise = recurrent.then(|| {
        let outcome = run::<AB>(case, device, |x| {
            let state = WindowState::empty(&x, window);
            let (o, s) = hybrid_recurrent(x, state);
            (o, window_state(s))
        });
        assert_same(&format!("hybrid recurrent W={window} t={t} d={d}"), &outcome, &reference);
        outcome
    });
    for &c in chunks {
        let blocked = run::<AB>(case, device, |x| {
            let state = WindowState::empty(&x, window);
            let (o, s) = hybrid_chunked(x, c, state);
            (o, window_state(s))
        });
        let what = format!("hybrid chunked c={c} W={window} t={t} d={d}");
        assert_same(&what, &blocked, &reference);
        if let Some(stepwise) = &stepwise {
            assert_same_state(&what, &blocked, stepwise);
        }
    }
}

#[test]
fn hybrid_forms_agree_in_values_states_and_gradients() {
    let device = Default::default();
    for t in [1, 7, 63, 64, 65] {
        let case = Case::new(t, 12, 20, (t * 7 + 1) as u64);
        // W = 1 (the window is the query alone), inside the sequence, a chunk's length, longer than it.
        for window in [1, 5, 16, 100] {
            check_hybrid::<Cpu>(&case, window, &[16, 10], true, &device);
        }
    }
    let case = Case::new(65, 60, 60, 11);
    check_hybrid::<Cpu>(&case, 64, &[64, 24], true, &device);
}

#[test]
fn hybrid_chunked_and_recurrent_continue_from_a_handed_over_state() {
    // Prefill, a second chunked call (t > 1 from a state), then one token at a time: the same as
    // one pass, for windows shorter and longer than the first prefill.
    let device = Default::default();
    let (t, first, second) = (80, 20, 33);
    let case = Case::new(t, 12, 20, 5);
    for window in [1, 7, 16, 30] {
        let whole = run::<Cpu>(&case, &device, |x| (hybrid_parallel(x, window), vec![]));
        let resumed = run::<Cpu>(&case, &device, |x| {
            let state = WindowState::empty(&x, window);
            let (o1, s1) = hybrid_chunked(x.narrow(0, first), 16, state);
            let (o2, s2) = hybrid_chunked(x.narrow(first, second), 8, s1);
            let (o3, s3) = hybrid_recurrent(x.narrow(first + second, t - first - second), s2);
            assert_eq!(s3.seen, t);
            (Tensor::cat(vec![o1, o2, o3], 2), window_state(s3))
        });
        assert_same(&format!("hybrid W={window} prefill + prefill + decode"), &resumed, &whole);
        let recurrent = run::<Cpu>(&case, &device, |x| {
            let state = WindowState::empty(&x, window);
            let (o, s) = hybrid_recurrent(x, state);
            (o, window_state(s))
        });
        assert_same_state(&format!("hybrid W={window} resumed"), &resumed, &recurrent);
    }
}

#[test]
fn hybrid_parallel_matches_the_definition() {
    // o_n = (sum_{n-j<W} e^(s_nj - M_n) v_j + sum_{n-j>=W} gamma^(n-j) phi_q.phi_k v_j) / (same without v), f64.
    let device = Default::default();
    let (t, d, m, window) = (11, 5, 6, 3);
    let case = Case::new(t, d, m, 8);
    let got = run::<Cpu>(&case, &device, |x| (hybrid_parallel(x, window), vec![]));
    let at = |x: &[f32], heads: usize, e: usize, b: usize, h: usize, n: usize, f: usize| {
        x[((b * heads + h) * t + n) * e + f] as f64
    };
    let dot =
        |x: &[f32], y: &[f32], hx: usize, hy: usize, e: usize, b: usize, h: usize, kv: usize, n: usize, j: usize| {
            (0..e).map(|f| at(x, hx, e, b, h, n, f) * at(y, hy, e, b, kv, j, f)).sum::<f64>()
        };
    let mut want = Vec::new();
    for b in 0..B {
        for h in 0..HQ {
            let kv = h / (HQ / HKV);
            for n in 0..t {
                let window_keys: Vec<usize> = (n.saturating_sub(window - 1)..=n).collect();
                let score = |j: usize| dot(&case.q, &case.k, HQ, HKV, d, b, h, kv, n, j) / (d as f64).sqrt();
                let max = window_keys.iter().map(|&j| score(j)).fold(f64::NEG_INFINITY, f64::max);
                let weight = |j: usize| {
                    if n - j < window {
                        (score(j) - max).exp()
                    } else {
                        GAMMAS[h].powi((n - j) as i32) * dot(&case.phi_q, &case.phi_k, HQ, HKV, m, b, h, kv, n, j)
                    }
                };
                let den: f64 = (0..=n).map(weight).sum();
                for e in 0..d {
                    let num: f64 = (0..=n).map(|j| weight(j) * at(&case.v, HKV, d, b, kv, j, e)).sum();
                    want.push(num / den);
                }
            }
        }
    }
    assert_close("hybrid parallel vs definition", &got.output, &want);
}

#[test]
fn a_window_longer_than_the_sequence_is_softmax_attention() {
    // W >= t: no key is outside the window, so the hybrid is causal softmax attention exactly.
    let device = Default::default();
    let (t, d) = (13, 6);
    let case = Case::new(t, d, 4, 21);
    let x = case.inputs::<Cpu>(&device);
    let got = flat(hybrid_chunked(x.clone(), 4, WindowState::empty(&x, t)).0.into_data());
    let mask = Tensor::<Cpu, 2, burn::tensor::Bool>::tril_mask([t, t], 0, &device).reshape([1, 1, t, t]);
    // Repeat key/value heads by hand: query head i reads head i / 2.
    let expand = |y: Tensor<Cpu, 4>| {
        let [b, h, n, e] = y.dims();
        y.unsqueeze_dim::<5>(2).expand([b, h, HQ / HKV, n, e]).reshape([b, HQ, n, e])
    };
    let scores = x.q.clone().matmul(expand(x.k.clone()).swap_dims(2, 3)).div_scalar((d as f64).sqrt());
    let rows = burn::tensor::activation::softmax(scores.mask_fill(mask, f32::NEG_INFINITY), 3);
    let want = flat(rows.matmul(expand(x.v.clone())).into_data());
    assert_close("hybrid with W >= t vs softmax", &got, &want);
}

#[cfg(feature = "wgpu-tests")]
#[test]
fn hybrid_chunked_agrees_with_parallel_on_wgpu() {
    type Gpu = Autodiff<burn::backend::Wgpu>;
    let device = burn::backend::wgpu::WgpuDevice::default();
    for t in [7, 65] {
        let case = Case::new(t, 12, 20, t as u64);
        for window in [1, 16] {
            check_hybrid::<Gpu>(&case, window, &[16], false, &device);
        }
        let gpu = run::<Gpu>(&case, &device, |x| (hybrid_parallel(x, 16), vec![]));
        let cpu = run::<Cpu>(&case, &Default::default(), |x| (hybrid_parallel(x, 16), vec![]));
        assert_close(&format!("wgpu vs ndarray t={t}"), &gpu.output, &cpu.output);
    }
}
