//! Training: a [`Trainer`] owns a [`crate::layers::Model`] with an
//! optimizer ([`optim`], pure update rules over param trees), a loss and
//! metrics ([`loss`]), and runs Keras's `fit` / `evaluate` ([`fit`]), on
//! one device or data-parallel over a mesh ([`DataParallel`]).
//! Everything is traced into the builder, so a whole train step compiles
//! into one program. `train` depends on `layers`, never the reverse.

mod data_parallel;
pub mod fit;
pub mod loss;
pub mod optim;
mod trainer;

pub use data_parallel::DataParallel;
pub use fit::{FitOptions, History, Metric};
pub use loss::{accuracy, Loss};
pub use optim::{global_norm, Adam, ClipByGlobalNorm, Optimizer, RmsProp, Schedule, Sgd};
pub use trainer::Trainer;
