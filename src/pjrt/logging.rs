//! Quiet by default: the PJRT plugin's own log lines.
//!
//! XLA inside the plugin logs through absl/tsl straight to stderr, e.g.
//! `WARNING: All log messages before absl::InitializeLog() is called are
//! written to STDERR` and `I0000 … cpu_device_count set via create_options:
//! 1` on every client creation. The plugin exports no logging API (only
//! `GetPjrtApi`), and no create option controls it; its logging reads the
//! environment variable `TF_CPP_MIN_LOG_LEVEL` (0 INFO, 1 WARNING, 2 ERROR,
//! 3 FATAL) once, on its first log line. So before the first plugin is
//! loaded, xlayer sets `TF_CPP_MIN_LOG_LEVEL=1` (warnings and errors still
//! print; plugin errors also come back as [`crate::Error::Pjrt`]), unless
//!
//! - `XLAYER_LOG` is set to a non-empty value other than `0`, or
//!   [`set_plugin_logging`]`(true)` was called (the `xlayer` CLI's
//!   `--verbose`): the plugin logs everything, as it does by default;
//! - `TF_CPP_MIN_LOG_LEVEL` is already set: the user's choice stands.
//!
//! The variable stays set, so child processes inherit it.
//!
//! Another CPU build (`cpu-zml`; `cpu-lammps` too in earlier runs) logs two
//! E-level `cpu_aot_loader` lines ("Target machine feature
//! +prefer-no-gather is not supported on the host machine", ~2 KB each)
//! for every executable it loads (from the compilation cache, or from an
//! isolated compile): its compiles record LLVM's tuning flags
//! `+prefer-no-gather`/`+prefer-no-scatter` among the target features,
//! which its loader does not find among the host's. A false alarm (the
//! executable loads and runs). While the plugin is quiet (the level is 1
//! or 2, set by xlayer or by the user), xlayer filters those lines (and
//! absl's preamble) out of the stderr of each load; see
//! `stderr_filter` for how, and its trade-offs.
//!
//! **Soundness.** Changing the environment races with foreign code that
//! reads it at the same moment on another thread (Rust's own `std::env`
//! calls are serialized by the standard library). xlayer changes it at most
//! once per process, inside the first plugin load (under the plugin
//! registry's lock, before `dlopen`), when no plugin thread exists yet. A
//! program that runs other native code on threads at that moment, and
//! wants no change at all, sets `TF_CPP_MIN_LOG_LEVEL` itself (or
//! `XLAYER_LOG=1`) before starting threads; the CLI decides in `main`,
//! before any thread starts.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Once;

/// The variable the plugin's logging reads.
const LEVEL_VAR: &str = "TF_CPP_MIN_LOG_LEVEL";
/// The level set when the plugin is quiet: INFO lines hidden, warnings and
/// errors kept.
const QUIET_LEVEL: &str = "1";

/// 0: not chosen (read `XLAYER_LOG`), 1: quiet, 2: verbose.
static CHOICE: AtomicU8 = AtomicU8::new(0);
static APPLIED: Once = Once::new();
/// Whether the plugin logs at a quiet level (1 or 2) in this process, where
/// loads filter the known false alarms; decided with the level, at the
/// first plugin load.
static FILTER: AtomicBool = AtomicBool::new(false);

/// Chooses whether the PJRT plugin's own log lines (absl/XLA INFO lines such
/// as `cpu_device_count set via create_options: 1`) reach stderr, overriding
/// `XLAYER_LOG`. Takes effect only when called before the first plugin is
/// loaded (the plugin reads its log level once); later calls change
/// nothing. Never fails.
///
/// ```
/// // Before any Client or Plugin is created:
/// xlayer::set_plugin_logging(false);
/// ```
pub fn set_plugin_logging(on: bool) {
    CHOICE.store(if on { 2 } else { 1 }, Ordering::SeqCst);
}

/// Whether `XLAYER_LOG` asks for the plugin's log lines: set to a non-empty
/// value other than `0`.
pub fn log_requested_by_env() -> bool {
    std::env::var_os("XLAYER_LOG").is_some_and(|v| !v.is_empty() && v != "0")
}

/// Whether the plugin's log lines are wanted: [`set_plugin_logging`] if
/// called, else `XLAYER_LOG`.
fn verbose() -> bool {
    match CHOICE.load(Ordering::SeqCst) {
        1 => false,
        2 => true,
        _ => log_requested_by_env(),
    }
}

/// Applies the choice to the environment the plugin reads, once per
/// process; called by the plugin loader before its first `dlopen`, while it
/// holds the registry lock.
pub(crate) fn before_first_plugin_load() {
    APPLIED.call_once(|| {
        if verbose() {
            return;
        }
        if let Some(level) = std::env::var_os(LEVEL_VAR) {
            // The user's level stands; filter only where it is quiet but
            // still lets E-level lines through.
            let quiet = matches!(level.to_str().map(str::trim), Some("1" | "2"));
            FILTER.store(quiet, Ordering::SeqCst);
            return;
        }
        // SAFETY: see the module docs. This runs once, before the first
        // plugin (the only foreign code xlayer runs) is loaded, under the
        // plugin registry's lock, so neither xlayer nor a plugin reads the
        // environment concurrently; Rust's own env calls are serialized by
        // std. The remaining race, another library's native thread calling
        // getenv at this instant, is avoided by setting TF_CPP_MIN_LOG_LEVEL
        // or XLAYER_LOG before starting such threads, which skips this.
        #[allow(unused_unsafe)]
        unsafe {
            std::env::set_var(LEVEL_VAR, QUIET_LEVEL)
        };
        FILTER.store(true, Ordering::SeqCst);
    });
}

/// Whether plugin loads filter the known false-alarm lines out of stderr
/// (`stderr_filter`): the plugin logs at level 1 or 2. False before the
/// first plugin load.
pub(crate) fn filters_false_alarms() -> bool {
    FILTER.load(Ordering::SeqCst)
}
