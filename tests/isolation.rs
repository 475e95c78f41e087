//! Programs that crash the plugin's compiler never kill the test process:
//! known cases are refused in Rust before the plugin sees them (nesting too
//! deep, integer constants divided by a constant zero), and the rest are
//! compiled in a child process (`CompileOptions::isolated`), where a crash
//! becomes `Error::PluginCrashed`. The plain compiles of crashing programs
//! run in a child test process of their own.

mod isolated;

use std::path::{Path, PathBuf};

use xlayer::pjrt::precheck::MAX_NESTING;
use xlayer::{ArraySpec, Client, CompileOptions, DType, Error, Program, Signature};

const XLAYER: &str = env!("CARGO_BIN_EXE_xlayer");

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/interchange")
        .join(name)
}

fn isolated() -> CompileOptions {
    CompileOptions::new().isolated_as(XLAYER)
}

fn mlp_signature() -> Signature {
    Signature {
        inputs: vec![
            ArraySpec::new(DType::F32, vec![2, 3]),
            ArraySpec::new(DType::F32, vec![3, 4]),
            ArraySpec::new(DType::F32, vec![4]),
        ],
        ..Default::default()
    }
}

/// `mlp.mlirbc` with byte `at` inverted.
fn corrupted_bytecode(at: usize) -> Program {
    let mut b = std::fs::read(fixture("mlp.mlirbc")).unwrap();
    b[at] ^= 0xff;
    Program::mlir_bytecode(b, mlp_signature()).unwrap()
}

/// Byte 46 of `mlp.mlirbc`, inverted, makes the pinned plugin throw a C++
/// exception through the C API: the process aborts.
const ABORTING_BYTE: usize = 46;

/// The signals a CPU plugin build's compiler dies of on the corrupted
/// programs here: SIGABRT (6) or SIGSEGV (11). Both builds throw an
/// uncaught C++ exception through the C API (`cpu-zml`: `std::length_error`
/// from an LLVM `SmallVector`); the pinned build then always aborts, while
/// `cpu-zml` aborts or, more often in the CLI's own process (9 of 12 runs
/// of `xlayer hlo --no-isolate`), dies of SIGSEGV on the way. Which one is
/// the build's incidental behaviour; the point of these tests is that the
/// crash is contained and typed.
const CRASH_SIGNALS: [i32; 2] = [6, 11];

/// Asserts that `signal` is one of [`CRASH_SIGNALS`].
fn assert_crash_signal(signal: Option<i32>, what: &str) {
    assert!(
        signal.is_some_and(|s| CRASH_SIGNALS.contains(&s)),
        "{what}: expected SIGABRT or SIGSEGV, got {signal:?}"
    );
}

#[test]
fn corrupted_bytecode_crashes_only_the_child() {
    let client = Client::cpu().unwrap();
    match client.compile_with(&corrupted_bytecode(ABORTING_BYTE), &isolated()) {
        Err(Error::PluginCrashed {
            program, signal, ..
        }) => {
            assert_eq!(program, "main");
            assert_crash_signal(signal, "isolated compile");
        }
        other => panic!("expected Error::PluginCrashed, got {other:?}"),
    }
    // Other single-byte corruptions: an executable or a clear error, and
    // this process still alive to check the next one.
    for at in [5, 20, 60, 200, 400, 700, 900] {
        match client.compile_with(&corrupted_bytecode(at), &isolated()) {
            Ok(_)
            | Err(Error::Pjrt { .. })
            | Err(Error::Signature(_))
            | Err(Error::SignatureMismatch { .. })
            | Err(Error::PluginCrashed { .. }) => {}
            Err(other) => panic!("byte {at}: unexpected error {other:?}"),
        }
    }
}

