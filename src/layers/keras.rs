//! Keras's built-in layers for the Keras route: [`Dense`], [`Conv2D`],
//! [`Embedding`], [`Dropout`] (here) and [`LayerNormalization`],
//! [`BatchNormalization`] (in `keras_norm.rs`), with Keras's names,
//! defaults and weight names (`kernel`, `bias`, `embeddings`, `gamma`,
//! `beta`, `moving_mean`, `moving_variance`).
//!
//! Each is a call function over the builder wrapped in a [`JaxLayer`] (so
//! it is a [`Layer`]: alone, in a [`super::Sequential`], or applied to a
//! symbolic [`super::Input`]). Configure with the chainable setters of its
//! config, then `build()`:
//!
//! ```
//! use xlayer::layers::{Activation, Apply, Dense, Dropout, Input, Layer, Model, Training};
//! use xlayer::{Client, DType};
//! let client = Client::cpu()?;
//! let x = Input::new(&client, &[3], DType::F32);
//! let h = Dense::config(4).activation(Activation::Relu).build()?.apply(&x)?;
//! let y = Dense::new(2)?.apply(&Dropout::new(0.5)?.apply(&h)?)?;
//! let model = Model::new(x, y)?;
//! assert_eq!(model.count_params()?, 3 * 4 + 4 + 4 * 2 + 2);
//! let names = model.layers()[0].weights()?.params.paths();
//! assert_eq!(names, vec!["bias", "kernel"]);
//! let out = model.call1(&client.buffer_from_host(&[1f32, 2.0, 3.0], &[1, 3])?, Training::No)?;
//! assert_eq!(out.dims(), &[1, 2]);
//! # Ok::<(), xlayer::Error>(())
//! ```

use std::collections::HashMap;
use std::sync::Mutex;

use crate::builder::init::{self, Initializer};
use crate::builder::{nn, random, ConvAttrs, ConvDims, Padding, Tree, Value};
use crate::dtype::DType;
use crate::error::{Error, Result};

use super::jax_layer::{JaxLayer, JaxLayerBuilder};
use super::layer::DTypePolicy;
use super::signature::{Init, Inputs, Out, Params, Rng, Training};

/// Keras's activation names, applied after a layer's affine map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activation {
    /// `None` / `"linear"`: identity.
    #[default]
    Linear,
    /// `"relu"`.
    Relu,
    /// `"tanh"`.
    Tanh,
    /// `"sigmoid"`.
    Sigmoid,
    /// `"gelu"` (Keras's default: the exact erf form).
    Gelu,
    /// `"softmax"` over the last axis.
    Softmax,
}

impl Activation {
    /// Applies the activation.
    ///
    /// Errors: those of the builder ops (none for float inputs).
    pub fn apply(self, x: &Value) -> Result<Value> {
        match self {
            Activation::Linear => Ok(x.clone()),
            Activation::Relu => nn::relu(x),
            Activation::Tanh => x.tanh(),
            Activation::Sigmoid => nn::sigmoid(x),
            Activation::Gelu => nn::gelu(x, false),
            Activation::Softmax => nn::softmax(x, x.rank().saturating_sub(1)),
        }
    }
}

/// Keras's automatic layer names: `dense`, `dense_1`, ... per kind.
pub(crate) fn auto_name(kind: &str) -> String {
    static COUNTS: Mutex<Option<HashMap<String, usize>>> = Mutex::new(None);
    let mut guard = COUNTS.lock().unwrap_or_else(|p| p.into_inner());
    let n = guard
        .get_or_insert_with(HashMap::new)
        .entry(kind.into())
        .or_insert(0);
    let name = if *n == 0 {
        kind.to_string()
    } else {
        format!("{kind}_{n}")
    };
    *n += 1;
    name
}

/// What every Keras layer config has: a name, a seed and a dtype policy.
#[derive(Debug, Clone, Default)]
pub(crate) struct Common {
    pub name: Option<String>,
    pub seed: Option<u32>,
    pub policy: DTypePolicy,
}

