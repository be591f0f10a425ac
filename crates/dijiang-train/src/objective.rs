//! What a stage minimises: a weighted sum of loss terms.
//!
//! Every term is a variant of [`Term`]: its name (the key in an experiment's `loss = { ... }` and
//! the metric tag `train/NAME`), what it reads from the two models, and its computation. A new term
//! is a new variant here (the compiler then points at every `match` to complete, all in this file);
//! the experiment parser, the plan, the trainer's logs and the benchmark read terms only through
//! this module.

use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::fmt;

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use dijiang_data::dataset::LmBatch;
use dijiang_model::{LayerTrace, Trace, Transformer};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::losses::{
    IGNORED, cross_entropy_train, kl_divergence_train, mse, reverse_kl_divergence_train, row_kl, unlikelihood_train,
    weighted_kl_divergence_train,
};
use crate::on_policy::repeated_tokens;
use crate::transfer::{lift, shares_heads};

/// One loss term.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Term {
    /// Next-token cross-entropy on the data.
    Lm,
    /// KL(teacher || student) of the next-token distributions at the objective's temperature.
    Kl,
    /// KL(student || teacher), the mode-seeking direction, at the same temperature.
    ReverseKl,
    /// MSE between the teacher's and the student's attention outputs (after `o`), per layer, on
    /// the teacher's layer input; mean over layers.
    Attention,
    /// KL between the teacher's softmax attention rows and the student's rows (normalised by their
    /// sums), per layer, on the teacher's layer input; mean over rows, heads and layers (Hedgehog's
    /// attention distillation). It trains the feature map and decay, not the gate or GroupNorm.
    AttentionRows,
    /// Sequence-level unlikelihood on an on-policy rollout: `-ln(1 - p)` of every token the student
    /// wrote that belongs to a 4-gram it already wrote earlier in the same continuation (Welleck et
    /// al., arXiv 1908.04319), averaged over the written positions. The KL to the teacher on such
    /// text teaches the loop on (the teacher continues a repeated phrase too, once it is in
    /// context); this term pushes the repeated words down instead.
    Unlikelihood,
}

impl Term {
    /// Every term, in the order a loss sums them.
    pub const ALL: [Term; 6] =
        [Term::Lm, Term::Kl, Term::ReverseKl, Term::Attention, Term::AttentionRows, Term::Unlikelihood];

