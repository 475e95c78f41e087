//! `PJRT_Event`: completion of asynchronous work (uploads, copies, execution).

use std::sync::Arc;

use super::plugin::{pjrt_call, Args, Plugin};
use super::sys;
use crate::error::Result;

/// An owned PJRT event; destroyed on drop, whether or not it was awaited.
pub(crate) struct Event {
    raw: *mut sys::PJRT_Event,
    plugin: Arc<Plugin>,
}

impl Event {
    /// Wraps an event returned by the plugin; `None` when it returned none.
    pub(crate) fn from_raw(plugin: &Arc<Plugin>, raw: *mut sys::PJRT_Event) -> Option<Event> {
        (!raw.is_null()).then(|| Event {
            raw,
            plugin: plugin.clone(),
        })
    }

    /// Blocks until the event is ready; returns the error it carries, if any.
    pub(crate) fn wait(self) -> Result<()> {
        let mut a = sys::PJRT_Event_Await_Args::new();
        a.event = self.raw;
        pjrt_call!(&self.plugin, PJRT_Event_Await, &mut a)
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        let mut a = sys::PJRT_Event_Destroy_Args::new();
        a.event = self.raw;
        // A failure to free cannot be reported from drop; the plugin frees
        // its error object inside `check`.
        let _ = pjrt_call!(&self.plugin, PJRT_Event_Destroy, &mut a);
    }
}

/// Waits for an optional event, then frees it.
pub(crate) fn wait_opt(plugin: &Arc<Plugin>, raw: *mut sys::PJRT_Event) -> Result<()> {
    match Event::from_raw(plugin, raw) {
        Some(e) => e.wait(),
        None => Ok(()),
    }
}