impl Common {
    /// Applies the common settings to a [`JaxLayer`] builder.
    pub(crate) fn apply(self, kind: &str, b: JaxLayerBuilder) -> JaxLayerBuilder {
        let b = b
            .name(&self.name.unwrap_or_else(|| auto_name(kind)))
            .dtype_policy(self.policy);
        match self.seed {
            Some(s) => b.seed(s),
            None => b,
        }
    }
}

/// Builder-style setters of config fields: `name: Type` becomes
/// `pub fn name(mut self, name: Type) -> Self`, with the doc comments given.
macro_rules! field_setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty),* $(,)?) => {
        $(
            $(#[$doc])*
            pub fn $name(mut self, $name: $ty) -> Self {
                self.$name = $name;
                self
            }
        )*
    };
}

/// The common setters of a Keras layer config.
macro_rules! common_setters {
    () => {
        /// The layer's name (default: Keras's, e.g. `dense`, `dense_1`).
        pub fn name(mut self, name: &str) -> Self {
            self.common.name = Some(name.to_string());
            self
        }

        /// Seed of the layer's initializers and dropout keys (default: random).
        pub fn seed(mut self, seed: u32) -> Self {
            self.common.seed = Some(seed);
            self
        }

        /// The dtype policy (default float32).
        pub fn dtype_policy(mut self, policy: $crate::layers::DTypePolicy) -> Self {
            self.common.policy = policy;
            self
        }
    };
}

/// A Keras layer type: a [`JaxLayer`] inside, delegated to.
macro_rules! keras_layer {
    ($ty:ident, $kind:literal) => {
        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}({})", $kind, $crate::layers::Layer::name(&self.inner))
            }
        }

        impl $crate::layers::Layer for $ty {
            fn name(&self) -> String {
                self.inner.name()
            }
            fn kind(&self) -> &'static str {
                $kind
            }
            fn build(
                &self,
                client: &$crate::Client,
                input: &$crate::builder::Tree<$crate::ArraySpec>,
            ) -> $crate::Result<()> {
                self.inner.build(client, input)
            }
            fn weights(&self) -> $crate::Result<$crate::layers::Weights> {
                self.inner.weights()
            }
            fn set_weights(&self, weights: $crate::layers::Weights) -> $crate::Result<()> {
                self.inner.set_weights(weights)
            }
            fn trace_call(
                &self,
                b: &$crate::builder::Builder,
                args: $crate::layers::CallArgs,
            ) -> $crate::Result<(
                $crate::builder::Tree<$crate::builder::Value>,
                $crate::builder::Tree<$crate::builder::Value>,
            )> {
                self.inner.trace_call(b, args)
            }
            fn dtype_policy(&self) -> $crate::layers::DTypePolicy {
                self.inner.dtype_policy()
            }
        }

        impl $crate::layers::layer::sealed::Sealed for $ty {
            fn hooks(
                &self,
                _: $crate::layers::layer::sealed::Seal,
            ) -> &dyn $crate::layers::layer::sealed::LayerHooks {
                &self.inner
            }
        }
    };
}
pub(crate) use {common_setters, field_setters, keras_layer};

/// The one array of a layer's inputs, and the size of its last axis.
pub(crate) fn last_axis(layer: &str, x: Tree<Value>) -> Result<(Value, usize)> {
    let x = x.into_leaf()?;
    let n = *x.dims().last().ok_or_else(|| Error::DataMismatch {
        what: "the input",
        found: x.spec().clone(),
        expected: format!("{layer} needs inputs of rank 1 or more"),
    })?;
    Ok((x, n))
}

/// Keys for `n` weights from the init key.
fn keys(key: &Value, n: usize) -> Result<Vec<Value>> {
    random::split_keys(key, n)
}