    /// The term's key in experiment files and its metric tag (`train/NAME`).
    pub fn name(self) -> &'static str {
        match self {
            Term::Lm => "lm",
            Term::Kl => "kl",
            Term::ReverseKl => "reverse_kl",
            Term::Attention => "attention",
            Term::AttentionRows => "attention_rows",
            Term::Unlikelihood => "unlikelihood",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Whether the term reads the frozen teacher at all.
    pub fn needs_teacher(self) -> bool {
        match self {
            Term::Lm | Term::Unlikelihood => false,
            Term::Kl | Term::ReverseKl | Term::Attention | Term::AttentionRows => true,
        }
    }

    /// Whether the term reads the teacher's logits (a full teacher forward with its LM head).
    pub fn needs_teacher_logits(self) -> bool {
        matches!(self, Term::Kl | Term::ReverseKl)
    }

    /// Whether the term is computed layer by layer on the teacher's layer inputs, without an
    /// end-to-end student forward.
    pub fn is_layer_local(self) -> bool {
        match self {
            Term::Lm | Term::Kl | Term::ReverseKl | Term::Unlikelihood => false,
            Term::Attention | Term::AttentionRows => true,
        }
    }

    /// The term's value on one micro-batch (differentiable through the student).
    fn loss<B: AutodiffBackend>(self, f: &Forward<'_, B>, objective: &Objective) -> Tensor<B, 1> {
        let temperature = objective.temperature;
        match self {
            Term::Lm => cross_entropy_train(f.student_logits().clone(), f.batch.targets.clone()),
            Term::Kl => {
                let teacher = f.trace().logits.as_ref().expect("traced with logits: Kl needs them").clone();
                if objective.written_kl == 1.0 {
                    return kl_divergence_train(teacher, f.student_logits().clone(), temperature);
                }
                // The data's positions weigh 1, the student's written ones `written_kl`.
                let [b, t] = f.batch.targets.dims();
                let data = f.batch.targets.clone().not_equal_elem(IGNORED).float().reshape([b, t, 1]);
                let weights = data.clone() + data.neg().add_scalar(1.0).mul_scalar(objective.written_kl);
                weighted_kl_divergence_train(teacher, f.student_logits().clone(), temperature, weights)
            }
            Term::ReverseKl => {
                let teacher = f.trace().logits.as_ref().expect("traced with logits: ReverseKl needs them");
                reverse_kl_divergence_train(teacher.clone(), f.student_logits().clone(), temperature)
            }
            Term::Unlikelihood => {
                let (unlikely, positions) = repeated_tokens(f.batch);
                unlikelihood_train(f.student_logits().clone(), unlikely, positions)
            }
            Term::Attention | Term::AttentionRows => {
                let parts: Vec<Tensor<B, 1>> = (f.trace().layers.iter().enumerate())
                    .map(|(i, trace)| self.layer_loss(f.student(), i, &lift(trace), f.shared_heads()))
                    .collect();
                Tensor::cat(parts, 0).mean()
            }
        }
    }

    /// A layer-local term's value at one layer, on the teacher's trace of that layer (lifted to
    /// the student's backend; constants to autodiff). `shared_heads`: see
    /// [`Transformer::layer_attention_on`].
    fn layer_loss<B: AutodiffBackend>(
        self,
        student: &Transformer<B>,
        layer: usize,
        trace: &LayerTrace<B>,
        shared_heads: bool,
    ) -> Tensor<B, 1> {
        match self {
            Term::Attention => mse(student.layer_attention_on(layer, trace, shared_heads), trace.attention.clone()),
            Term::AttentionRows => {
                let teacher = trace.rows.clone().expect("traced with rows: AttentionRows needs them");
                let n = teacher.dims()[2];
                row_kl(teacher, student.layer_rows_on(layer, trace, shared_heads, n))
            }
            Term::Lm | Term::Kl | Term::ReverseKl | Term::Unlikelihood => unreachable!("{self} is not layer-local"),
        }
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The forward passes the terms of one micro-batch read, each computed once, on first use.
struct Forward<'a, B: AutodiffBackend> {
    /// `None` when the logits are given (block recomputation) and no term reads the layers.
    student: Option<&'a Transformer<B>>,
    teacher: Option<&'a Transformer<B::InnerBackend>>,
    batch: &'a LmBatch<B::InnerBackend>,
    /// How many positions' attention rows the teacher's trace carries (some term needs them).
    teacher_rows: Option<usize>,
    /// Whether the teacher's trace carries its logits (some term needs them).
    teacher_logits: bool,
    /// Whether the teacher's trace keeps its layers (some term is layer-local; without one, only
    /// the logits are kept: the layers' traces would hold ~6 hidden-sized tensors per layer).
    teacher_layers: bool,
    trace: OnceCell<Trace<B::InnerBackend>>,
    logits: OnceCell<Tensor<B, 3>>,
    shared_heads: OnceCell<bool>,
}

impl<B: AutodiffBackend> Forward<'_, B> {
    fn teacher(&self) -> &Transformer<B::InnerBackend> {
        self.teacher.expect("checked by Objective::loss: a term that needs the teacher has one")
    }

    fn trace(&self) -> &Trace<B::InnerBackend> {
        self.trace.get_or_init(|| {
            let (tokens, rows) = (self.batch.inputs.clone(), self.teacher_rows);
            if self.teacher_layers {
                self.teacher().trace(tokens, rows, self.teacher_logits)
            } else {
                let logits = self.teacher().trace_layers(tokens, rows, self.teacher_logits, drop);
                Trace { layers: Vec::new(), logits }
            }
        })
    }

    fn student(&self) -> &Transformer<B> {
        self.student.expect("only objectives without layer terms are given logits instead of the student")
    }

    fn student_logits(&self) -> &Tensor<B, 3> {
        self.logits.get_or_init(|| self.student().forward(Tensor::from_inner(self.batch.inputs.clone())))
    }

    fn shared_heads(&self) -> bool {
        *self.shared_heads.get_or_init(|| shares_heads(self.student(), self.teacher()))
    }
}

/// The numbers of one loss: each term's value (unweighted) and the weighted total.
#[derive(Debug, Clone, PartialEq)]
pub struct TermValues {
    pub terms: Vec<(Term, f64)>,
    pub total: f64,
}

impl TermValues {
    /// Zeros for `objective`'s terms (the start of an accumulation).
    pub fn zeros(objective: &Objective) -> Self {
        Self { terms: objective.terms().map(|(t, _)| (t, 0.0)).collect(), total: 0.0 }
    }

