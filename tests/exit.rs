//! Exiting while a computation runs must not crash the process.
//!
//! The CPU plugin's C++ runtime is torn down by the C runtime at exit; if a
//! client still has work in flight then, the process segfaults. xlayer's
//! shared clients are destroyed with their last handle (which waits for the
//! work), so a program that returns from `main` right after `execute`
//! exits cleanly. This test runs such a program (itself, with `--child`)
//! several times and checks every exit status.

use std::process::Command;

fn child() -> xlayer::Result<()> {
    let c = xlayer::Client::cpu()?;
    let exe = xlayer::builder::jit(&c, &[xlayer::ArraySpec::of::<f32>([256, 256])], |_b, x| {
        Ok(vec![x[0].matmul(&x[0])?.matmul(&x[0])?.tanh()?])
    })?;
    let x = c.buffer_from_host(&vec![0.5f32; 256 * 256], &[256, 256])?;
    // Launch and return at once: the output is never awaited.
    let _ = exe.execute(&[&x])?;
    Ok(())
}

fn main() {
    if std::env::args().any(|a| a == "--child") {
        if let Err(e) = child() {
            eprintln!("child failed: {e}");
            std::process::exit(3);
        }
        return;
    }
    let me = std::env::current_exe().expect("test binary path");
    let runs = 12;
    let mut failed = 0;
    for i in 0..runs {
        let status = Command::new(&me)
            .arg("--child")
            .status()
            .expect("spawn child");
        if !status.success() {
            eprintln!("run {i}: child exited with {status}");
            failed += 1;
        }
    }
    println!(
        "exit_with_work_in_flight: {} passed, {failed} failed",
        runs - failed
    );
    if failed > 0 {
        std::process::exit(1);
    }
}
