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
