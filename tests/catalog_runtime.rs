//! Regression tests for the reliability catalog (issue 11, section 3):
//! the command line (sizes checked before allocating, non-UTF-8 arguments)
//! and silent wrong results (a `@main` in a comment, signatures not checked
//! against the compiled or deserialized executable). Every case runs in a
//! child process (see `tests/isolated`).

#[macro_use]
mod isolated;

use std::process::Command;
use std::sync::OnceLock;

use xlayer::{ArraySpec, Client, Error, Program};

fn client() -> &'static Client {
    static C: OnceLock<Client> = OnceLock::new();
    C.get_or_init(|| Client::cpu().expect("CPU client"))
}

// ------------------------------------------------------------ command line

/// A fresh directory for one case's files.
fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("xlayer-catalog-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs the `xlayer` binary; returns (exit code, stderr). A signal (abort)
/// or a Rust panic fails the test.
fn xlayer(args: &[&std::ffi::OsStr]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_xlayer"))
        .args(args)
        .output()
        .expect("run xlayer");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.code().is_some(),
        "xlayer {args:?} was killed: {}\n{err}",
        out.status
    );
    assert!(
        !err.contains("panicked"),
        "xlayer {args:?} panicked:\n{err}"
    );
    (out.status.code(), err)
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

case!(cli_bench_random_checks_the_size_before_allocating, {
    // 1e11 f32 = 400 GB: used to be allocated first (abort on failure).
    let dir = scratch("bench-random");
    let big = dir.join("big.mlir");
    std::fs::write(
        &big,
        "func.func public @main(%a: tensor<100000000000xf32>) -> tensor<100000000000xf32> {\n  return %a : tensor<100000000000xf32>\n}\n",
    )
    .unwrap();
    let (code, err) = xlayer(&[os("bench"), os("--random"), big.as_os_str()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("random input 0: f32[100000000000] needs 800000000000 bytes of host memory"),
        "{err}"
    );
    // a type whose size overflows: refused when the program is read
    let huge = dir.join("huge.mlir");
    std::fs::write(
        &huge,
        "func.func public @main(%a: tensor<4294967296x4294967296xf32>) -> tensor<4294967296x4294967296xf32> {\n  return %a : tensor<4294967296x4294967296xf32>\n}\n",
    )
    .unwrap();
    let (code, err) = xlayer(&[os("bench"), os("--random"), huge.as_os_str()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("parameter 0 of @main: array type f32[4294967296,4294967296] is too large"),
        "{err}"
    );
    // the same size in a bytecode program's declared signature
    let bytecode = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/interchange/mlp.mlirbc");
    let (code, err) = xlayer(&[
        os("bench"),
        os("--random"),
        bytecode.as_os_str(),
        os("--signature"),
        os("f32[4294967296,4294967296],f32[3,4],f32[4]"),
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("parameter 0 of the declared signature: array type f32[4294967296,4294967296] is too large"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).ok();
});

case!(cli_non_utf8_arguments_are_clear_errors, {
    use std::os::unix::ffi::OsStrExt;
    let bad = std::ffi::OsStr::from_bytes(b"prog-\xff\xfe.mlir");
    let (code, err) = xlayer(&[os("run"), bad]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("cannot read program") && err.contains("prog-"),
        "{err}"
    );
    let (code, err) = xlayer(&[
        os("hlo"),
        os("p.mlir"),
        os("--signature"),
        std::ffi::OsStr::from_bytes(b"f32[\xff]"),
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("UTF-8"), "{err}");
    let (code, err) = xlayer(&[
        os("inspect"),
        std::ffi::OsStr::from_bytes(b"\xff.safetensors"),
    ]);
    assert_eq!(code, Some(1), "{err}");
});

/// An example's binary (`target/<profile>/examples/NAME`), brought up to
/// date first: `cargo test --test catalog_runtime` alone does not rebuild
/// examples, and a stale binary would test old code.
fn example(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .args(["build", "--example", name, "--manifest-path"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"));
    if profile_dir.ends_with("release") {
        cargo.arg("--release");
    }
    let status = cargo.status().expect("run cargo");
    assert!(status.success(), "cargo build --example {name} failed");
    profile_dir.join("examples").join(name)
}

case!(example_non_utf8_argument_is_a_clear_error, {
    use std::os::unix::ffi::OsStrExt;
    // Every example that reads arguments (matmul reads none).
    for name in ["minilm", "generate"] {
        let out = Command::new(example(name))
            .arg(std::ffi::OsStr::from_bytes(b"caf\xe9"))
            .output()
            .unwrap_or_else(|e| panic!("run the {name} example: {e}"));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        assert!(!err.contains("panicked"), "{name}: {err}");
        assert!(
            err.contains("argument `caf\u{fffd}` is not valid UTF-8"),
            "{name}: {err}"
        );
    }
});

case!(minilm_example_bench_prints_one_json_object, {
    let exe = example("minilm");
    let out = Command::new(&exe)
        .args([
            "--bench",
            "3",
            "A cat sits on the mat.",
            "Compilers turn programs into machine code.",
        ])
        .output()
        .expect("run the minilm example");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Exactly one JSON object, nothing else on stdout.
    let v: serde_json::Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(stdout.trim().lines().count(), 1, "{stdout}");
    assert!(
        stdout.starts_with("{\"sentences\":2,\"median_ms\":"),
        "{stdout}"
    );
    assert_eq!(v.as_object().unwrap().len(), 3, "{stdout}");
    assert_eq!(v["sentences"], 2);
    let runs: Vec<f64> = v["runs_ms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(runs.len(), 3);
    let mut sorted = runs.clone();
    sorted.sort_by(f64::total_cmp);
    assert_eq!(v["median_ms"].as_f64().unwrap(), sorted[1]);
    assert!(sorted[0] > 0.0);
    for (args, want) in [
        (
            &["--bench", "0", "x"][..],
            "--bench needs a number of timed runs of at least 1, got `0`",
        ),
        (&["--bench"][..], "--bench needs a number of timed runs"),
        (&["--bench", "2", "--json", "x"][..], "--json and --bench"),
    ] {
        let out = Command::new(&exe).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
});

// ------------------------------------------------------------ wrong results

const ADD_ONE: &str = "// func.func public @main(%a: tensor<4xi32>) -> tensor<4xi32>\n\
module @add_one {\n\
  func.func public @main(%a: tensor<4xf32>) -> tensor<4xf32> {\n\
    %one = stablehlo.constant dense<1.0> : tensor<4xf32>\n\
    %0 = stablehlo.add %a, %one : tensor<4xf32>\n\
    return %0 : tensor<4xf32>\n\
  }\n\
}\n";

case!(main_signature_in_a_comment_does_not_fool_the_parser, {
    let c = client();
    let p = Program::mlir_text(ADD_ONE).unwrap();
    assert_eq!(p.signature().to_string(), "(f32[4]) -> (f32[4])");
    assert_eq!(p.name(), "add_one");
    let exe = c.compile(&p).unwrap();
    // an i32 buffer used to run and silently give [0, 0, 0, 0]
    let i = c.buffer_from_host(&[1i32, 2, 3, 4], &[4]).unwrap();
    let e = exe.execute(&[&i]).unwrap_err();
    assert!(
        matches!(e, Error::ArgumentType { index: 0, ref expected, ref actual, .. }
            if *expected == ArraySpec::of::<f32>([4]) && *actual == ArraySpec::of::<i32>([4])),
        "{e:?}"
    );
    let f = c.buffer_from_host(&[1f32, 2.0, 3.0, 4.0], &[4]).unwrap();
    assert_eq!(
        exe.execute(&[&f]).unwrap()[0].to_vec::<f32>().unwrap(),
        [2.0, 3.0, 4.0, 5.0]
    );
});

case!(executable_types_come_from_the_compiled_module, {
    let c = client();
    let exe = c.compile(&Program::mlir_text(ADD_ONE).unwrap()).unwrap();
    let bytes = exe.serialize().unwrap();
    let sig = |inputs: Vec<ArraySpec>, outputs: Vec<ArraySpec>| xlayer::Signature {
        donors: vec![false; inputs.len()],
        inputs,
        outputs,
    };
    let f4 = ArraySpec::of::<f32>([4]);
    let i4 = ArraySpec::of::<i32>([4]);
    // deserialize_executable used to accept any signature
    let e = c
        .deserialize_executable(&bytes, "add_one", sig(vec![i4.clone()], vec![f4.clone()]))
        .unwrap_err();
    assert!(
        matches!(e, Error::SignatureMismatch { part: "parameters", ref declared, ref compiled, .. }
            if *declared == [i4.clone()] && *compiled == [f4.clone()]),
        "{e:?}"
    );
    assert!(e.to_string().contains("add_one"), "{e}");
    let e = c
        .deserialize_executable(
            &bytes,
            "add_one",
            sig(vec![f4.clone(), f4.clone()], vec![f4.clone()]),
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::SignatureMismatch {
                part: "parameters",
                ..
            }
        ),
        "{e:?}"
    );
    let e = c
        .deserialize_executable(&bytes, "add_one", sig(vec![f4.clone()], vec![i4.clone()]))
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::SignatureMismatch {
                part: "results",
                ..
            }
        ),
        "{e:?}"
    );
    // outputs left empty are taken from the executable
    let back = c
        .deserialize_executable(&bytes, "add_one", sig(vec![f4.clone()], vec![]))
        .unwrap();
    assert_eq!(back.signature().outputs, std::slice::from_ref(&f4));
    let f = c.buffer_from_host(&[0f32; 4], &[4]).unwrap();
    assert_eq!(
        back.execute(&[&f]).unwrap()[0].to_vec::<f32>().unwrap(),
        [1.0; 4]
    );
});
