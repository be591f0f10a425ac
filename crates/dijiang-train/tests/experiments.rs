//! Every experiment file parses and validates; bad keys, types and overrides are errors that say
//! where.

#[path = "../../../tests/support/mod.rs"]
mod support;

use dijiang_train::Experiment;
use support::repo;

fn experiments() -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(repo().join("experiments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_experiment_file_parses_and_validates() {
    let files = experiments();
    assert!(files.iter().any(|f| f.ends_with("default.toml")), "experiments/default.toml exists");
    for file in files {
        let e = Experiment::load(&file, &[]).unwrap_or_else(|err| panic!("{err}"));
        assert!(e.total_steps() > 0, "{}", file.display());
    }
}

fn scratch_experiment(tag: &str, edit: impl Fn(String) -> String) -> std::path::PathBuf {
    let text = std::fs::read_to_string(repo().join("experiments/default.toml")).unwrap();
    let path = std::env::temp_dir().join(format!("dijiang-exp-{tag}-{}.toml", std::process::id()));
    std::fs::write(&path, edit(text)).unwrap();
    path
}

#[test]
fn unknown_keys_and_wrong_types_name_the_key_and_the_file() {
    let path = scratch_experiment("unknown", |t| t.replace("block_size = 1024", "block_size = 1024\nblok_size = 3"));
    let err = Experiment::load(&path, &[]).unwrap_err().to_string();
    assert!(err.contains("blok_size") && err.contains(&path.display().to_string()), "{err}");
    let path = scratch_experiment("type", |t| t.replace("batch_size = 1", "batch_size = \"four\""));
    let err = Experiment::load(&path, &[]).unwrap_err().to_string();
    assert!(err.contains("batch_size") && err.contains("line"), "{err}");
    let path = scratch_experiment("constraint", |t| t.replace("grad_accumulation = 1", "grad_accumulation = 3"));
    let err = Experiment::load(&path, &[]).unwrap_err().to_string();
    assert!(err.contains("multiple of data.grad_accumulation"), "{err}");
}

#[test]
fn dotted_overrides_apply_and_are_checked() {
    let file = repo().join("experiments/default.toml");
    let overrides =
        ["data.batch_size=2".to_string(), "stages.1.steps=70".into(), "student.feature_map=weighted_exp".into()];
    let e = Experiment::load(&file, &overrides).unwrap();
    assert_eq!(e.data.batch_size, 2);
    assert_eq!(e.stages[1].steps, 70);
    assert_eq!(e.student.feature_map, dijiang_model::config::FeatureMapKind::WeightedExp);
    for (bad, says) in [
        ("data.batchsize=2", "batchsize"),
        ("stages.9.steps=1", "past the 2 entries"),
        ("data.batch_size=two", "batch_size"),
        ("nonsense", "key=value"),
        ("student.decay=calibrated", "dijiang convert"),
        ("eval.tasks=[\"piqa\",\"nope\"]", "known tasks: piqa"),
        ("distributed.nodes=2", "orchestrator"),
        ("distributed.node_rank=1", "must be below nodes"),
        ("distributed.chunk_values=0", "chunk_values = 0"),
        ("stages.1.lr_scale.lora=0", "lr_scale multipliers"),
        ("stages.1.lr_scale.loraa=2", "loraa"),
    ] {
        // Batches of 4: divisible across the devices of the distributed cases.
        let err = Experiment::load(&file, &["data.batch_size=4".to_string(), bad.to_string()]).unwrap_err().to_string();
        assert!(err.contains(says), "`{bad}`: {err}");
    }
    // Learning rates per parameter group.
    let e = Experiment::load(&file, &["stages.1.lr_scale.kernel=2".to_string(), "stages.1.lr_scale.lora=3".into()])
        .unwrap();
    let scale = e.stages[1].lr_scale;
    assert_eq!(scale.of("layers.4.attn.kernel.proj"), 2.0);
    assert_eq!(scale.of("layers.4.attn.q.lora.a"), 3.0);
    assert_eq!(scale.of("layers.4.attn.q.weight"), 1.0);
    assert_eq!(e.stages[0].lr_scale.of("layers.4.attn.kernel.proj"), 1.0, "1 unless set");
    let two_nodes = [
        "data.batch_size=4".to_string(),
        "distributed.nodes=2".into(),
        "distributed.orchestrator=127.0.0.1:29500".into(),
    ];
    let one_address = [two_nodes.as_slice(), &["distributed.addresses=[\"127.0.0.1:29501\"]".to_string()]].concat();
    let err = Experiment::load(&file, &one_address).unwrap_err().to_string();
    assert!(err.contains("distributed.addresses has 1 entries for 2 nodes"), "{err}");
}

#[test]
fn block_recomputation_refuses_a_loss_that_mixes_layer_terms_with_logits() {
    let mixed = |t: String| {
        t.replace("loss = { kl = 1.0, lm = 0.1, temperature = 1.0 }", "loss = { kl = 1.0, attention = 0.5 }")
    };
    let path = scratch_experiment("recompute", mixed);
    assert!(Experiment::load(&path, &[]).is_ok(), "without recomputation the mix is allowed");
    let err = Experiment::load(&path, &["memory.recompute=blocks".into()]).unwrap_err().to_string();
    assert!(err.contains("stages.1 (`distill`)") && err.contains("memory.recompute"), "{err}");
    let err = Experiment::load(&path, &["memory.recompute=everything".into()]).unwrap_err().to_string();
    assert!(err.contains("everything") && err.contains("blocks"), "{err}");
    let _ = std::fs::remove_file(&path);
}

/// experiments/default.toml with `extra` overrides, its error as text.
fn load_default(extra: &[&str]) -> Result<Experiment, String> {
    let overrides: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    Experiment::load(&repo().join("experiments/default.toml"), &overrides).map_err(|e| e.to_string())
}

/// `on_policy` needs a block prefix to continue and a KL to the teacher, and refuses layer-local
/// stages (an LM term beside the KL counts the data's positions only).
#[test]
fn on_policy_is_checked_against_the_block_and_the_loss() {
    use dijiang_train::on_policy::OnPolicy;
    let load = load_default;
    let e = load(&["stages.1.on_policy.tokens=128"]).unwrap();
    assert_eq!(e.stages[1].on_policy, Some(OnPolicy { tokens: 128, temperature: 1.0, every: 1, after: None }));
    assert_eq!(e.stages[0].on_policy, None);
    for (extra, says) in [
        (&["stages.1.on_policy.tokens=128", "stages.1.loss.kl=0"][..], "needs kl or reverse_kl"),
        (&["stages.1.on_policy.tokens=1024", "stages.1.loss.lm=0"], "must be in 1..1024"),
        (&["stages.1.on_policy.tokens=128", "stages.1.loss.lm=0", "stages.1.on_policy.temperature=-1"], ">= 0"),
        (&["stages.0.on_policy.tokens=128"], "no layer terms"),
        (&["stages.1.on_policy.tokens=128", "stages.1.loss.lm=0", "stages.1.on_policy.every=0"], "every must be >= 1"),
        (&["stages.1.on_policy.token=128", "stages.1.loss.lm=0"], "token"),
        (&["stages.1.on_policy.tokens=128", "stages.1.on_policy.after=897"], "after (897) must be in 1..=896"),
        (&["stages.1.on_policy.tokens=128", "stages.1.on_policy.after=0"], "after (0) must be in 1..=896"),
        (&["stages.1.loss.unlikelihood=1"], "the stage needs on_policy"),
        (&["stages.1.loss.written_kl=0"], "loss.written_kl weighs the KL at the student's written positions"),
        (&["stages.1.on_policy.tokens=128", "stages.1.loss.written_kl=2"], "a weight in 0..=1"),
        (
            &[
                "stages.1.on_policy.tokens=128",
                "stages.1.loss.kl=0",
                "stages.1.loss.reverse_kl=1",
                "stages.1.loss.written_kl=0",
            ],
            "no kl term",
        ),
    ] {
        let err = load(extra).unwrap_err();
        assert!(err.contains(says), "{extra:?}: {err}");
    }
}

/// A length curriculum (`data.block_schedule`): each step's block, the tokens, the stage's peak
/// memory at its longest block, and entries out of order or past the run refused.
#[test]
fn a_block_schedule_sets_each_steps_block_and_is_checked() {
    use dijiang_train::memory::stage_estimate;
    let load = load_default;
    // default.toml: 80 + 160 steps of 1 x 1,024 tokens.
    let e = load(&["data.block_schedule=[{ from_step = 200, block_size = 2048 }]"]).unwrap();
    let d = &e.data;
    assert_eq!(
        (d.block_size_at(0), d.block_size_at(199), d.block_size_at(200), d.block_size_at(239)),
        (1024, 1024, 2048, 2048)
    );
    assert_eq!(d.tokens_over(0..240), 200 * 1024 + 40 * 2048);
    assert_eq!((d.block_range(e.stage_steps(0)), d.block_range(e.stage_steps(1))), ((1024, 1024), (1024, 2048)));
    let teacher = dijiang_model::ModelConfig::preset("smollm2-135m").unwrap();
    let plain = load(&[]).unwrap();
    let (long, short) = (stage_estimate(&e, &teacher, 1), stage_estimate(&plain, &teacher, 1));
    assert!(long.activations > short.activations && long.logits == 2 * short.logits, "{long} against {short}");
    assert_eq!(stage_estimate(&e, &teacher, 0), stage_estimate(&plain, &teacher, 0), "stage 1 keeps its blocks");
    for bad in [
        "data.block_schedule=[{ from_step = 240, block_size = 2048 }]",
        "data.block_schedule=[{ from_step = 0, block_size = 2048 }]",
        "data.block_schedule=[{ from_step = 200, block_size = 0 }]",
        "data.block_schedule=[{ from_step = 200, block_size = 2048 }, { from_step = 100, block_size = 512 }]",
    ] {
        let err = load(&[bad]).unwrap_err();
        assert!(err.contains("data.block_schedule") && err.contains("from_step must rise"), "{bad}: {err}");
    }
    let err = load(&["data.block_schedule=[{ from_step = 200, blocks = 2048 }]"]).unwrap_err();
    assert!(err.contains("blocks"), "{err}");
    // An on-policy stage is checked against its shortest block.
    let err = load(&[
        "data.block_schedule=[{ from_step = 200, block_size = 256 }]",
        "stages.1.on_policy.tokens=512",
        "stages.1.loss.lm=0",
    ])
    .unwrap_err();
    assert!(err.contains("must be in 1..256"), "{err}");
}

/// The 7B experiments fit an 80 GB card (~74.5 GiB usable) by the memory model: `dijiang-7b` on one
/// device, `dijiang-7b-reference` on each of 8 (docs/memory.md, "What fits where").
#[test]
fn the_7b_experiments_fit_80_gb_devices() {
    use dijiang_model::ModelConfig;
    use dijiang_train::memory::estimate;

    let teacher = ModelConfig::preset("llama2-7b").unwrap();
    // The reference recipe's 64 sequences per step: 8 micro-batches of one per device on 8 devices.
    for (name, devices, accumulation) in [("dijiang-7b", 1, None), ("dijiang-7b-reference", 8, Some(8))] {
        let path = repo().join(format!("experiments/{name}.toml"));
        let mut overrides = vec![format!("distributed.devices={:?}", vec!["cuda"; devices])];
        overrides.extend(accumulation.map(|a| format!("data.grad_accumulation={a}")));
        let e = Experiment::load(&path, &overrides).unwrap();
        let memory = estimate(&e, &teacher);
        println!("{name}: {memory}");
        let gib = memory.total() as f64 / (1u64 << 30) as f64;
        assert!(gib <= 74.5, "{name}: {gib:.1} GiB per device");
    }
}
