//! Quiet by default: the PJRT plugin's absl/XLA log lines reach stderr only
//! when asked for (`XLAYER_LOG`, the CLI's `--verbose`). Each check runs a
//! child process, since the plugin reads its log level once per process.

use std::process::{Command, Output};

/// What the pinned CPU plugin prints: absl's preamble before its first log
/// line, the INFO line of every `Client::cpu()`, and the INFO line of a
/// compile that asks for the optimized HLO (`xlayer hlo`).
const ABSL_LINES: [&str; 3] = [
    "absl::InitializeLog",
    "cpu_device_count set via create_options",
    "HloModule dump enabled",
];

/// `cmd` with no logging variable inherited from the test's environment,
/// plus `env`; the child must succeed.
fn run(mut cmd: Command, env: &[(&str, &str)]) -> Output {
    cmd.env_remove("XLAYER_LOG")
        .env_remove("TF_CPP_MIN_LOG_LEVEL");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("spawn child");
    assert!(
        out.status.success(),
        "child failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_quiet(what: &str, o: &Output) {
    let err = stderr(o);
    for line in ABSL_LINES {
        assert!(!err.contains(line), "{what}: stderr has `{line}`:\n{err}");
    }
}

fn assert_logged(what: &str, o: &Output, line: &str) {
    let err = stderr(o);
    assert!(
        err.contains("absl::InitializeLog") && err.contains(line),
        "{what}: stderr lacks the plugin's `{line}`:\n{err}"
    );
}

/// `xlayer [flags] hlo` on a fixture program: its compile logs an INFO line.
fn cli_hlo(flags: &[&str]) -> Command {
    let program = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/interchange/mlp.mlir"
    );
    let mut c = Command::new(env!("CARGO_BIN_EXE_xlayer"));
    c.args(flags).args(["hlo", program]);
    c
}

const HLO_LINE: &str = "HloModule dump enabled";

#[test]
fn cli_is_quiet_unless_verbose() {
    let out = run(cli_hlo(&[]), &[]);
    assert_quiet("xlayer hlo", &out);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("HloModule"),
        "hlo printed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_quiet(
        "XLAYER_LOG=0 xlayer hlo",
        &run(cli_hlo(&[]), &[("XLAYER_LOG", "0")]),
    );
    assert_logged(
        "XLAYER_LOG=1 xlayer hlo",
        &run(cli_hlo(&[]), &[("XLAYER_LOG", "1")]),
        HLO_LINE,
    );
    assert_logged(
        "xlayer --verbose hlo",
        &run(cli_hlo(&["--verbose"]), &[]),
        HLO_LINE,
    );
    assert_logged("xlayer -v hlo", &run(cli_hlo(&["-v"]), &[]), HLO_LINE);
}

#[test]
fn a_users_own_log_level_is_kept() {
    // TF_CPP_MIN_LOG_LEVEL=0 set by the user: xlayer leaves it, the plugin logs.
    assert_logged(
        "TF_CPP_MIN_LOG_LEVEL=0 xlayer hlo",
        &run(cli_hlo(&[]), &[("TF_CPP_MIN_LOG_LEVEL", "0")]),
        HLO_LINE,
    );
}

/// The child half of `library_is_quiet_unless_xlayer_log`: creates a client
/// when run by it (and does nothing in a plain test run).
#[test]
fn child_creates_a_client() {
    if std::env::var_os("XLAYER_LOGGING_CHILD").is_some() {
        let client = xlayer::Client::cpu().expect("CPU client");
        assert!(!client.devices().is_empty());
    }
}

#[test]
fn library_is_quiet_unless_xlayer_log() {
    let child = || {
        let mut c = Command::new(std::env::current_exe().expect("test binary"));
        c.args(["--exact", "child_creates_a_client", "--test-threads=1"])
            .env("XLAYER_LOGGING_CHILD", "1");
        c
    };
    assert_quiet("Client::cpu()", &run(child(), &[]));
    assert_logged(
        "XLAYER_LOG=1 Client::cpu()",
        &run(child(), &[("XLAYER_LOG", "1")]),
        "cpu_device_count set via create_options",
    );
}

/// Set in the child process of `cpu_zml_loads_hide_only_the_false_alarm`.
const ZML_CHILD: &str = "XLAYER_LOGGING_ZML_CHILD";

/// The feature `cpu-zml` records on an AVX-512 host (XLA adds it whenever
/// an `avx512` feature is enabled) that its loader then reports as missing
/// (a false alarm). Hosts without AVX-512 record no such feature and have
/// no false alarm.
const TUNING_FLAG: &[u8] = b"+prefer-no-gather";

