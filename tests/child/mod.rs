//! Runs one test of the current test binary in a child process, so that an
//! abort, a crash or an OOM kill of that case fails that test alone instead
//! of taking the whole binary (and every other case) down with it.
#![allow(dead_code)]

/// Set in the child: the test body runs there.
const IN_CHILD: &str = "XLAYER_TEST_IN_CHILD";

/// Runs `body` in a child process re-running this binary's test `name`
/// (which must be the calling test's name) and asserts that it passed.
/// In the child itself, runs `body` directly.
pub fn run_isolated(name: &str, body: impl FnOnce()) {
    if std::env::var_os(IN_CHILD).is_some() {
        body();
        return;
    }
    let me = std::env::current_exe().expect("test binary path");
    let out = std::process::Command::new(me)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(IN_CHILD, "1")
        .output()
        .expect("spawn the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "test `{name}` in a child process ended with {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
}