    /// Adds `other` (of the same objective) times `scale`.
    pub fn add_scaled(&mut self, other: &TermValues, scale: f64) {
        for ((_, a), (_, b)) in self.terms.iter_mut().zip(&other.terms) {
            *a += b * scale;
        }
        self.total += other.total * scale;
    }

    /// The values as one vector (terms in order, then the total), for averaging across workers.
    pub fn to_vec(&self) -> Vec<f64> {
        self.terms.iter().map(|(_, v)| *v).chain([self.total]).collect()
    }

    /// The inverse of [`TermValues::to_vec`] for the same terms.
    pub fn with_values(&self, values: &[f64]) -> Self {
        assert_eq!(values.len(), self.terms.len() + 1, "one value per term and the total");
        let terms = self.terms.iter().zip(values).map(|((t, _), v)| (*t, *v)).collect();
        Self { terms, total: values[self.terms.len()] }
    }

    /// `(train/NAME, value)` for each term.
    pub fn tagged(&self) -> Vec<(String, f64)> {
        self.terms.iter().map(|(t, v)| (format!("train/{t}"), *v)).collect()
    }
}

/// A stage's loss: term weights (only terms with a positive weight are computed), the KL
/// temperature and how many positions the row KL reads. In experiment files:
/// `loss = { kl = 1.0, lm = 0.1, temperature = 2.0 }`, `loss = { attention_rows = 1.0, rows_len = 256 }`.
#[derive(Debug, Clone, PartialEq)]
pub struct Objective {
    weights: BTreeMap<Term, f64>,
    temperature: f64,
    /// `attention_rows` on the first `n` positions of each block only (`None`: all of them). The
    /// row KL is quadratic in length (`[heads, t, t]` per layer, with its backward): on 1,024-token
    /// blocks it made an attention-transfer step ~5x slower than the output term alone. A
    /// prefix's rows are exact (causal queries see only earlier keys), they cover the distances
    /// up to `n`, and the output term still sees the whole block.
    rows_len: Option<usize>,
    /// The weight of the `kl` term at an on-policy rollout's written positions against 1 at the
    /// data's (`written_kl = 0`: the KL on the data's prefix only). On the student's own looping
    /// text the teacher continues the loop too, so its KL there teaches the loop (measured:
    /// docs/conversion-start.md, thirty-fifth session). 1 by default: every position alike.
    written_kl: f64,
}

impl Objective {
    /// An objective of the given term weights, temperature 1.
    pub fn new(weights: impl IntoIterator<Item = (Term, f64)>) -> Self {
        Self { weights: weights.into_iter().collect(), temperature: 1.0, rows_len: None, written_kl: 1.0 }
    }

    /// The row KL on the first `n` positions of each block only (see the field).
    pub fn with_rows_len(self, n: usize) -> Self {
        Self { rows_len: Some(n), ..self }
    }

    pub fn with_temperature(self, temperature: f64) -> Self {
        Self { temperature, ..self }
    }

    /// The `kl` term's weight at on-policy written positions (see the field).
    pub fn with_written_kl(self, written_kl: f64) -> Self {
        Self { written_kl, ..self }
    }

