//! The fuzz campaigns as tests, in a binary whose global allocator accounts every input's memory:
//! a few seconds of each target on a fixed seed (`DIJIANG_FUZZ_SECONDS`, default 2), every saved
//! regression, and, ignored unless asked for, a campaign at length (`just fuzz PARSER N`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use dijiang_fuzz::alloc::BoundedAlloc;
use dijiang_fuzz::{Input, Settings, campaign, targets};

#[global_allocator]
static ALLOC: BoundedAlloc = BoundedAlloc;

fn seeds_of(target: &targets::Target) -> Vec<Input> {
    (target.seeds)().unwrap_or_else(|e| panic!("{}: making the seeds: {e:#}", target.name))
}

/// The bounded slice of one target that the test suite runs.
fn slice(name: &str) {
    let target = targets::find(name).expect("a target");
    let seconds = std::env::var("DIJIANG_FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let seeds = seeds_of(target);
    let report = campaign::run(target, &seeds, &Settings::slice(seconds));
    println!("{report}");
    assert!(report.failures.is_empty(), "{report}");
    assert!(report.clean > 0, "{name}: no seed loads cleanly, the seeds are broken\n{report}");
}

macro_rules! slices {
    ($($test:ident => $name:literal),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                slice($name);
            }
        )*
    };
}

slices!(
    slice_gguf => "gguf",
    slice_llama2c => "llama2c",
    slice_hf => "hf",
    slice_native => "native",
    slice_tokbin => "tokbin",
    slice_tokenizer_json => "tokenizer-json",
    slice_manifest => "manifest",
    slice_jsonl => "jsonl",
    slice_zst => "zst",
    slice_text => "text",
    slice_trainer_state => "trainer-state",
    slice_experiment => "experiment",
);

#[test]
fn every_target_has_a_slice() {
    let source = include_str!("fuzz.rs");
    for target in targets::all() {
        assert!(source.contains(&format!("=> \"{}\"", target.name)), "no slice test for {}", target.name);
    }
}

fn regressions_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fuzz-regressions")
}

/// Every input that once failed (`tests/fuzz-regressions/<target>/<case>/`) now ends well.
#[test]
fn regressions() {
    let (mut cases, mut failures) = (0, Vec::new());
    for target_dir in std::fs::read_dir(regressions_dir()).expect("tests/fuzz-regressions") {
        let target_dir = target_dir.unwrap().path();
        if !target_dir.is_dir() {
            continue;
        }
        let name = target_dir.file_name().unwrap().to_string_lossy().into_owned();
        let target = targets::find(&name).unwrap_or_else(|| panic!("{}: no such target", target_dir.display()));
        for case in std::fs::read_dir(&target_dir).unwrap() {
            let case = case.unwrap().path();
            if !case.is_dir() {
                continue;
            }
            let input = Input::read_dir(&case).unwrap();
            if let Some((signature, detail)) = campaign::check(target, &input, Duration::from_secs(20)) {
                failures.push(format!("{}: {signature}\n  {detail}", case.display()));
            }
            cases += 1;
        }
    }
    assert!(cases > 0, "no regressions found in {}", regressions_dir().display());
    assert!(failures.is_empty(), "{} of {cases} regressions fail:\n{}", failures.len(), failures.join("\n"));
}

/// `just fuzz PARSER N`: `FUZZ_TARGET` (a target or `all`), `FUZZ_ITERATIONS` inputs each,
/// `FUZZ_SEED`; failures are minimised into `$CARGO_TARGET_TMPDIR/fuzz-failures/`.
#[test]
#[ignore = "long: run with `just fuzz PARSER N`"]
fn at_length() {
    let var = |k: &str| std::env::var(k).ok();
    let name = var("FUZZ_TARGET").unwrap_or_else(|| "all".into());
    let iterations = var("FUZZ_ITERATIONS").and_then(|n| n.parse().ok()).unwrap_or(100_000);
    let seed = var("FUZZ_SEED").and_then(|n| n.parse().ok()).unwrap_or(0x5eed);
    let chosen: Vec<&'static targets::Target> = match name.as_str() {
        "all" => targets::all().iter().collect(),
        one => vec![targets::find(one).unwrap_or_else(|| {
            let names: Vec<_> = targets::all().iter().map(|t| t.name).collect();
            panic!("no target `{one}`; targets: all, {}", names.join(", "))
        })],
    };
    let save_to = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
    let mut failed = 0;
    for target in chosen {
        println!("fuzzing {} ({}): {iterations} inputs, seed {seed}", target.name, target.about);
        let report = campaign::run(target, &seeds_of(target), &Settings::at_length(iterations, seed, save_to.clone()));
        println!("{report}");
        failed += report.failures.len();
    }
    assert_eq!(failed, 0, "distinct failures found (saved under {})", save_to.display());
}

/// Writes every target's seeds to `FUZZ_SEEDS_OUT/<target>/<n>/` (to hand-make a regression from
/// one, or to look at what a campaign starts from).
#[test]
#[ignore = "a tool: FUZZ_SEEDS_OUT=DIR"]
fn write_seeds() {
    let out = PathBuf::from(std::env::var("FUZZ_SEEDS_OUT").expect("FUZZ_SEEDS_OUT=DIR"));
    for target in targets::all() {
        for (i, seed) in seeds_of(target).iter().enumerate() {
            seed.write(&out.join(target.name).join(i.to_string()), None).unwrap();
        }
    }
}