#[test]
fn the_same_corruption_kills_a_plain_compile() {
    // Shows what isolation prevents; in a child test process.
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["plain_compile_of_the_aborting_byte", "--exact", "--ignored"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the plain compile must crash");
    assert_crash_signal(
        std::os::unix::process::ExitStatusExt::signal(&out.status),
        "plain compile",
    );
}

#[test]
#[ignore = "crashes on purpose; run by the_same_corruption_kills_a_plain_compile"]
fn plain_compile_of_the_aborting_byte() {
    let client = Client::cpu().unwrap();
    let _ = client.compile(&corrupted_bytecode(ABORTING_BYTE));
}

#[test]
fn corrupted_export_artifact_crashes_only_the_child() {
    // Byte 470 of `mlp.jaxexport` lies in its module's bytecode.
    let mut b = std::fs::read(fixture("mlp.jaxexport")).unwrap();
    b[470] ^= 0xff;
    let dir = std::env::temp_dir().join(format!("xlayer-isolation-x-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("corrupt.jaxexport");
    std::fs::write(&file, b).unwrap();
    let program = Program::from_file(&file).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let client = Client::cpu().unwrap();
    match client.compile_with(&program, &isolated()) {
        Err(Error::PluginCrashed { signal, .. }) => assert_crash_signal(signal, "export artifact"),
        other => panic!("expected Error::PluginCrashed, got {other:?}"),
    }
}

#[test]
fn isolated_compiles_give_the_same_executable() {
    // In a child test process, so that no other test's compile is counted.
    isolated::isolated(
        "isolated_compiles_give_the_same_executable",
        same_executable,
    );
}

fn same_executable() {
    let client = Client::cpu().unwrap();
    let program = Program::from_file(fixture("mlp.jaxexport")).unwrap();
    let here = client.compile(&program).unwrap();
    let before = xlayer::compile_count();
    let there = client.compile_with(&program, &isolated()).unwrap();
    assert_eq!(
        xlayer::compile_count(),
        before,
        "the child compiled; this process only loaded its executable"
    );
    assert_eq!(here.signature(), there.signature());
    let x = client
        .buffer_from_host(&[0.5f32, -1.0, 2.0, 0.25, 1.5, -0.75], &[2, 3])
        .unwrap();
    let w = client.buffer_from_host(&[0.1f32; 12], &[3, 4]).unwrap();
    let b = client
        .buffer_from_host(&[0.2f32, -0.2, 0.3, 0.0], &[4])
        .unwrap();
    let (a, z) = (
        here.execute(&[&x, &w, &b]).unwrap(),
        there.execute(&[&x, &w, &b]).unwrap(),
    );
    assert_eq!(a.len(), z.len());
    for (a, z) in a.iter().zip(&z) {
        assert_eq!(a.to_bytes().unwrap(), z.to_bytes().unwrap());
    }
    // The compiler's own errors come back as they would here.
    let bad = Program::mlir_text(
        "func.func public @main(%a: tensor<2xf32>) -> tensor<2xf32> {\n  %0 = stablehlo.frobnicate %a : tensor<2xf32>\n  return %0 : tensor<2xf32>\n}",
    )
    .unwrap();
    match client.compile_with(&bad, &isolated()) {
        Err(Error::Pjrt { message, .. }) => assert!(message.contains("frobnicate"), "{message}"),
        other => panic!("expected Error::Pjrt, got {other:?}"),
    }
}

#[test]
fn a_missing_or_wrong_child_is_an_isolation_error() {
    let client = Client::cpu().unwrap();
    let program = Program::from_file(fixture("mlp.mlir")).unwrap();
    for child in ["/nonexistent/xlayer", "/bin/true"] {
        let opts = CompileOptions::new().isolated_as(child);
        match client.compile_with(&program, &opts) {
            Err(Error::Isolation { child: c, .. }) => assert_eq!(c, Path::new(child)),
            other => panic!("{child}: expected Error::Isolation, got {other:?}"),
        }
    }
}

/// A tuple type nested `depth` levels deep, in a program's body.
fn nested_tuple(depth: usize) -> String {
    let mut t = "tensor<f32>".to_string();
    for _ in 0..depth {
        t = format!("tuple<{t}>");
    }
    format!("func.func public @main(%a: tensor<f32>) -> tensor<f32> {{\n  %t = \"stablehlo.tuple\"(%a) : (tensor<f32>) -> {t}\n  return %a : tensor<f32>\n}}\n")
}

#[test]
fn deep_nesting_is_refused_before_the_plugin() {
    let client = Client::cpu().unwrap();
    for depth in [MAX_NESTING, 20_000] {
        let program = Program::mlir_text(nested_tuple(depth)).unwrap();
        match client.compile(&program) {
            Err(Error::ProgramTooDeep { line, limit, .. }) => {
                assert_eq!((line, limit), (2, MAX_NESTING));
            }
            other => panic!("depth {depth}: expected Error::ProgramTooDeep, got {other:?}"),
        }
    }
}

#[test]
fn nesting_at_the_limit_does_not_overflow_a_test_thread() {
    // Depth just below the limit (with the other brackets of the line),
    // compiled on a 2 MiB test thread: an error from the parser, or an
    // executable, but no stack overflow. In a child process in case it does.
    isolated::isolated(
        "nesting_at_the_limit_does_not_overflow_a_test_thread",
        || {
            let client = Client::cpu().unwrap();
            let program = Program::mlir_text(nested_tuple(MAX_NESTING - 3)).unwrap();
            let _ = client.compile(&program);
        },
    );
}

fn text(body: &str) -> Program {
    Program::mlir_text(format!(
        "func.func public @main() -> tensor<i32> {{\n  %a = stablehlo.constant dense<7> : tensor<i32>\n{body}\n}}\n"
    ))
    .unwrap()
}

#[test]
fn seven_mod_zero_is_a_typed_error_or_isolated() {
    let client = Client::cpu().unwrap();
    let rem = text("  %b = stablehlo.constant dense<0> : tensor<i32>\n  %c = stablehlo.remainder %a, %b : tensor<i32>\n  return %c : tensor<i32>");
    for opts in [CompileOptions::new(), isolated()] {
        match client.compile_with(&rem, &opts) {
            Err(Error::ConstantDivisionByZero { line, op, .. }) => {
                assert_eq!((line, op.as_str()), (4, "stablehlo.remainder"));
            }
            other => panic!("expected Error::ConstantDivisionByZero, got {other:?}"),
        }
    }
    // A zero the Rust check cannot see (7 - 7): the child dies of SIGFPE.
    let hidden = text("  %b = stablehlo.subtract %a, %a : tensor<i32>\n  %c = stablehlo.remainder %a, %b : tensor<i32>\n  return %c : tensor<i32>");
    match client.compile_with(&hidden, &isolated()) {
        Err(Error::PluginCrashed { signal, .. }) => assert_eq!(signal, Some(8), "SIGFPE"),
        other => panic!("expected Error::PluginCrashed, got {other:?}"),
    }
}

#[test]
fn the_cli_isolates_by_default() {
    let dir = std::env::temp_dir().join(format!("xlayer-isolation-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut b = std::fs::read(fixture("mlp.mlirbc")).unwrap();
    b[ABORTING_BYTE] ^= 0xff;
    let file = dir.join("corrupt.mlirbc");
    std::fs::write(&file, b).unwrap();
    let sig = "f32[2,3],f32[3,4],f32[4]";
    let run = |extra: &[&str]| {
        std::process::Command::new(XLAYER)
            .args(["hlo", file.to_str().unwrap(), "--signature", sig])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("crashed compiling `main`")
            && (stderr.contains("SIGABRT") || stderr.contains("SIGSEGV")),
        "{stderr}"
    );
    // --no-isolate compiles in the CLI's own process, which dies.
    let out = run(&["--no-isolate"]);
    assert_crash_signal(
        std::os::unix::process::ExitStatusExt::signal(&out.status),
        "xlayer hlo --no-isolate",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The child's explained compile error comes back typed: an artifact that
/// calls jaxlib's LAPACK kernel (tests/fixtures/gen_jaxlib_kernels.py) is
/// `Error::JaxlibKernel` through an isolated compile too, without a second
/// compile in this process.
#[test]
fn an_isolated_compile_names_jaxlibs_kernel() {
    let client = Client::cpu().unwrap();
    let p = Program::from_file(fixture("linalg_solve.jaxexport")).unwrap();
    match client.compile_with(&p, &isolated()) {
        Err(Error::JaxlibKernel { targets, .. }) => {
            assert!(
                targets.contains(&"lapack_sgetrf_ffi".to_string()),
                "{targets:?}"
            )
        }
        other => panic!("{:?}", other.map(|_| "compiled")),
    }
}