/// Keras's `Dense`: `activation(inputs @ kernel + bias)` over the last
/// axis. Weights: `kernel` `(in, units)` (glorot uniform), `bias` `(units,)`
/// (zeros).
#[derive(Clone)]
pub struct Dense {
    inner: JaxLayer,
}
keras_layer!(Dense, "Dense");

/// Configures a [`Dense`].
#[derive(Debug, Clone)]
pub struct DenseConfig {
    /// Output size.
    pub units: usize,
    /// Applied to the output (default linear).
    pub activation: Activation,
    /// Whether there is a `bias` (default true).
    pub use_bias: bool,
    /// `kernel`'s initializer (default `glorot_uniform`).
    pub kernel_initializer: Initializer,
    /// `bias`'s initializer (default `zeros`).
    pub bias_initializer: Initializer,
    common: Common,
}

impl Dense {
    /// A dense layer of `units` outputs with Keras's defaults.
    ///
    /// Errors: `units` 0.
    pub fn new(units: usize) -> Result<Dense> {
        Dense::config(units).build()
    }

    /// Keras's defaults, to change with the setters.
    pub fn config(units: usize) -> DenseConfig {
        DenseConfig {
            units,
            activation: Activation::Linear,
            use_bias: true,
            kernel_initializer: init::glorot_uniform(),
            bias_initializer: init::zeros(),
            common: Common::default(),
        }
    }
}

impl DenseConfig {
    field_setters! {
        /// The activation.
        activation: Activation,
        /// Whether there is a bias.
        use_bias: bool,
        /// The kernel's initializer.
        kernel_initializer: Initializer,
        /// The bias's initializer.
        bias_initializer: Initializer,
    }

    common_setters!();

    /// Creates the layer (weights are made at build).
    ///
    /// Errors: `units` 0.
    pub fn build(self) -> Result<Dense> {
        if self.units == 0 {
            return Err(Error::InvalidSetting {
                what: "Dense".into(),
                field: "units",
                value: "0".into(),
                reason: "must be at least 1",
            });
        }
        let (units, act, use_bias) = (self.units, self.activation, self.use_bias);
        let (ki, bi) = (self.kernel_initializer, self.bias_initializer);
        let call = move |Params(p): Params, Inputs(x): Inputs| {
            let (x, _) = last_axis("Dense", x)?;
            let mut y = x.matmul(weight(&p, "Dense", "kernel")?)?;
            if use_bias {
                y = (y + weight(&p, "Dense", "bias")?)?;
            }
            Ok(Out::from(act.apply(&y)?))
        };
        let init_fn = move |Rng(key): Rng, Inputs(x): Inputs| {
            let (x, n) = last_axis("Dense", x)?;
            let k = keys(&key, 2)?;
            let dtype = float_or_f32(x.dtype());
            let mut m = vec![("kernel", Tree::leaf(ki.init(&k[0], &[n, units], dtype)?))];
            if use_bias {
                m.push(("bias", Tree::leaf(bi.init(&k[1], &[units], dtype)?)));
            }
            Ok(Init(Tree::map(m)))
        };
        let b = self
            .common
            .apply("dense", JaxLayer::builder(call).init_fn(init_fn));
        Ok(Dense { inner: b.build()? })
    }
}

/// Weight `name` of `layer`'s params or state.
///
/// Errors: [`Error::UnknownPath`] naming `name` (a layout changed by
/// `set_weights`; `layer` is kept for the call sites' reading).
pub(crate) fn weight<'a>(p: &'a Tree<Value>, _layer: &str, name: &str) -> Result<&'a Value> {
    p.get(name)
}

/// Weights of a layer fed integer or float inputs are kept in float32 (or
/// the float input's dtype).
pub(crate) fn float_or_f32(d: DType) -> DType {
    if d.is_float() {
        d
    } else {
        DType::F32
    }
}

