//! Training pieces: optimizers as pure update rules over param trees
//! ([`optim`]) and Keras's losses and metrics ([`loss`]). Everything is
//! traced into the builder, so a whole train step compiles into one program.

pub mod fit;
pub mod loss;
pub mod optim;

pub use fit::{FitOptions, History, Metric};
pub use loss::{accuracy, Loss};
pub use optim::{global_norm, Adam, ClipByGlobalNorm, Optimizer, RmsProp, Schedule, Sgd};
