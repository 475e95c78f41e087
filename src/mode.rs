//! The training/inference mode, shared by layers, Flax modules, train
//! steps and jit keys (re-exported as `xlayer::layers::Training`).

/// Training or inference mode: Keras's `training` argument (Flax's
/// `deterministic` / `use_running_average` are its negation). A call
/// function that takes it gets the mode of the call.
///
/// ```
/// use xlayer::layers::Training;
/// assert!(Training::Yes.is_yes() && !Training::No.is_yes());
/// assert_eq!(Training::from(true), Training::Yes);
/// assert_eq!(Training::default(), Training::No); // inference unless asked
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub enum Training {
    /// Inference (Keras `training=False`): dropout off, running statistics
    /// used, state unchanged.
    #[default]
    No,
    /// Training (Keras `training=True`): dropout on, batch statistics used
    /// and state updated.
    Yes,
}

impl Training {
    /// True in training mode.
    pub const fn is_yes(self) -> bool {
        matches!(self, Training::Yes)
    }
}

impl From<bool> for Training {
    fn from(training: bool) -> Training {
        if training {
            Training::Yes
        } else {
            Training::No
        }
    }
}

impl From<Training> for bool {
    fn from(t: Training) -> bool {
        t.is_yes()
    }
}
