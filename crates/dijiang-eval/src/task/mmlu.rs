//! MMLU, 57 subjects (lm-eval `mmlu/default`): each subject is a task whose zero-shot context is
//! its description, `"The following are multiple choice questions (with answers) about
//! {subject with spaces}.\n\n"`, then
//! `"{question.strip()}\nA. {c0}\nB. {c1}\nC. {c2}\nD. {c3}\nAnswer:"`; the choices are the letters
//! `A`..`D`, gold `answer`. The group `mmlu` is the mean over all questions (lm-eval weights the
//! subjects by size).

use std::path::Path;

use serde::Deserialize;

use super::Doc;
use super::python::strip;
use crate::data::read_rows;
use crate::error::EvalError;

/// The 57 subjects and their lm-eval category (`tag: mmlu_<category>_tasks`).
pub const MMLU_SUBJECTS: [(&str, &str); 57] = [
    ("abstract_algebra", "stem"),
    ("anatomy", "stem"),
    ("astronomy", "stem"),
    ("business_ethics", "other"),
    ("clinical_knowledge", "other"),
    ("college_biology", "stem"),
    ("college_chemistry", "stem"),
    ("college_computer_science", "stem"),
    ("college_mathematics", "stem"),
    ("college_medicine", "other"),
    ("college_physics", "stem"),
    ("computer_security", "stem"),
    ("conceptual_physics", "stem"),
    ("econometrics", "social_sciences"),
    ("electrical_engineering", "stem"),
    ("elementary_mathematics", "stem"),
    ("formal_logic", "humanities"),
    ("global_facts", "other"),
    ("high_school_biology", "stem"),
    ("high_school_chemistry", "stem"),
    ("high_school_computer_science", "stem"),
    ("high_school_european_history", "humanities"),
    ("high_school_geography", "social_sciences"),
    ("high_school_government_and_politics", "social_sciences"),
    ("high_school_macroeconomics", "social_sciences"),
    ("high_school_mathematics", "stem"),
    ("high_school_microeconomics", "social_sciences"),
    ("high_school_physics", "stem"),
    ("high_school_psychology", "social_sciences"),
    ("high_school_statistics", "stem"),
    ("high_school_us_history", "humanities"),
    ("high_school_world_history", "humanities"),
    ("human_aging", "other"),
    ("human_sexuality", "social_sciences"),
    ("international_law", "humanities"),
    ("jurisprudence", "humanities"),
    ("logical_fallacies", "humanities"),
    ("machine_learning", "stem"),
    ("management", "other"),
    ("marketing", "other"),
    ("medical_genetics", "other"),
    ("miscellaneous", "other"),
    ("moral_disputes", "humanities"),
    ("moral_scenarios", "humanities"),
    ("nutrition", "other"),
    ("philosophy", "humanities"),
    ("prehistory", "humanities"),
    ("professional_accounting", "other"),
    ("professional_law", "humanities"),
    ("professional_medicine", "other"),
    ("professional_psychology", "social_sciences"),
    ("public_relations", "social_sciences"),
    ("security_studies", "social_sciences"),
    ("sociology", "social_sciences"),
    ("us_foreign_policy", "social_sciences"),
    ("virology", "other"),
    ("world_religions", "humanities"),
];

/// The lm-eval category of an MMLU subject (`stem`, `humanities`, `social_sciences`, `other`).
pub fn mmlu_category(subject: &str) -> Option<&'static str> {
    MMLU_SUBJECTS.iter().find(|(s, _)| *s == subject).map(|(_, c)| *c)
}

#[derive(Deserialize)]
struct Row {
    question: String,
    subject: String,
    choices: Vec<String>,
    answer: usize,
}

fn doc(r: Row) -> Result<Doc, String> {
    if mmlu_category(&r.subject).is_none() {
        return Err(format!("subject `{}` is not one of the 57 MMLU subjects", r.subject));
    }
    let [a, b, c, d] = r.choices.as_slice() else {
        return Err(format!("{} choices where MMLU has 4", r.choices.len()));
    };
    let description = format!(
        "The following are multiple choice questions (with answers) about {}.\n\n",
        r.subject.replace('_', " ")
    );
    let question = strip(&r.question);
    let context = format!("{description}{question}\nA. {a}\nB. {b}\nC. {c}\nD. {d}\nAnswer:");
    let letters = ["A", "B", "C", "D"].map(String::from).to_vec();
    let mut doc = Doc::multiple_choice(&context, letters, r.answer)?;
    doc.subject = Some(r.subject);
    Ok(doc)
}

pub(super) fn load(path: &Path) -> Result<Vec<Doc>, EvalError> {
    read_rows(path, doc)
}