/// A recorded feature every x86-64 host this plugin runs on has (`+avx2`),
/// and made-up features of the same lengths to put in place of it or of
/// [`TUNING_FLAG`]: a really missing feature, which must still be reported.
const COMMON_FEATURE: &[u8] = b"+avx2,";
const MADE_UP_FEATURE: &[u8] = b"+xlayer-test-feat";
const MADE_UP_SHORT: &[u8] = b"+xlyr,";

/// What the child puts in place of what in the serialized executable: the
/// false alarm's feature where the host records it, else `+avx2`.
fn tampering(bytes: &[u8]) -> (&'static [u8], &'static [u8]) {
    if bytes.windows(TUNING_FLAG.len()).any(|w| w == TUNING_FLAG) {
        (TUNING_FLAG, MADE_UP_FEATURE)
    } else {
        (COMMON_FEATURE, MADE_UP_SHORT)
    }
}

/// The child half of `cpu_zml_loads_hide_only_the_false_alarm` (does
/// nothing in a plain test run): on `cpu-zml`, compiles a program, loads its
/// serialized executable back as the compilation cache does, then loads a
/// copy whose recorded target features name a made-up one
/// ([`tampering`]); both run.
#[test]
fn child_loads_executables_on_cpu_zml() {
    if std::env::var_os(ZML_CHILD).is_none() {
        return;
    }
    use xlayer::{Client, ClientOptions, Plugin, Program};
    let path = xla_build::ensure_recipe(&xla_build::CPU).expect("cpu-zml, the default CPU build");
    let plugin = Plugin::load(path).expect("load cpu-zml");
    let client = Client::new(&plugin, &ClientOptions::new().cpu_device_count(1)).unwrap();
    let program = Program::mlir_text(
        "func.func public @main(%a: tensor<3xf32>) -> tensor<3xf32> {\n  %0 = stablehlo.add %a, %a : tensor<3xf32>\n  return %0 : tensor<3xf32>\n}",
    )
    .unwrap();
    let bytes = client.compile(&program).unwrap().serialize().unwrap();
    let x = client.buffer_from_host(&[1f32, 2.0, 3.0], &[3]).unwrap();
    let load_and_run = |bytes: &[u8]| {
        let exe = client
            .deserialize_executable(bytes, "main", program.signature().clone())
            .unwrap();
        let y = exe.execute(&[&x]).unwrap()[0].to_vec::<f32>().unwrap();
        assert_eq!(y, vec![2.0, 4.0, 6.0]);
    };
    load_and_run(&bytes);
    let (real, made_up) = tampering(&bytes);
    let at = bytes
        .windows(real.len())
        .position(|w| w == real)
        .expect("cpu-zml records the host's features, +avx2 among them");
    let mut tampered = bytes.clone();
    tampered[at..at + real.len()].copy_from_slice(made_up);
    load_and_run(&tampered);
}

#[test]
fn cpu_zml_loads_hide_only_the_false_alarm() {
    let child = || {
        let mut c = Command::new(std::env::current_exe().expect("test binary"));
        c.args([
            "--exact",
            "child_loads_executables_on_cpu_zml",
            "--test-threads=1",
        ])
        .env(ZML_CHILD, "1");
        c
    };
    let missing = |feature: &[u8]| {
        format!(
            "Target machine feature {} is not",
            String::from_utf8_lossy(feature)
        )
    };
    // Verbose: the plugin's own lines, false alarms included, all print.
    // Whether this host has the false alarm shows there; the made-up
    // feature is reported on every host.
    let verbose = stderr(&run(child(), &[("XLAYER_LOG", "1")]));
    let false_alarm = verbose.contains(&missing(TUNING_FLAG));
    let made_up = if false_alarm {
        assert!(
            verbose.contains(&missing(b"+prefer-no-scatter")),
            "{verbose}"
        );
        MADE_UP_FEATURE
    } else {
        assert!(!verbose.contains("+prefer-no-"), "{verbose}");
        &MADE_UP_SHORT[..MADE_UP_SHORT.len() - 1]
    };
    assert!(verbose.contains(&missing(made_up)), "{verbose}");
    // Quiet (the default): the false alarms and absl's preamble are gone,
    // the report of a really missing feature is kept.
    let quiet = stderr(&run(child(), &[]));
    assert!(quiet.contains(&missing(made_up)), "{quiet}");
    for gone in [
        missing(TUNING_FLAG),
        missing(b"+prefer-no-scatter"),
        "absl::InitializeLog".to_string(),
    ] {
        assert!(!quiet.contains(&gone), "stderr has `{gone}`:\n{quiet}");
    }
}
