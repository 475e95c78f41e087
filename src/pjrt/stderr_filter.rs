//! One known false alarm kept off stderr: the `cpu_aot_loader` lines that
//! some CPU plugin builds log on every executable they load.
//!
//! `cpu-zml` (and, in earlier runs, `cpu-lammps`) records LLVM's tuning flags
//! `+prefer-no-gather`/`+prefer-no-scatter` among the target features of
//! every compile on an AVX-512 host (XLA adds them whenever an `avx512`
//! feature is enabled). Its loader compares the recorded features with
//! the host's CPUID features, where tuning flags never appear, and logs an
//! E-level line of ~2 KB per flag ("Target machine feature
//! +prefer-no-gather is not supported on the host machine ... This could
//! lead to execution errors such as SIGILL"): two lines for every
//! executable loaded from the compilation cache or an isolated compile. The
//! executable loads and runs; nothing is wrong. No compile option avoids
//! it short of `xla_cpu_max_isa=AVX2` (no AVX-512 code at all), and E-level
//! lines pass xlayer's quiet default (`TF_CPP_MIN_LOG_LEVEL=1`).
//!
//! So while the plugin's logging is quiet (see [`super::logging`]),
//! [`without_false_alarms`] runs the plugin's deserialize-and-load call
//! with file descriptor 2 pointed at an anonymous in-memory file, then
//! writes every captured line back to stderr except
//!
//! - a `cpu_aot_loader` line about a `+prefer-…` feature (LLVM tuning
//!   flags, never a CPUID feature: the line is always a false alarm); a
//!   line about a real feature, such as `+avx512f` in an entry compiled on
//!   another machine, still prints;
//! - absl's preamble `WARNING: All log messages before
//!   absl::InitializeLog() is called are written to STDERR`, which precedes
//!   the process's first plugin log line.
//!
//! **Trade-offs.** File descriptor 2 belongs to the whole process: while a
//! load runs (milliseconds), what other threads write to stderr goes to the
//! capture and is written back when the load ends, delayed but not lost
//! (only the two kinds of lines above are dropped). Loads are serialized by
//! a process-wide lock. If the plugin kills the process inside the load,
//! the lines it wrote during that load are lost with it. The capture is a
//! file, not a pipe, so a chatty plugin cannot block on a full pipe. When
//! the capture cannot be set up (no `memfd_create`, no free descriptor),
//! the call runs unfiltered. `XLAYER_LOG`, the CLI's `--verbose` or a
//! user's own `TF_CPP_MIN_LOG_LEVEL` of 0 (all lines) or 3 (fatal only)
//! turn the filter off.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::{Mutex, PoisonError};

/// Serializes the captures: fd 2 can be redirected for one call at a time.
static CAPTURE: Mutex<()> = Mutex::new(());

/// The standard error file descriptor.
const STDERR_FD: libc::c_int = 2;

/// Runs `call` (a plugin call that may log the false alarm) with the known
/// false-alarm lines removed from what it writes to stderr, when the
/// plugin's logging is quiet; otherwise just runs it. Returns what `call`
/// returns.
pub(crate) fn without_false_alarms<T>(call: impl FnOnce() -> T) -> T {
    if !super::logging::filters_false_alarms() {
        return call();
    }
    let _one_at_a_time = CAPTURE.lock().unwrap_or_else(PoisonError::into_inner);
    let capture = Capture::start();
    let out = call();
    drop(capture);
    out
}

/// Whether `line` (one stderr line, without its newline) is a known false
/// alarm: a `cpu_aot_loader` complaint about a `+prefer-…` tuning flag, or
/// absl's pre-initialization preamble.
pub(crate) fn is_false_alarm(line: &str) -> bool {
    if line.contains("All log messages before absl::InitializeLog() is called") {
        return true;
    }
    if !line.contains("cpu_aot_loader") || !line.contains("supported on the host machine") {
        return false;
    }
    let Some((_, rest)) = line.split_once("Target machine feature ") else {
        return false;
    };
    let feature = rest.split_whitespace().next().unwrap_or("");
    feature.starts_with("+prefer-")
}

/// `captured` without its false-alarm lines; every other byte kept, in
/// order (a last line without a newline included).
pub(crate) fn drop_false_alarms(captured: &[u8]) -> Vec<u8> {
    let mut kept = Vec::with_capacity(captured.len());
    for line in captured.split_inclusive(|&b| b == b'\n') {
        let text = String::from_utf8_lossy(line);
        if !is_false_alarm(text.trim_end_matches(['\n', '\r'])) {
            kept.extend_from_slice(line);
        }
    }
    kept
}

/// fd 2 redirected to an anonymous file; restored, and the captured lines
/// written back, on drop.
struct Capture {
    /// The anonymous file fd 2 points at while the capture runs.
    file: File,
    /// The real stderr, duplicated before the redirect.
    saved: OwnedFd,
}

