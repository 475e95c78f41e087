//! Runs a test case in a child process: the test binary re-runs itself
//! with `--exact NAME` and `XLAYER_CATALOG_CHILD` set, so a case that
//! panics, aborts (a C++ exception thrown through the plugin's C API), is
//! OOM-killed or counts process-wide compiles fails alone and cannot hide
//! or disturb the others. The one such helper of the test suite.
#![allow(dead_code)]

use std::process::Command;

pub const CHILD: &str = "XLAYER_CATALOG_CHILD";

/// Runs `body` in a child process (see the module docs); in the child,
/// runs it here.
pub fn isolated(name: &str, body: impl FnOnce()) {
    isolated_env(name, &[], body);
}

/// As [`isolated`], with `env` set in the child; returns the child's
/// stdout (empty in the child itself).
pub fn isolated_env(name: &str, env: &[(&str, &std::ffi::OsStr)], body: impl FnOnce()) -> String {
    if std::env::var_os(CHILD).is_some() {
        body();
        println!("catalog case {name} passed");
        return String::new();
    }
    let out = Command::new(std::env::current_exe().expect("test binary"))
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .envs(env.iter().copied())
        .output()
        .expect("run the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains(&format!("catalog case {name} passed")),
        "case {name} failed in its child process ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    stdout.into_owned()
}

#[allow(unused_macros)]
macro_rules! case {
    ($name:ident, $body:block) => {
        #[test]
        fn $name() {
            crate::isolated::isolated(stringify!($name), || $body);
        }
    };
}