/// Keras's `Conv2D` over `channels_last` inputs `(batch, h, w, channels)`.
/// Weights: `kernel` `(kh, kw, in / groups, filters)` (glorot uniform),
/// `bias` `(filters,)` (zeros). Padding `valid` (default) or `same`.
#[derive(Clone)]
pub struct Conv2D {
    inner: JaxLayer,
}
keras_layer!(Conv2D, "Conv2D");

/// Configures a [`Conv2D`].
#[derive(Debug, Clone)]
pub struct Conv2DConfig {
    /// Output channels.
    pub filters: usize,
    /// Window `(kh, kw)`.
    pub kernel_size: [usize; 2],
    /// Strides (default `(1, 1)`).
    pub strides: [usize; 2],
    /// `Padding::Valid` (default) or `Padding::Same` (TensorFlow's split:
    /// the odd pixel at the end).
    pub padding: Padding,
    /// Kernel dilation (default `(1, 1)`).
    pub dilation_rate: [usize; 2],
    /// Feature groups (default 1).
    pub groups: usize,
    /// Applied to the output (default linear).
    pub activation: Activation,
    /// Whether there is a `bias` (default true).
    pub use_bias: bool,
    /// `kernel`'s initializer (default `glorot_uniform`).
    pub kernel_initializer: Initializer,
    /// `bias`'s initializer (default `zeros`).
    pub bias_initializer: Initializer,
    common: Common,
}

impl Conv2D {
    /// `filters` channels over `kernel_size` windows, with Keras's defaults.
    ///
    /// Errors: see [`Conv2DConfig::build`].
    pub fn new(filters: usize, kernel_size: [usize; 2]) -> Result<Conv2D> {
        Conv2D::config(filters, kernel_size).build()
    }

    /// Keras's defaults, to change with the setters.
    pub fn config(filters: usize, kernel_size: [usize; 2]) -> Conv2DConfig {
        Conv2DConfig {
            filters,
            kernel_size,
            strides: [1, 1],
            padding: Padding::Valid,
            dilation_rate: [1, 1],
            groups: 1,
            activation: Activation::Linear,
            use_bias: true,
            kernel_initializer: init::glorot_uniform(),
            bias_initializer: init::zeros(),
            common: Common::default(),
        }
    }
}

impl Conv2DConfig {
    field_setters! {
        /// The strides.
        strides: [usize; 2],
        /// `Padding::Valid` or `Padding::Same`.
        padding: Padding,
        /// The kernel dilation.
        dilation_rate: [usize; 2],
        /// Feature groups (input channels and filters must divide by it).
        groups: usize,
        /// The activation.
        activation: Activation,
        /// Whether there is a bias.
        use_bias: bool,
        /// The kernel's initializer.
        kernel_initializer: Initializer,
    }

    common_setters!();

