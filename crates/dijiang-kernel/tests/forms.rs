//! The parallel, chunked and recurrent forms of causal linear attention agree in values, final
//! states and gradients (through Burn autodiff), on awkward sizes, with grouped-query heads and a
//! mix of decays (including none); and the parallel form matches a scalar f64 loop written from the
//! definition.

use burn::backend::Autodiff;
use burn::tensor::{Tensor, TensorData, backend::AutodiffBackend};
use dijiang_kernel::linear_attention::{chunked, parallel, recurrent};
use rand::{RngExt, SeedableRng, rngs::StdRng};

mod common;
use common::{assert_close, flat};

const LENGTHS: [usize; 6] = [1, 7, 63, 64, 65, 257];
const HEAD_SIZES: [usize; 3] = [8, 60, 64];
const CHUNKS: [usize; 2] = [16, 64];

/// Batch 2, 4 query heads over 2 key/value heads; decays: none, then the reference's range.
const B: usize = 2;
const HQ: usize = 4;
const HKV: usize = 2;
const GAMMAS: [f64; HQ] = [1.0, 0.96875, 0.99, 0.998];

/// Host-side inputs: feature-mapped q, k (positive, like softmax features), v, decay, and a fixed
/// cotangent for the gradient check.
struct Case {
    t: usize,
    m: usize,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    cotangent: Vec<f32>,
}

impl Case {
    fn new(t: usize, m: usize, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut draw =
            |n: usize, positive: bool| -> Vec<f32> {
                (0..n)
                    .map(|_| {
                        if positive { rng.random_range(0.0..2.0f32) / m as f32 } else { rng.random_range(-1.0..1.0f32) }
                    })
                    .collect()
            };
        Self {
            t,
            m,
            q: draw(B * HQ * t * m, true),
            k: draw(B * HKV * t * m, true),
            v: draw(B * HKV * t * m, false),
            cotangent: draw(B * HQ * t * m, false),
        }
    }
}

struct Inputs<AB: AutodiffBackend> {
    q: Tensor<AB, 4>,
    k: Tensor<AB, 4>,
    v: Tensor<AB, 4>,
    log_decay: Tensor<AB, 1>,
}

/// Values, final state (where the form has one) and gradients of `sum(output * cotangent)`
/// with respect to q, k, v and ln(gamma), flattened to f64.
struct Outcome {
    output: Vec<f64>,
    state: Option<Vec<f64>>,
    grads: [Vec<f64>; 4],
}

fn run<AB: AutodiffBackend>(
    case: &Case,
    device: &AB::Device,
    form: impl Fn(&Inputs<AB>) -> (Tensor<AB, 4>, Option<Tensor<AB, 4>>),
) -> Outcome {
    let (t, m) = (case.t, case.m);
    let tensor = |values: &[f32], heads: usize| {
        Tensor::<AB, 4>::from_data(TensorData::new(values.to_vec(), [B, heads, t, m]), device).require_grad()
    };
    let log_decay: Vec<f32> = GAMMAS.iter().map(|g| g.ln() as f32).collect();
    let inputs = Inputs {
        q: tensor(&case.q, HQ),
        k: tensor(&case.k, HKV),
        v: tensor(&case.v, HKV),
        log_decay: Tensor::<AB, 1>::from_data(TensorData::new(log_decay, [HQ]), device).require_grad(),
    };
    let (output, state) = form(&inputs);
    let cotangent = Tensor::<AB, 4>::from_data(TensorData::new(case.cotangent.clone(), [B, HQ, t, m]), device);
    let grads = (output.clone() * cotangent).sum().backward();
    let grad = |x: &Tensor<AB, 4>| flat(x.grad(&grads).expect("gradient").into_data());
    Outcome {
        output: flat(output.into_data()),
        state: state.map(|s| flat(s.into_data())),
        grads: [
            grad(&inputs.q),
            grad(&inputs.k),
            grad(&inputs.v),
            flat(inputs.log_decay.grad(&grads).expect("gradient").into_data()),
        ],
    }
}

fn assert_same(what: &str, got: &Outcome, want: &Outcome) {
    assert_close(&format!("{what} output"), &got.output, &want.output);
    for (name, (g, w)) in ["q", "k", "v", "ln gamma"].iter().zip(got.grads.iter().zip(&want.grads)) {
        assert_close(&format!("{what} d/d{name}"), g, w);
    }
}

fn zero_state<AB: AutodiffBackend>(m: usize, device: &AB::Device) -> Tensor<AB, 4> {
    Tensor::zeros([B, HQ, m, m], device)
}

/// Every form against the parallel one, for one length and head size.
fn check_all_forms<AB: AutodiffBackend>(t: usize, m: usize, chunks: &[usize], device: &AB::Device) {
    let case = Case::new(t, m, (t * 1000 + m) as u64);
    let reference =
        run::<AB>(&case, device, |x| (parallel(x.q.clone(), x.k.clone(), x.v.clone(), x.log_decay.clone()), None));
    let stepwise = run::<AB>(&case, device, |x| {
        let (o, s) = recurrent(x.q.clone(), x.k.clone(), x.v.clone(), x.log_decay.clone(), zero_state::<AB>(m, device));
        (o, Some(s))
    });
    assert_same(&format!("recurrent t={t} m={m}"), &stepwise, &reference);
    for &c in chunks {
        let blocked = run::<AB>(&case, device, |x| {
            let (o, s) =
                chunked(x.q.clone(), x.k.clone(), x.v.clone(), x.log_decay.clone(), c, zero_state::<AB>(m, device));
            (o, Some(s))
        });
        let what = format!("chunked c={c} t={t} m={m}");
        assert_same(&what, &blocked, &reference);
        let (got, want) = (blocked.state.as_ref().unwrap(), stepwise.state.as_ref().unwrap());
        assert_close(&format!("{what} final state"), got, want);
    }
}

