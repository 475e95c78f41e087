//! Keras's [`Sequential`]: layers applied one after another, built into a
//! functional [`Model`] on the first call.

use std::sync::{Arc, Mutex};

use crate::builder::Tree;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::pjrt::buffer::Buffer;
use crate::pjrt::client::Client;

use super::layer::Layer;
use super::model::Model;
use super::signature::Training;
use super::symbolic::{apply_layer, Input};

/// Keras's `Sequential`: layers applied one after another. Built on the
/// first call from the input's shape; compiles into one executable.
///
/// ```
/// use xlayer::builder::nn;
/// use xlayer::layers::{Inputs, JaxLayer, Out, Sequential, Training};
/// use xlayer::Client;
/// let relu = JaxLayer::new(|Inputs(x): Inputs| Ok(Out::from(nn::relu(&x.into_leaf()?)?)))?;
/// let double = JaxLayer::new(|Inputs(x): Inputs| Ok(Out::from((x.into_leaf()? * 2.0)?)))?;
/// let model = Sequential::new().add(relu).add(double);
/// let client = Client::cpu()?;
/// let x = client.buffer_from_host(&[-1f32, 2.0], &[1, 2])?;
/// assert_eq!(model.call1(&x, Training::No)?.to_vec::<f32>()?, vec![0.0, 4.0]);
/// # Ok::<(), xlayer::Error>(())
/// ```
#[derive(Default)]
pub struct Sequential {
    layers: Vec<Arc<dyn Layer>>,
    model: Mutex<Option<Arc<Model>>>,
}

impl Sequential {
    /// An empty model.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a layer at the end (the layer value stays shared).
    #[allow(clippy::should_implement_trait)]
    pub fn add<L: Layer + 'static>(mut self, layer: L) -> Self {
        self.layers.push(Arc::new(layer));
        *self.model.get_mut().unwrap_or_else(|p| p.into_inner()) = None;
        self
    }

    /// Adds a shared layer handle at the end.
    pub fn add_shared(mut self, layer: Arc<dyn Layer>) -> Self {
        self.layers.push(layer);
        *self.model.get_mut().unwrap_or_else(|p| p.into_inner()) = None;
        self
    }

    /// Builds on `client` for per-example input shape `dims` (without the
    /// batch dimension); the model is kept and reused for the same input.
    ///
    /// Errors: no layers; those of the layers' builds.
    pub fn build(&self, client: &Client, dims: &[usize], dtype: DType) -> Result<Arc<Model>> {
        let mut guard = self.model.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = guard.as_ref() {
            let want = &m.inputs.leaves()[0].spec;
            if want.dtype == dtype && want.dims[1..] == *dims && m.client.id() == client.id() {
                return Ok(m.clone());
            }
        }
        if self.layers.is_empty() {
            return Err(Error::Empty {
                what: "Sequential".into(),
                reason: "it has no layers",
            });
        }
        let x = Input::new(client, dims, dtype);
        let mut y = Tree::Leaf(x.clone());
        for l in &self.layers {
            y = apply_layer(l.clone(), &y)?;
        }
        let model = Arc::new(Model::new(x, y)?.with_name("sequential"));
        *guard = Some(model.clone());
        Ok(model)
    }

    /// The built model, if any.
    pub fn model(&self) -> Option<Arc<Model>> {
        self.model.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Runs on one input array (building on its client on first use) and
    /// returns one output.
    ///
    /// Errors: an input without a batch dimension; those of
    /// [`Sequential::build`] and [`Model::call1`].
    pub fn call1(&self, x: &Buffer, training: Training) -> Result<Buffer> {
        let dims = x.dims().get(1..).ok_or_else(|| Error::DataMismatch {
            what: "the Sequential input",
            found: x.spec().clone(),
            expected: "it needs a batch dimension".into(),
        })?;
        self.build(x.client(), dims, x.dtype())?.call1(x, training)
    }
}