    /// Creates the layer (weights are made at build).
    ///
    /// Errors: `filters`, a kernel size, a stride, a dilation or `groups` 0;
    /// `filters` not divisible by `groups`. Input channels not divisible by
    /// `groups`, or inputs that are not rank 4, fail at build.
    pub fn build(self) -> Result<Conv2D> {
        let c = self;
        let zero = c.filters == 0
            || c.groups == 0
            || c.kernel_size.contains(&0)
            || c.strides.contains(&0)
            || c.dilation_rate.contains(&0);
        if zero || !c.filters.is_multiple_of(c.groups) {
            return Err(Error::InvalidSetting {
                what: "Conv2D".into(),
                field: "filters, kernel_size, strides, dilation_rate, groups",
                value: format!(
                    "{}, {:?}, {:?}, {:?}, {}",
                    c.filters, c.kernel_size, c.strides, c.dilation_rate, c.groups
                ),
                reason: "all must be at least 1 and filters divisible by groups",
            });
        }
        let (filters, ks, strides, dil, groups) = (
            c.filters,
            c.kernel_size,
            c.strides,
            c.dilation_rate,
            c.groups,
        );
        let (padding, act, use_bias) = (c.padding.clone(), c.activation, c.use_bias);
        let check = move |x: &Value| -> Result<usize> {
            let ch = match x.dims() {
                [_, _, _, ch] => *ch,
                _ => {
                    return Err(Error::DataMismatch {
                        what: "the input",
                        found: x.spec().clone(),
                        expected: "Conv2D takes (batch, height, width, channels) inputs".into(),
                    })
                }
            };
            if !ch.is_multiple_of(groups) {
                return Err(Error::InvalidSetting {
                    what: format!("Conv2D on {ch} input channels"),
                    field: "groups",
                    value: groups.to_string(),
                    reason: "the input channels do not divide into the groups",
                });
            }
            Ok(ch)
        };
        let call = move |Params(p): Params, Inputs(x): Inputs| {
            let x = x.into_leaf()?;
            check(&x)?;
            let window = [(ks[0] - 1) * dil[0] + 1, (ks[1] - 1) * dil[1] + 1];
            let pads = padding.resolve(&x.dims()[1..3], &window, &strides);
            let attrs = ConvAttrs::new(ConvDims::nhwc(2))
                .strides(&strides)
                .padding(&pads)
                .rhs_dilation(&dil)
                .feature_group_count(groups);
            let kernel = weight(&p, "Conv2D", "kernel")?;
            let mut y = x.conv_general(kernel, &attrs)?;
            if use_bias {
                y = (y + weight(&p, "Conv2D", "bias")?)?;
            }
            Ok(Out::from(act.apply(&y)?))
        };
        let (ki, bi) = (c.kernel_initializer, c.bias_initializer);
        let init_fn = move |Rng(key): Rng, Inputs(x): Inputs| {
            let x = x.into_leaf()?;
            let ch = check(&x)?;
            let k = keys(&key, 2)?;
            let dtype = float_or_f32(x.dtype());
            let shape = [ks[0], ks[1], ch / groups, filters];
            let mut m = vec![("kernel", Tree::leaf(ki.init(&k[0], &shape, dtype)?))];
            if use_bias {
                m.push(("bias", Tree::leaf(bi.init(&k[1], &[filters], dtype)?)));
            }
            Ok(Init(Tree::map(m)))
        };
        let b = c
            .common
            .apply("conv2d", JaxLayer::builder(call).init_fn(init_fn));
        Ok(Conv2D { inner: b.build()? })
    }
}

/// Keras's `Embedding`: integer indices `(...)` → rows of `embeddings`
/// `(input_dim, output_dim)` (uniform in `[-0.05, 0.05)`), output
/// `(..., output_dim)`. Indices are clamped into range, as XLA's gather does.
#[derive(Clone)]
pub struct Embedding {
    inner: JaxLayer,
}
keras_layer!(Embedding, "Embedding");

/// Configures an [`Embedding`].
#[derive(Debug, Clone)]
pub struct EmbeddingConfig {
    /// Vocabulary size.
    pub input_dim: usize,
    /// Embedding width.
    pub output_dim: usize,
    /// `embeddings`' initializer (default: Keras's `uniform`, in
    /// `[-0.05, 0.05)`); `None` for the default.
    pub embeddings_initializer: Option<Initializer>,
    common: Common,
}

impl Embedding {
    /// A table of `input_dim` rows of `output_dim`, Keras's defaults.
    ///
    /// Errors: a size 0.
    pub fn new(input_dim: usize, output_dim: usize) -> Result<Embedding> {
        Embedding::config(input_dim, output_dim).build()
    }

    /// Keras's defaults, to change with the setters.
    pub fn config(input_dim: usize, output_dim: usize) -> EmbeddingConfig {
        EmbeddingConfig {
            input_dim,
            output_dim,
            embeddings_initializer: None,
            common: Common::default(),
        }
    }
}