    pub fn written_kl(&self) -> f64 {
        self.written_kl
    }

    pub fn temperature(&self) -> f64 {
        self.temperature
    }

    /// The terms that count (positive weight), in summation order, with their weights.
    pub fn terms(&self) -> impl Iterator<Item = (Term, f64)> + '_ {
        self.weights.iter().filter(|(_, w)| **w > 0.0).map(|(t, w)| (*t, *w))
    }

    pub fn weight(&self, term: Term) -> f64 {
        self.weights.get(&term).copied().unwrap_or(0.0)
    }

    pub fn needs_teacher(&self) -> bool {
        self.terms().any(|(t, _)| t.needs_teacher())
    }

    pub fn needs_teacher_logits(&self) -> bool {
        self.terms().any(|(t, _)| t.needs_teacher_logits())
    }

    /// Whether any term is computed layer by layer (attention transfer).
    pub fn has_layer_local_terms(&self) -> bool {
        self.terms().any(|(t, _)| t.is_layer_local())
    }

    /// Whether every term is computed layer by layer: then a step needs no student forward
    /// beyond each layer's attention, and streams the teacher's layers (`transfer`).
    pub fn is_layer_local(&self) -> bool {
        self.terms().all(|(t, _)| t.is_layer_local())
    }

    /// Whether the teacher's trace must carry its attention rows.
    pub fn needs_teacher_rows(&self) -> bool {
        self.weight(Term::AttentionRows) > 0.0
    }

    /// How many positions' rows the teacher's trace of a `t`-token block carries: `None` when no
    /// term reads them.
    pub fn teacher_rows(&self, t: usize) -> Option<usize> {
        self.needs_teacher_rows().then(|| self.rows_len.map_or(t, |n| n.min(t)))
    }

    /// The weighted loss of one layer of a layer-local objective ([`Objective::is_layer_local`])
    /// on the teacher's trace of that layer (lifted to the student's backend), and its terms as
    /// numbers. The objective's loss is the mean of these over layers.
    pub fn layer_loss<B: AutodiffBackend>(
        &self,
        student: &Transformer<B>,
        layer: usize,
        trace: &LayerTrace<B>,
        shared_heads: bool,
    ) -> (Tensor<B, 1>, TermValues) {
        self.weighted(|term| term.layer_loss(student, layer, trace, shared_heads))
    }

    /// Constraints serde cannot express.
    pub fn validate(&self) -> Result<(), String> {
        // NaN fails every check: `w >= 0.0` is false for it.
        let valid_weights = self.weights.values().all(|w| *w >= 0.0) && self.terms().next().is_some();
        if !valid_weights || self.temperature.is_nan() || self.temperature <= 0.0 {
            return Err("loss weights must be >= 0 with at least one > 0, temperature > 0".into());
        }
        if !(self.written_kl >= 0.0 && self.written_kl <= 1.0) {
            return Err(format!(
                "{WRITTEN_KL} = {}: a weight in 0..=1 (1: the written positions count as the data's)",
                self.written_kl
            ));
        }
        if self.written_kl != 1.0 && self.weight(Term::Kl) == 0.0 {
            return Err(format!("{WRITTEN_KL} weighs the kl term's written positions, but the loss has no kl term"));
        }
        if self.rows_len.is_some() && !self.needs_teacher_rows() {
            return Err(format!("{ROWS_LEN} is set but no term reads the rows: add attention_rows or drop {ROWS_LEN}"));
        }
        Ok(())
    }

    /// `kl 1 + lm 0.1 (temperature 2)`, for plans and logs.
    pub fn describe(&self) -> String {
        let terms: Vec<String> = self.terms().map(|(t, w)| format!("{t} {w}")).collect();
        let temperature =
            if self.needs_teacher_logits() { format!(" (temperature {})", self.temperature) } else { String::new() };
        let rows = self.rows_len.map(|n| format!(" (rows of the first {n} positions)")).unwrap_or_default();
        let written = if self.written_kl != 1.0 {
            format!(" (kl {} on written positions)", self.written_kl)
        } else {
            String::new()
        };
        format!("{}{temperature}{rows}{written}", terms.join(" + "))
    }

