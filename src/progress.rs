//! The terminal progress bar of `Model::predict` and `Trainer::fit`: an
//! `indicatif` bar with the `progress` feature (on by default), nothing
//! without it.

/// A progress bar of a known number of steps; hidden when not visible, not
/// on a terminal, or built without the `progress` feature.
pub(crate) struct Progress {
    #[cfg(feature = "progress")]
    bar: indicatif::ProgressBar,
}

impl Progress {
    /// A bar of `steps` steps drawn with `template` (indicatif's template
    /// syntax; its default style if the template does not parse), shown
    /// only when `visible`.
    #[cfg_attr(not(feature = "progress"), allow(unused_variables))]
    pub(crate) fn new(steps: usize, template: &str, visible: bool) -> Progress {
        #[cfg(feature = "progress")]
        {
            let bar = if visible {
                indicatif::ProgressBar::new(steps as u64)
            } else {
                indicatif::ProgressBar::hidden()
            };
            bar.set_style(
                indicatif::ProgressStyle::with_template(template)
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            Progress { bar }
        }
        #[cfg(not(feature = "progress"))]
        Progress {}
    }

    /// Sets the message after the bar; `message` is only called when there
    /// is a bar to show it.
    #[cfg_attr(not(feature = "progress"), allow(unused_variables))]
    pub(crate) fn set_message(&self, message: impl FnOnce() -> String) {
        #[cfg(feature = "progress")]
        self.bar.set_message(message());
    }

    /// Advances by one step.
    pub(crate) fn inc(&self) {
        #[cfg(feature = "progress")]
        self.bar.inc(1);
    }

    /// Finishes, leaving the bar on screen.
    pub(crate) fn finish(&self) {
        #[cfg(feature = "progress")]
        self.bar.finish();
    }

    /// Finishes and removes the bar from the screen.
    pub(crate) fn finish_and_clear(&self) {
        #[cfg(feature = "progress")]
        self.bar.finish_and_clear();
    }
}