impl Capture {
    /// Redirects fd 2 into a fresh anonymous file; `None` (nothing
    /// changed) when a step fails.
    fn start() -> Option<Capture> {
        let fd = anonymous_file()?;
        // SAFETY: `fd` is a fresh descriptor owned by nothing else.
        let file = unsafe { File::from_raw_fd(fd) };
        // SAFETY: duplicating fd 2 (open for the whole process life) into a
        // new close-on-exec descriptor at or above 3; no memory involved.
        let saved = unsafe { libc::fcntl(STDERR_FD, libc::F_DUPFD_CLOEXEC, 3) };
        if saved < 0 {
            return None;
        }
        // SAFETY: `saved` is the fresh descriptor fcntl just returned.
        let saved = unsafe { OwnedFd::from_raw_fd(saved) };
        flush_c_streams();
        // SAFETY: dup2 atomically makes fd 2 refer to our file; both
        // descriptors are open. Writers on other threads see either the old
        // or the new target, never a closed fd 2.
        if unsafe { libc::dup2(fd, STDERR_FD) } < 0 {
            return None;
        }
        Some(Capture { file, saved })
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        flush_c_streams();
        // SAFETY: restores fd 2 to the duplicate of the real stderr taken
        // in `start`; both descriptors are open (owned by `self`).
        unsafe { libc::dup2(self.saved.as_raw_fd(), STDERR_FD) };
        let mut captured = Vec::new();
        if self.file.seek(SeekFrom::Start(0)).is_ok()
            && self.file.read_to_end(&mut captured).is_ok()
        {
            let kept = drop_false_alarms(&captured);
            if !kept.is_empty() {
                let _ = std::io::stderr().write_all(&kept);
            }
        }
    }
}

/// A new anonymous in-memory file (`memfd_create`), as a raw descriptor
/// owned by the caller; `None` when it cannot be made.
#[cfg(target_os = "linux")]
fn anonymous_file() -> Option<libc::c_int> {
    // SAFETY: memfd_create with a NUL-terminated name and a valid flag; on
    // success it returns a new descriptor that only the caller owns.
    let fd = unsafe { libc::memfd_create(c"xlayer-stderr".as_ptr(), libc::MFD_CLOEXEC) };
    (fd >= 0).then_some(fd)
}

/// No anonymous files outside Linux (where no plugin runs anyway): loads
/// run unfiltered.
#[cfg(not(target_os = "linux"))]
fn anonymous_file() -> Option<libc::c_int> {
    None
}

/// Flushes C stdio output streams, so that nothing buffered before (or
/// during) the capture lands on the wrong side of the switch.
fn flush_c_streams() {
    // SAFETY: fflush(NULL) flushes every open output stream; it takes the
    // streams' own locks and touches no Rust memory.
    unsafe { libc::fflush(std::ptr::null_mut()) };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of the line `cpu-zml` logs (the feature lists shortened).
    fn aot_line(feature: &str) -> String {
        format!(
            "E0000 00:00:1764765000.123456   4242 cpu_aot_loader.cc:220] Loading XLA:CPU AOT \
             result. Target machine feature {feature} is not  supported on the host machine. \
             Machine type used for XLA:CPU compilation doesn't match the machine type for \
             execution. Compile machine features: [+avx512f,+prefer-no-gather] vs host machine \
             features: [avx512f]. This could lead to execution errors such as SIGILL."
        )
    }

    #[test]
    fn tuning_flag_lines_and_the_preamble_are_false_alarms() {
        assert!(is_false_alarm(&aot_line("+prefer-no-gather")));
        assert!(is_false_alarm(&aot_line("+prefer-no-scatter")));
        assert!(is_false_alarm(
            "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
        ));
    }

    #[test]
    fn real_features_and_other_lines_are_kept() {
        assert!(!is_false_alarm(&aot_line("+avx512f")));
        assert!(!is_false_alarm(&aot_line("+amx-tile")));
        assert!(!is_false_alarm(
            "E0000 00:00:1764765000.1 4242 pjrt_client.cc:99] prefer-no-gather elsewhere"
        ));
        assert!(!is_false_alarm("F0000 cpu_aot_loader.cc:1] Check failed"));
        assert!(!is_false_alarm(""));
    }

    #[test]
    fn dropping_keeps_every_other_byte_in_order() {
        let text = format!(
            "first\n{}\n{}\r\nmiddle\n{}\nlast without newline",
            aot_line("+prefer-no-gather"),
            aot_line("+prefer-no-scatter"),
            aot_line("+avx512bw"),
        );
        let kept = String::from_utf8(drop_false_alarms(text.as_bytes())).unwrap();
        assert_eq!(
            kept,
            format!(
                "first\nmiddle\n{}\nlast without newline",
                aot_line("+avx512bw")
            )
        );
        assert!(drop_false_alarms(b"").is_empty());
        assert_eq!(drop_false_alarms(b"\n\n"), b"\n\n");
    }
}