type Cpu = Autodiff<dijiang_kernel::cpu::Cpu>;

#[test]
fn forms_agree_in_values_states_and_gradients_on_ndarray() {
    let device = Default::default();
    for t in LENGTHS {
        for m in HEAD_SIZES {
            check_all_forms::<Cpu>(t, m, &CHUNKS, &device);
        }
    }
}

#[test]
fn chunked_continues_from_a_handed_over_state() {
    // Prefill 70 positions in chunks, then the rest: the same as one pass (generation hands the
    // prefill's state to decoding this way).
    let device = Default::default();
    let (t, m, split) = (150, 8, 70);
    let case = Case::new(t, m, 42);
    let whole = run::<Cpu>(&case, &device, |x| {
        let (o, s) =
            chunked(x.q.clone(), x.k.clone(), x.v.clone(), x.log_decay.clone(), 16, zero_state::<Cpu>(m, &device));
        (o, Some(s))
    });
    let resumed = run::<Cpu>(&case, &device, |x| {
        let head = |x: &Tensor<Cpu, 4>| x.clone().narrow(2, 0, split);
        let tail = |x: &Tensor<Cpu, 4>| x.clone().narrow(2, split, t - split);
        let (o1, s1) =
            chunked(head(&x.q), head(&x.k), head(&x.v), x.log_decay.clone(), 16, zero_state::<Cpu>(m, &device));
        let (o2, s2) = recurrent(tail(&x.q), tail(&x.k), tail(&x.v), x.log_decay.clone(), s1);
        (Tensor::cat(vec![o1, o2], 2), Some(s2))
    });
    assert_same("prefill + decode", &resumed, &whole);
    assert_close("final state", resumed.state.as_ref().unwrap(), whole.state.as_ref().unwrap());
}

#[test]
fn parallel_matches_the_definition() {
    // o[b, i, n] = sum_{j <= n} gamma_i^(n - j) (q[b, i, n] . k[b, i/g, j]) v[b, i/g, j], in f64.
    let device = Default::default();
    let (t, m) = (9, 5);
    let case = Case::new(t, m, 3);
    let got =
        run::<Cpu>(&case, &device, |x| (parallel(x.q.clone(), x.k.clone(), x.v.clone(), x.log_decay.clone()), None));
    let at =
        |x: &[f32], heads: usize, b: usize, h: usize, n: usize, e: usize| x[((b * heads + h) * t + n) * m + e] as f64;
    let mut want = Vec::new();
    for b in 0..B {
        for h in 0..HQ {
            let kv = h / (HQ / HKV);
            for n in 0..t {
                for e in 0..m {
                    let mut o = 0.0;
                    for j in 0..=n {
                        let score: f64 =
                            (0..m).map(|f| at(&case.q, HQ, b, h, n, f) * at(&case.k, HKV, b, kv, j, f)).sum();
                        o += GAMMAS[h].powi((n - j) as i32) * score * at(&case.v, HKV, b, kv, j, e);
                    }
                    want.push(o);
                }
            }
        }
    }
    assert_close("parallel vs definition", &got.output, &want);
}

#[test]
fn long_sequences_need_no_negative_powers() {
    // 4096 positions with gamma = 0.96875: the reference's gamma^-n would overflow f32 (~1e56);
    // the chunked form stays finite and matches the recurrent one's final state.
    let device = Default::default();
    let (t, m) = (4096, 8);
    let case = Case::new(t, m, 9);
    let blocked = run::<Cpu>(&case, &device, |x| {
        let (o, s) =
            chunked(x.q.clone(), x.k.clone(), x.v.clone(), x.log_decay.clone(), 64, zero_state::<Cpu>(m, &device));
        (o, Some(s))
    });
    assert!(blocked.output.iter().all(|x| x.is_finite()));
    assert!(blocked.grads.iter().flatten().all(|x| x.is_finite()));
}

#[cfg(feature = "wgpu-tests")]
#[test]
fn chunked_agrees_with_parallel_on_wgpu() {
    type Gpu = Autodiff<burn::backend::Wgpu>;
    let device = burn::backend::wgpu::WgpuDevice::default();
    for t in LENGTHS {
        for m in HEAD_SIZES {
            let case = Case::new(t, m, (t * 1000 + m) as u64);
            let reference = run::<Gpu>(&case, &device, |x| {
                (parallel(x.q.clone(), x.k.clone(), x.v.clone(), x.log_decay.clone()), None)
            });
            for c in CHUNKS {
                let blocked = run::<Gpu>(&case, &device, |x| {
                    let (o, s) = chunked(
                        x.q.clone(),
                        x.k.clone(),
                        x.v.clone(),
                        x.log_decay.clone(),
                        c,
                        zero_state::<Gpu>(m, &device),
                    );
                    (o, Some(s))
                });
                assert_same(&format!("wgpu chunked c={c} t={t} m={m}"), &blocked, &reference);
            }
            // And the wgpu result is the CPU backend's result.
            let cpu = run::<Cpu>(&case, &Default::default(), |x| {
                (parallel(x.q.clone(), x.k.clone(), x.v.clone(), x.log_decay.clone()), None)
            });
            assert_close(&format!("wgpu vs ndarray t={t} m={m}"), &reference.output, &cpu.output);
        }
    }
}