impl EmbeddingConfig {
    /// The table's initializer.
    pub fn embeddings_initializer(mut self, init: Initializer) -> Self {
        self.embeddings_initializer = Some(init);
        self
    }

    common_setters!();

    /// Creates the layer (the table is made at build).
    ///
    /// Errors: a size 0. Float indices fail at the first call.
    pub fn build(self) -> Result<Embedding> {
        let (vocab, width) = (self.input_dim, self.output_dim);
        if vocab == 0 || width == 0 {
            return Err(Error::InvalidSetting {
                what: "Embedding".into(),
                field: if vocab == 0 {
                    "input_dim"
                } else {
                    "output_dim"
                },
                value: "0".into(),
                reason: "must be at least 1",
            });
        }
        let call = move |Params(p): Params, Inputs(x): Inputs| {
            let ids = x.into_leaf()?;
            if ids.dtype().is_float() {
                return Err(Error::DataMismatch {
                    what: "the input",
                    found: ids.spec().clone(),
                    expected: "Embedding takes integer indices".into(),
                });
            }
            let table = weight(&p, "Embedding", "embeddings")?;
            Ok(Out::from(table.take(&ids, 0)?))
        };
        let init = self.embeddings_initializer;
        let init_fn = move |Rng(key): Rng| {
            let shape = [vocab, width];
            let w = match &init {
                Some(i) => i.init(&key, &shape, DType::F32)?,
                None => (init::uniform(0.1).init(&key, &shape, DType::F32)? - 0.05)?,
            };
            Ok(Init(Tree::map([("embeddings", Tree::leaf(w))])))
        };
        let b = self
            .common
            .apply("embedding", JaxLayer::builder(call).init_fn(init_fn));
        Ok(Embedding { inner: b.build()? })
    }
}

/// Keras's `Dropout`: in training, each element is kept with probability
/// `1 - rate` and scaled by `1 / (1 - rate)`, else zeroed; in inference the
/// identity. No weights; a fresh key per training call.
#[derive(Clone)]
pub struct Dropout {
    inner: JaxLayer,
}
keras_layer!(Dropout, "Dropout");

/// Configures a [`Dropout`].
#[derive(Debug, Clone)]
pub struct DropoutConfig {
    /// Fraction of elements dropped, in `[0, 1)`.
    pub rate: f64,
    common: Common,
}

impl Dropout {
    /// Drops `rate` of the elements in training.
    ///
    /// Errors: `rate` outside `[0, 1)`.
    pub fn new(rate: f64) -> Result<Dropout> {
        Dropout::config(rate).build()
    }

    /// Keras's defaults, to change with the setters.
    pub fn config(rate: f64) -> DropoutConfig {
        DropoutConfig {
            rate,
            common: Common::default(),
        }
    }
}

impl DropoutConfig {
    common_setters!();

    /// Creates the layer.
    ///
    /// Errors: `rate` outside `[0, 1)`.
    pub fn build(self) -> Result<Dropout> {
        let rate = self.rate;
        if !(0.0..1.0).contains(&rate) {
            return Err(Error::InvalidSetting {
                what: "Dropout".into(),
                field: "rate",
                value: rate.to_string(),
                reason: "must be in [0, 1)",
            });
        }
        let call = move |rng: Option<Rng>, Inputs(x): Inputs, t: Training| {
            let x = x.into_leaf()?;
            match (t, rng) {
                (Training::Yes, Some(Rng(key))) if rate > 0.0 => {
                    let keep = 1.0 - rate;
                    let mask = random::bernoulli(&key, keep, x.dims())?;
                    let zeros = x.scalar_like(0.0)?.broadcast_to(x.dims())?;
                    Ok(Out::from(mask.select(&(&x / keep)?, &zeros)?))
                }
                _ => Ok(Out::from(x)),
            }
        };
        let b = self.common.apply("dropout", JaxLayer::builder(call));
        Ok(Dropout { inner: b.build()? })
    }
}