    /// The weighted loss of one micro-batch, what a training step differentiates, and its terms as
    /// numbers. `teacher` may be `None` only when no term needs it.
    pub fn loss<B: AutodiffBackend>(
        &self,
        student: &Transformer<B>,
        teacher: Option<&Transformer<B::InnerBackend>>,
        batch: &LmBatch<B::InnerBackend>,
    ) -> (Tensor<B, 1>, TermValues) {
        assert!(teacher.is_some() || !self.needs_teacher(), "the objective {} needs the teacher", self.describe());
        let forward = Forward {
            student: Some(student),
            teacher,
            batch,
            teacher_rows: self.teacher_rows(batch.inputs.dims()[1]),
            teacher_logits: self.needs_teacher_logits(),
            teacher_layers: self.has_layer_local_terms(),
            trace: OnceCell::new(),
            logits: OnceCell::new(),
            shared_heads: OnceCell::new(),
        };
        self.weighted(|term| term.loss(&forward, self))
    }

    /// The weighted loss of one micro-batch from the student's logits (computed by the caller, as
    /// block recomputation does from the last block's output) and, when a term reads them, the
    /// teacher's logits; the same value as [`Objective::loss`]. Only for objectives without
    /// layer-local terms ([`Objective::has_layer_local_terms`]).
    pub fn loss_from_logits<B: AutodiffBackend>(
        &self,
        student_logits: Tensor<B, 3>,
        teacher_logits: Option<Tensor<B::InnerBackend, 3>>,
        batch: &LmBatch<B::InnerBackend>,
    ) -> (Tensor<B, 1>, TermValues) {
        assert!(!self.has_layer_local_terms(), "the objective {} reads the layers, not only logits", self.describe());
        assert!(teacher_logits.is_some() || !self.needs_teacher_logits(), "the objective needs the teacher's logits");
        let forward = Forward::<B> {
            student: None,
            teacher: None,
            batch,
            teacher_rows: None,
            teacher_logits: false,
            teacher_layers: false,
            trace: OnceCell::from(Trace { layers: Vec::new(), logits: teacher_logits }),
            logits: OnceCell::from(student_logits),
            shared_heads: OnceCell::new(),
        };
        self.weighted(|term| term.loss(&forward, self))
    }

    /// The weighted sum of the terms' values `value(term)`, and the values as numbers.
    fn weighted<B: AutodiffBackend>(&self, value: impl Fn(Term) -> Tensor<B, 1>) -> (Tensor<B, 1>, TermValues) {
        let mut values = TermValues { terms: Vec::new(), total: 0.0 };
        let mut total: Option<Tensor<B, 1>> = None;
        for (term, weight) in self.terms() {
            let loss = value(term);
            values.terms.push((term, scalar(&loss)));
            let weighted = loss.mul_scalar(weight);
            total = Some(match total {
                Some(sum) => sum + weighted,
                None => weighted,
            });
        }
        let total = total.expect("validated: at least one term");
        values.total = scalar(&total);
        (total, values)
    }
}

fn scalar<B: Backend>(x: &Tensor<B, 1>) -> f64 {
    x.clone().into_scalar().elem::<f64>()
}

const TEMPERATURE: &str = "temperature";
const ROWS_LEN: &str = "rows_len";
const WRITTEN_KL: &str = "written_kl";

