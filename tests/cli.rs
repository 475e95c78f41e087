//! The `xlayer` binary on the interchange fixtures: outputs, saved files,
//! and error exit codes.

use std::path::PathBuf;
use std::process::{Command, Output};

fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/interchange")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn xlayer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xlayer"))
        .args(args)
        .output()
        .expect("run xlayer")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn run_prints_jax_outputs_for_text_export_and_bytecode() {
    let inputs = fixture("mlp.in.safetensors");
    let runs = [
        xlayer(&["run", &fixture("mlp.mlir"), "--inputs", &inputs]),
        xlayer(&["run", &fixture("mlp.jaxexport"), "--inputs", &inputs]),
        xlayer(&[
            "run",
            &fixture("mlp.mlirbc"),
            "--signature",
            "f32[2,3],f32[3,4],f32[4]",
            "--inputs",
            &inputs,
        ]),
    ];
    let first = text(&runs[0]).0;
    assert!(
        first.contains("out0: f32[2,4] = [") && first.contains("out1: f32[] = ["),
        "{first}"
    );
    for r in &runs {
        let (out, err) = text(r);
        assert!(r.status.success(), "{err}");
        assert_eq!(out, first);
    }
}

#[test]
fn run_saves_outputs_matching_jax() {
    let dir = std::env::temp_dir().join(format!("xlayer-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("out.safetensors");
    let o = xlayer(&[
        "run",
        &fixture("unused.jaxexport"),
        "-i",
        &fixture("unused.in.safetensors"),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o).1);
    let got = xlayer::io::read_safetensors(&out).unwrap();
    let want = xlayer::io::read_safetensors(fixture("unused.out.safetensors")).unwrap();
    assert_eq!(got, want);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn inspect_lists_tensors() {
    let o = xlayer(&["inspect", &fixture("mixed.in.safetensors")]);
    let (out, _) = text(&o);
    assert!(o.status.success());
    assert!(
        out.contains("arg0")
            && out.contains("I32")
            && out.contains("[2, 3]")
            && out.contains("BOOL"),
        "{out}"
    );
    assert!(out.contains("2 tensor(s), 30 bytes"), "{out}");
    let o = xlayer(&["inspect", "--json", &fixture("mixed.in.safetensors")]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["total_bytes"], 30);
}

#[test]
fn bench_reports_json() {
    let o = xlayer(&[
        "bench",
        &fixture("mlp.jaxexport"),
        "--random",
        "--iters",
        "3",
        "--json",
        "--peak-gflops",
        "10",
        "--peak-gbps",
        "5",
    ]);
    assert!(o.status.success(), "{}", text(&o).1);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["iters"], 3);
    // 2·2·4·3 (matmul) + 8 (bias) + 6 (2x) + 6 (sum) flops, as XLA counts them
    assert!(v["flops"].as_f64().unwrap() > 48.0);
    assert!(v["roofline"]["fraction"].as_f64().unwrap() > 0.0);
    // cpu-xla-pjrt's compiler counts; the default (ZML's) build has xlayer count.
    let source = v["cost_source"].as_str().unwrap();
    assert!(source == "compiler" || source == "counted", "{source}");
}

#[test]
fn hlo_prints_compiler_text() {
    let o = xlayer(&["hlo", &fixture("mlp.mlir"), "--cost"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.starts_with("HloModule")
            && out.contains("tanh")
            && out.contains("// cost analysis")
            && out.contains("flops"),
        "{out}"
    );
}

#[test]
fn errors_exit_nonzero_with_a_message() {
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["run".into(), fixture("nope.mlir")],
            "cannot read program",
        ),
        (
            vec!["run".into(), fixture("mlp.in.safetensors")],
            "program file",
        ),
        (
            vec![
                "run".into(),
                fixture("mlp.mlirbc"),
                "-i".into(),
                fixture("mlp.in.safetensors"),
            ],
            "--signature",
        ),
        (vec!["run".into(), fixture("mlp.mlir")], "--inputs"),
        (
            vec![
                "run".into(),
                fixture("unused.mlir"),
                "-i".into(),
                fixture("unused.in.safetensors"),
            ],
            "takes 2 input(s)",
        ),
        (
            vec![
                "run".into(),
                fixture("mlp.mlir"),
                "-i".into(),
                fixture("mixed.in.safetensors"),
            ],
            "is i32[2,3], but input 0",
        ),
        (
            vec![
                "run".into(),
                fixture("mlp.mlir"),
                "-i".into(),
                fixture("mlp.mlir"),
            ],
            "safetensors file",
        ),
        (
            vec![
                "run".into(),
                fixture("cuda_only.jaxexport"),
                "-i".into(),
                fixture("mlp.in.safetensors"),
            ],
            "exported for platform(s) [cuda]",
        ),
        (
            vec!["run".into(), fixture("symbolic.jaxexport")],
            "symbolic dimension",
        ),
        (
            vec!["inspect".into(), fixture("mlp.jaxexport")],
            "not a valid safetensors file",
        ),
        (
            vec![
                "run".into(),
                fixture("mlp.mlirbc"),
                "--signature".into(),
                "f99[2]".into(),
            ],
            "unknown dtype",
        ),
    ];
    for (args, needle) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = xlayer(&args);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("xlayer: error:") && err.contains(needle),
            "{args:?}: expected `{needle}` in: {err}"
        );
    }
    let o = xlayer(&["frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn a_bad_kernel_setting_in_the_environment_is_named_not_ignored() {
    let run = |var: &str, value: &str| {
        Command::new(env!("CARGO_BIN_EXE_xlayer"))
            .args([
                "bench",
                &fixture("mlp.jaxexport"),
                "--random",
                "--iters",
                "1",
            ])
            .env(var, value)
            .output()
            .expect("run xlayer")
    };
    for (var, value) in [
        ("XLAYER_CPU_KERNEL_THREADS", "four"),
        ("XLAYER_CPU_KERNEL_THREADS", "0"),
        ("XLAYER_CPU_KERNEL_THREADS", "65"),
        ("XLAYER_CPU_KERNEL_ISA", "avx512"),
    ] {
        let o = run(var, value);
        let (_, err) = text(&o);
        assert!(!o.status.success(), "{var}={value} was accepted");
        assert!(
            err.contains(var) && err.contains(value),
            "{var}={value}: {err}"
        );
    }
    for (var, value) in [
        ("XLAYER_CPU_KERNEL_THREADS", "2"),
        ("XLAYER_CPU_KERNEL_ISA", "portable"),
    ] {
        let o = run(var, value);
        assert!(o.status.success(), "{var}={value}: {}", text(&o).1);
    }
}
