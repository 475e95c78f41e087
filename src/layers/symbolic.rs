//! The functional API's symbolic side: [`Input`], the [`Symbolic`] arrays
//! layers are applied to, and [`Apply`]/[`apply_layer`], which build a layer
//! on its inputs' client and record it in the graph a [`super::Model`] is
//! made from.

use std::sync::Arc;

use crate::builder::Tree;
use crate::dtype::{ArraySpec, DType};
use crate::error::{Error, Result};
use crate::pjrt::client::Client;

use super::layer::{output_specs, Layer};
use super::signature::Training;

/// A node of the functional graph: a model input or one layer application.
pub(super) enum SymNode {
    Input {
        id: usize,
        spec: ArraySpec,
    },
    Apply {
        layer: Arc<dyn Layer>,
        inputs: Tree<Symbolic>,
        outputs: Tree<ArraySpec>,
    },
}

/// A symbolic array of the functional API: an [`Input`] or the output of a
/// layer applied to symbolic arrays. Its first dimension is the batch,
/// unknown until the model is called (shown as `None`; traced as 1).
#[derive(Clone)]
pub struct Symbolic {
    pub(super) node: Arc<SymNode>,
    /// Which output leaf of the node.
    pub(super) leaf: usize,
    pub(super) spec: ArraySpec,
    /// The client layers applied to it are built on.
    pub(super) client: Client,
}

impl std::fmt::Debug for Symbolic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Symbolic({})", shape_string(&self.spec))
    }
}

/// Keras's shape notation, batch unknown: `(None, 28, 28)`.
pub(super) fn shape_string(spec: &ArraySpec) -> String {
    let rest: Vec<String> = spec.dims.iter().skip(1).map(|d| d.to_string()).collect();
    if rest.is_empty() {
        "(None,)".to_string()
    } else {
        format!("(None, {})", rest.join(", "))
    }
}

static INPUT_IDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Keras's `Input`: a symbolic model input of per-example shape `dims`,
/// on the client that layers applied to it are built on (and that the model
/// runs on).
///
/// ```
/// use xlayer::layers::Input;
/// let client = xlayer::Client::cpu()?;
/// let x = Input::new(&client, &[28, 28, 1], xlayer::DType::F32);
/// assert_eq!(x.dims(), &[1, 28, 28, 1]); // batch traced as 1
/// # Ok::<(), xlayer::Error>(())
/// ```
pub struct Input;

impl Input {
    /// A symbolic input of per-example shape `dims` (the batch dimension is
    /// added) on `client`.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(client: &Client, dims: &[usize], dtype: DType) -> Symbolic {
        let mut full = vec![1];
        full.extend_from_slice(dims);
        let spec = ArraySpec::new(dtype, full);
        let id = INPUT_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Symbolic {
            node: Arc::new(SymNode::Input {
                id,
                spec: spec.clone(),
            }),
            leaf: 0,
            spec,
            client: client.clone(),
        }
    }
}

impl Symbolic {
    /// Dimensions, batch (traced as 1) first.
    pub fn dims(&self) -> &[usize] {
        &self.spec.dims
    }

    /// The dtype.
    pub fn dtype(&self) -> DType {
        self.spec.dtype
    }

    /// The client layers applied to it are built on.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

/// Applying a layer to symbolic inputs (the functional API). Implemented for
/// every layer type; the layer is built from the symbolic input specs, on
/// the inputs' client.
pub trait Apply {
    /// Applies to one symbolic array; the layer must return one array.
    fn apply(&self, x: &Symbolic) -> Result<Symbolic>;
    /// Applies to a tree of symbolic arrays; returns the output tree.
    fn apply_tree(&self, x: &Tree<Symbolic>) -> Result<Tree<Symbolic>>;
}

impl<L: Layer + Clone + 'static> Apply for L {
    fn apply(&self, x: &Symbolic) -> Result<Symbolic> {
        match self.apply_tree(&Tree::Leaf(x.clone()))? {
            Tree::Leaf(s) => Ok(s),
            other => Err(Error::NotALeaf {
                what: format!("layer `{}` (use apply_tree)", self.name()),
                paths: other.paths(),
            }),
        }
    }

    fn apply_tree(&self, x: &Tree<Symbolic>) -> Result<Tree<Symbolic>> {
        let layer: Arc<dyn Layer> = Arc::new(self.clone());
        apply_layer(layer, x)
    }
}

/// Applies a shared layer handle to symbolic inputs, building it on their
/// client.
///
/// Errors: no symbolic inputs; inputs of different clients; those of the
/// layer's build and call function.
pub fn apply_layer(layer: Arc<dyn Layer>, x: &Tree<Symbolic>) -> Result<Tree<Symbolic>> {
    let client = common_client(&x.leaves(), &layer.name())?;
    let specs = x.map_leaves(&mut |s| s.spec.clone());
    layer.build(&client, &specs)?;
    let outputs = output_specs(layer.as_ref(), &specs, Training::No)?;
    let node = Arc::new(SymNode::Apply {
        layer,
        inputs: x.clone(),
        outputs: outputs.clone(),
    });
    let mut i = 0;
    Ok(outputs.map_leaves(&mut |s| {
        let sym = Symbolic {
            node: node.clone(),
            leaf: i,
            spec: s.clone(),
            client: client.clone(),
        };
        i += 1;
        sym
    }))
}

/// The one client of symbolic arrays `xs` (applied to by `what`).
pub(super) fn common_client(xs: &[&Symbolic], what: &str) -> Result<Client> {
    let first = xs.first().ok_or_else(|| Error::Empty {
        what: what.to_string(),
        reason: "no symbolic inputs",
    })?;
    if let Some(other) = xs.iter().find(|s| s.client.id() != first.client.id()) {
        return Err(Error::ForeignClient {
            what: format!("a symbolic input {} of {what}", shape_string(&other.spec)),
            other: format!("{:?}", other.client),
            this: format!("{:?}", first.client),
        });
    }
    Ok(first.client.clone())
}

/// A graph node's identity (its address).
pub(super) fn node_key(n: &Arc<SymNode>) -> usize {
    Arc::as_ptr(n) as *const () as usize
}

/// A layer's identity (its address): one layer applied twice is one layer.
pub(super) fn layer_key(l: &Arc<dyn Layer>) -> usize {
    Arc::as_ptr(l) as *const () as usize
}