impl Serialize for Objective {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map: BTreeMap<&str, f64> = self.weights.iter().map(|(t, w)| (t.name(), *w)).collect();
        map.insert(TEMPERATURE, self.temperature);
        if let Some(n) = self.rows_len {
            map.insert(ROWS_LEN, n as f64);
        }
        if self.written_kl != 1.0 {
            map.insert(WRITTEN_KL, self.written_kl);
        }
        map.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Objective {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<String, f64>::deserialize(deserializer)?;
        let mut objective = Objective::new([]);
        for (key, value) in map {
            if key == TEMPERATURE {
                objective.temperature = value;
                continue;
            }
            if key == WRITTEN_KL {
                objective.written_kl = value;
                continue;
            }
            if key == ROWS_LEN {
                if value < 1.0 || value.fract() != 0.0 {
                    return Err(D::Error::custom(format!("{ROWS_LEN} = {value}: a number of positions, >= 1")));
                }
                objective.rows_len = Some(value as usize);
                continue;
            }
            let term = Term::from_name(&key).ok_or_else(|| {
                let known: Vec<&str> = Term::ALL.iter().map(|t| t.name()).collect();
                D::Error::custom(format!(
                    "unknown loss term `{key}` (terms: {}; and {TEMPERATURE}, {ROWS_LEN}, {WRITTEN_KL})",
                    known.join(", ")
                ))
            })?;
            objective.weights.insert(term, value);
        }
        Ok(objective)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_rejects_unknown_terms() {
        let o: Objective =
            toml::from_str::<toml::Table>("loss = { kl = 1.0, lm = 0.1, temperature = 2.0 }").unwrap()["loss"]
                .clone()
                .try_into()
                .unwrap();
        assert_eq!(o.terms().collect::<Vec<_>>(), [(Term::Lm, 0.1), (Term::Kl, 1.0)], "summation order");
        assert_eq!(o.temperature(), 2.0);
        assert_eq!(o.describe(), "lm 0.1 + kl 1 (temperature 2)");
        let back: Objective = toml::Value::try_from(&o).unwrap().try_into().unwrap();
        assert_eq!(back, o);
        let err = toml::from_str::<toml::Table>("loss = { klx = 1.0 }").unwrap()["loss"]
            .clone()
            .try_into::<Objective>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown loss term `klx`") && err.contains("attention_rows"), "{err}");
        assert!(Objective::new([(Term::Lm, 0.0)]).validate().is_err(), "a zero weight turns a term off");
        assert!(Objective::new([(Term::Lm, 1.0)]).with_temperature(0.0).validate().is_err());
    }

    fn parse(text: &str) -> Result<Objective, String> {
        toml::from_str::<toml::Table>(text).unwrap()["loss"].clone().try_into::<Objective>().map_err(|e| e.to_string())
    }

    #[test]
    fn rows_len_bounds_the_traced_rows_and_is_checked() {
        let o = parse("loss = { attention_rows = 1.0, attention = 0.1, rows_len = 256 }").unwrap();
        assert_eq!(o, Objective::new([(Term::AttentionRows, 1.0), (Term::Attention, 0.1)]).with_rows_len(256));
        assert_eq!((o.teacher_rows(1024), o.teacher_rows(100)), (Some(256), Some(100)), "at most the block");
        assert_eq!(o.describe(), "attention 0.1 + attention_rows 1 (rows of the first 256 positions)");
        let back: Objective = toml::Value::try_from(&o).unwrap().try_into().unwrap();
        assert_eq!(back, o);
        let all = parse("loss = { attention_rows = 1.0 }").unwrap();
        assert_eq!(all.teacher_rows(1024), Some(1024));
        assert_eq!(parse("loss = { attention = 1.0 }").unwrap().teacher_rows(1024), None);
        for bad in ["0", "2.5", "-4"] {
            let err = parse(&format!("loss = {{ attention_rows = 1.0, rows_len = {bad} }}")).unwrap_err();
            assert!(err.contains("rows_len") && err.contains(">= 1"), "{err}");
        }
        let written = parse("loss = { kl = 1.0, unlikelihood = 1.0, written_kl = 0.0 }").unwrap();
        assert_eq!(written.written_kl(), 0.0);
        assert_eq!(written.describe(), "kl 1 + unlikelihood 1 (temperature 1) (kl 0 on written positions)");
        let back: Objective = toml::Value::try_from(&written).unwrap().try_into().unwrap();
        assert_eq!(back, written);
        let unread = parse("loss = { attention = 1.0, rows_len = 64 }").unwrap().validate().unwrap_err();
        assert!(unread.contains("no term reads the rows"), "{unread}");
    }
}
