//! The `Module` trait, methods (the call, named methods, free functions
//! taking the module first), closure-defined modules, and `init`/`apply`
//! both traced (into a builder) and run (compiled on a client).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::builder::{trace, Builder, Tree, Value};
use crate::dtype::{ArraySpec, DType};
use crate::error::{Error, Result};
use crate::mode::Training;
use crate::pjrt::buffer::Buffer;
use crate::pjrt::client::Client;

use super::scope::{flatten_vars, unflatten_vars, Mutable, Scope};

/// The name of a module's main method (Flax's `__call__`).
pub const CALL: &str = "__call__";

/// A method's name and whether it takes a `training` argument (Keras passes
/// `training` only to methods that take it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodSig {
    /// The method's name ([`CALL`] for the call).
    pub name: String,
    /// Whether it takes `training`.
    pub takes_training: bool,
}

impl MethodSig {
    /// A method signature.
    pub fn new(name: &str, takes_training: bool) -> MethodSig {
        MethodSig {
            name: name.to_string(),
            takes_training,
        }
    }
}

/// A Flax module: a small configuration value whose methods trace into a
/// [`Scope`] (the body of a `@compact` method). One traced call serves both
/// `init` (variables created) and `apply` (variables read).
///
/// `call_method` runs in the module's own scope (for a submodule, the child
/// scope its parent pushed); `training` is `Some` only for methods whose
/// [`MethodSig::takes_training`] is true.
pub trait Module: Send + Sync {
    /// The class name (`Dense`), used for automatic names (`Dense_0`).
    fn type_name(&self) -> String;

    /// The methods `call_method` accepts (default: the call, no `training`).
    fn methods(&self) -> Vec<MethodSig> {
        vec![MethodSig::new(CALL, false)]
    }

    /// Runs method `method` on `inputs` in `scope`.
    fn call_method(
        &self,
        scope: &Scope,
        method: &str,
        inputs: &Tree<Value>,
        training: Option<bool>,
    ) -> Result<Tree<Value>>;
}

/// A free function used as a method: takes the module first (Keras's
/// unbound `method`), then the scope, the inputs and `training`.
pub type FreeFn =
    dyn Fn(&dyn Module, &Scope, &Tree<Value>, Option<bool>) -> Result<Tree<Value>> + Send + Sync;

/// Which method `init`/`apply`/[`super::FlaxLayer`] run.
#[derive(Clone)]
pub enum Method {
    /// The module's call (`__call__`).
    Call,
    /// A method of the module by name (Keras: `method=module.forward`).
    Named(String),
    /// A free function taking the module first (Keras: a function not
    /// defined in the module).
    Free {
        /// The function.
        f: Arc<FreeFn>,
        /// Whether it takes `training`.
        takes_training: bool,
    },
}

impl std::fmt::Debug for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Method::Call => write!(f, "Method::Call"),
            Method::Named(n) => write!(f, "Method::Named({n})"),
            Method::Free { takes_training, .. } => {
                write!(f, "Method::Free(takes_training: {takes_training})")
            }
        }
    }
}

impl Method {
    /// A named method.
    pub fn named(name: &str) -> Method {
        Method::Named(name.to_string())
    }

    /// A free function taking the module first.
    pub fn free(
        takes_training: bool,
        f: impl Fn(&dyn Module, &Scope, &Tree<Value>, Option<bool>) -> Result<Tree<Value>>
            + Send
            + Sync
            + 'static,
    ) -> Method {
        Method::Free {
            f: Arc::new(f),
            takes_training,
        }
    }

    /// Whether this method of `module` takes `training`.
    ///
    /// Errors: [`Error::Flax`] naming the module and listing its methods
    /// when a named method does not exist.
    pub fn takes_training(&self, module: &dyn Module) -> Result<bool> {
        let name = match self {
            Method::Free { takes_training, .. } => return Ok(*takes_training),
            Method::Call => CALL,
            Method::Named(n) => n.as_str(),
        };
        module
            .methods()
            .into_iter()
            .find(|m| m.name == name)
            .map(|m| m.takes_training)
            .ok_or_else(|| Error::Flax {
                path: module.type_name(),
                message: format!(
                    "module has no method `{name}` (methods: {:?})",
                    module
                        .methods()
                        .iter()
                        .map(|m| m.name.clone())
                        .collect::<Vec<_>>()
                ),
            })
    }

    /// Runs the method of `module` in `scope`. `training` is passed on as
    /// given (use [`Method::takes_training`] to decide whether to pass it).
    pub fn invoke(
        &self,
        module: &dyn Module,
        scope: &Scope,
        inputs: &Tree<Value>,
        training: Option<bool>,
    ) -> Result<Tree<Value>> {
        match self {
            Method::Call => module.call_method(scope, CALL, inputs, training),
            Method::Named(n) => {
                self.takes_training(module)?;
                module.call_method(scope, n, inputs, training)
            }
            Method::Free { f, .. } => f(module, scope, inputs, training),
        }
    }
}

/// The body of a closure-defined method.
pub type MethodFn = dyn Fn(&Scope, &Tree<Value>, Option<bool>) -> Result<Tree<Value>> + Send + Sync;

/// A module defined by closures, one per method: what a `@compact` linen
/// class with a few methods becomes when ported.
///
/// ```
/// use xlayer::builder::{nn, Tree};
/// use xlayer::flax::{Dense, FnModule, Module};
/// let mlp = FnModule::new("MLP").call(|s, x, _| {
///     let x = x.clone().into_leaf()?;
///     let h = nn::relu(&Dense::new(8).apply(s, &x)?)?;
///     Ok(Tree::leaf(Dense::new(2).apply(s, &h)?))
/// });
/// assert_eq!(mlp.type_name(), "MLP");
/// ```
#[derive(Clone)]
pub struct FnModule {
    type_name: String,
    methods: Vec<(MethodSig, Arc<MethodFn>)>,
}

impl std::fmt::Debug for FnModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FnModule({})", self.type_name)
    }
}

impl FnModule {
    /// A module of class `type_name` without methods yet.
    pub fn new(type_name: &str) -> FnModule {
        FnModule {
            type_name: type_name.to_string(),
            methods: vec![],
        }
    }

    /// Sets the call (`__call__`), without `training`.
    pub fn call(
        self,
        f: impl Fn(&Scope, &Tree<Value>, Option<bool>) -> Result<Tree<Value>> + Send + Sync + 'static,
    ) -> FnModule {
        self.method(CALL, false, f)
    }

    /// Sets the call (`__call__`) taking `training`.
    pub fn call_training(
        self,
        f: impl Fn(&Scope, &Tree<Value>, Option<bool>) -> Result<Tree<Value>> + Send + Sync + 'static,
    ) -> FnModule {
        self.method(CALL, true, f)
    }

    /// Adds (or replaces) a named method.
    pub fn method(
        mut self,
        name: &str,
        takes_training: bool,
        f: impl Fn(&Scope, &Tree<Value>, Option<bool>) -> Result<Tree<Value>> + Send + Sync + 'static,
    ) -> FnModule {
        self.methods.retain(|(m, _)| m.name != name);
        self.methods
            .push((MethodSig::new(name, takes_training), Arc::new(f)));
        self
    }
}

impl Module for FnModule {
    fn type_name(&self) -> String {
        self.type_name.clone()
    }

    fn methods(&self) -> Vec<MethodSig> {
        self.methods.iter().map(|(m, _)| m.clone()).collect()
    }

    fn call_method(
        &self,
        scope: &Scope,
        method: &str,
        inputs: &Tree<Value>,
        training: Option<bool>,
    ) -> Result<Tree<Value>> {
        let (_, f) = self
            .methods
            .iter()
            .find(|(m, _)| m.name == method)
            .ok_or_else(|| Error::Flax {
                path: self.type_name.clone(),
                message: format!(
                    "module has no method `{method}` (methods: {:?})",
                    self.methods
                        .iter()
                        .map(|(m, _)| m.name.clone())
                        .collect::<Vec<_>>()
                ),
            })?;
        f(scope, inputs, training)
    }
}

/// Traced `module.init`: runs `method` with every collection mutable (but
/// `intermediates`, as Flax) and rngs `rngs`; returns the outputs and the
/// variables `{collection: {...}}`.
pub fn init_traced(
    b: &Builder,
    module: &dyn Module,
    method: &Method,
    rngs: BTreeMap<String, Value>,
    inputs: &Tree<Value>,
    training: Option<bool>,
) -> Result<(Tree<Value>, Tree<Value>)> {
    let scope = Scope::root(
        b,
        &Tree::Empty,
        rngs,
        Mutable::AllBut(vec!["intermediates".into()]),
        true,
    )?;
    let out = method.invoke(module, &scope, inputs, training)?;
    Ok((out, unflatten_vars(&scope.take_vars())?))
}

/// Traced `module.apply`: runs `method` over `variables` with rngs `rngs`;
/// returns the outputs and the mutable collections (all their variables,
/// as Flax returns them; an empty map when nothing is mutable).
#[allow(clippy::too_many_arguments)]
pub fn apply_traced(
    b: &Builder,
    module: &dyn Module,
    method: &Method,
    variables: &Tree<Value>,
    rngs: BTreeMap<String, Value>,
    mutable: Mutable,
    inputs: &Tree<Value>,
    training: Option<bool>,
) -> Result<(Tree<Value>, Tree<Value>)> {
    let scope = Scope::root(b, variables, rngs, mutable, false)?;
    let out = method.invoke(module, &scope, inputs, training)?;
    let m = scope.mutable();
    let mut vars = scope.take_vars();
    vars.retain(|c, _| m.allows(c));
    Ok((out, unflatten_vars(&vars)?))
}

/// Named rng streams as raw `u32[2]` key data (`jax.random.PRNGKey`).
///
/// ```
/// use xlayer::flax::Rngs;
/// let r = Rngs::seed(0).with_seed("dropout", 1);
/// assert_eq!(r.names(), vec!["dropout", "params"]);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rngs(pub(super) BTreeMap<String, [u32; 2]>);

impl Rngs {
    /// No streams.
    pub fn new() -> Rngs {
        Rngs::default()
    }

    /// `{"params": PRNGKey(seed)}` (what `module.init(PRNGKey(seed), ...)` uses).
    pub fn seed(seed: u64) -> Rngs {
        Rngs::new().with_seed("params", seed)
    }

    /// Adds stream `name` with key data `key`.
    pub fn with(mut self, name: &str, key: [u32; 2]) -> Rngs {
        self.0.insert(name.to_string(), key);
        self
    }

    /// Adds stream `name` with `PRNGKey(seed)`.
    pub fn with_seed(self, name: &str, seed: u64) -> Rngs {
        self.with(name, crate::builder::random::key_data(seed))
    }

    /// The stream names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

fn run_traced(
    client: &Client,
    name: &str,
    rngs: &Rngs,
    variables: &Tree<&Buffer>,
    inputs: &Tree<&Buffer>,
    f: impl FnOnce(&Builder, BTreeMap<String, Value>, Tree<Value>, Tree<Value>) -> Result<Tree<Value>>,
) -> Result<Tree<Buffer>> {
    let key_spec = ArraySpec::new(DType::U32, vec![2]);
    let spec_of = |t: &Tree<&Buffer>| t.map_leaves(&mut |b| b.spec().clone());
    let in_tree = Tree::tuple([
        Tree::List(
            rngs.0
                .keys()
                .map(|_| Tree::Leaf(key_spec.clone()))
                .collect(),
        ),
        spec_of(variables),
        spec_of(inputs),
    ]);
    let mut out_tree = Tree::Empty;
    let c = trace(name, &in_tree, |b, t| {
        let Tree::Tuple(mut parts) = t else {
            return Err(Error::NotATuple {
                what: format!("{name}: traced inputs"),
                paths: t.paths(),
            });
        };
        let ins = parts.pop().unwrap_or_default();
        let vars = parts.pop().unwrap_or_default();
        let keys = parts.pop().unwrap_or_default().into_leaves();
        let rng_map: BTreeMap<String, Value> = rngs.0.keys().cloned().zip(keys).collect();
        let out = f(b, rng_map, vars, ins)?;
        out_tree = out.structure();
        Ok(out)
    })?;
    let exe = c.compile(client)?;
    let key_bufs: Vec<Buffer> = rngs
        .0
        .values()
        .map(|k| client.buffer_from_host(k, &[2]))
        .collect::<Result<_>>()?;
    let mut args: Vec<&Buffer> = key_bufs.iter().collect();
    args.extend(variables.leaves().into_iter().copied());
    args.extend(inputs.leaves().into_iter().copied());
    let outs = exe.execute(&args)?;
    out_tree.unflatten(outs)
}

/// The client of the first buffer in `trees` (the data decides where a
/// functional `init`/`apply` runs).
fn client_of(what: &str, trees: &[&Tree<&Buffer>]) -> Result<Client> {
    trees
        .iter()
        .find_map(|t| t.leaves().first().map(|b| b.client().clone()))
        .ok_or_else(|| Error::Empty {
            what: what.to_string(),
            reason: "no input or variable buffers to take the client from",
        })
}

/// Options of [`init`]: Flax's `module.init(rngs, x, method=..., train=...)`
/// keyword arguments.
#[derive(Clone)]
pub struct InitOptions {
    /// The method to run (default: the call).
    pub method: Method,
    /// The mode passed to methods that take `training` (default: none).
    pub training: Option<Training>,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            method: Method::Call,
            training: None,
        }
    }
}

impl InitOptions {
    /// The defaults: the call, no `training`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `method` instead of the call.
    pub fn method(mut self, method: Method) -> Self {
        self.method = method;
        self
    }

    /// Passes `training` to a method that takes it.
    pub fn training(mut self, training: impl Into<Training>) -> Self {
        self.training = Some(training.into());
        self
    }
}

/// Options of [`apply`]: Flax's `module.apply(v, x, rngs=..., method=...,
/// mutable=..., train=...)` keyword arguments.
///
/// ```
/// use xlayer::flax::{ApplyOptions, Mutable, Rngs};
/// use xlayer::layers::Training;
/// let o = ApplyOptions::new()
///     .rngs(Rngs::new().with_seed("dropout", 1))
///     .mutable(Mutable::all_but_params())
///     .training(Training::Yes);
/// assert_eq!(o.training, Some(Training::Yes));
/// ```
#[derive(Clone)]
pub struct ApplyOptions {
    /// The method to run (default: the call).
    pub method: Method,
    /// Named rng streams (default: none).
    pub rngs: Rngs,
    /// Which collections may change (default: nothing).
    pub mutable: Mutable,
    /// The mode passed to methods that take `training` (default: none).
    pub training: Option<Training>,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            method: Method::Call,
            rngs: Rngs::new(),
            mutable: Mutable::Nothing,
            training: None,
        }
    }
}

impl ApplyOptions {
    /// The defaults: the call, no rngs, nothing mutable, no `training`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `method` instead of the call.
    pub fn method(mut self, method: Method) -> Self {
        self.method = method;
        self
    }

    /// The rng streams (`rngs={"dropout": key}`).
    pub fn rngs(mut self, rngs: Rngs) -> Self {
        self.rngs = rngs;
        self
    }

    /// The collections the call may change (`mutable=[...]`).
    pub fn mutable(mut self, mutable: Mutable) -> Self {
        self.mutable = mutable;
        self
    }

    /// Passes `training` to a method that takes it.
    pub fn training(mut self, training: impl Into<Training>) -> Self {
        self.training = Some(training.into());
        self
    }
}

/// `module.init(rngs, inputs)` compiled and run on the inputs' client: the
/// variables `{collection: {...}}` as device buffers.
///
/// Errors: no input buffers; those of the module and its compile.
///
/// ```
/// use xlayer::builder::Tree;
/// use xlayer::flax::{init, Dense, InitOptions, Rngs};
/// use xlayer::Client;
/// let client = Client::cpu()?;
/// let x = client.buffer_from_host(&[1f32, 2.0, 3.0], &[1, 3])?;
/// let vars = init(&Dense::new(4), &Rngs::seed(0), &Tree::leaf(&x), &InitOptions::new())?;
/// assert_eq!(vars.paths(), vec!["params/bias", "params/kernel"]);
/// # Ok::<(), xlayer::Error>(())
/// ```
pub fn init(
    module: &dyn Module,
    rngs: &Rngs,
    inputs: &Tree<&Buffer>,
    options: &InitOptions,
) -> Result<Tree<Buffer>> {
    let client = client_of("flax::init", &[inputs])?;
    let training = options.training.map(Training::is_yes);
    run_traced(
        &client,
        &format!("{}_init", module.type_name()),
        rngs,
        &Tree::Empty,
        inputs,
        |b, r, _, ins| Ok(init_traced(b, module, &options.method, r, &ins, training)?.1),
    )
}

/// `module.apply(variables, inputs, rngs=..., mutable=...)` compiled and run
/// on the client of `variables` and `inputs`: the outputs and the mutable
/// collections.
///
/// Errors: no buffers at all; variables that are not a map of collections;
/// those of the module and its compile.
pub fn apply(
    module: &dyn Module,
    variables: &Tree<&Buffer>,
    inputs: &Tree<&Buffer>,
    options: &ApplyOptions,
) -> Result<(Tree<Buffer>, Tree<Buffer>)> {
    flatten_vars(variables)?;
    let client = client_of("flax::apply", &[inputs, variables])?;
    let training = options.training.map(Training::is_yes);
    let out = run_traced(
        &client,
        &format!("{}_apply", module.type_name()),
        &options.rngs,
        variables,
        inputs,
        |b, r, vars, ins| {
            let (y, m) = apply_traced(
                b,
                module,
                &options.method,
                &vars,
                r,
                options.mutable.clone(),
                &ins,
                training,
            )?;
            Ok(Tree::tuple([y, m]))
        },
    )?;
    match out {
        Tree::Tuple(mut v) if v.len() == 2 => {
            let m = v.pop().unwrap_or_default();
            let y = v.pop().unwrap_or_default();
            Ok((y, m))
        }
        other => Err(Error::NotATuple {
            what: "flax apply outputs".into(),
            paths: other.paths(),
        }),
    }
}

/// Flax's `merge_param`: a flag given either as a module attribute or as a
/// call argument, exactly one of the two (`deterministic`,
/// `use_running_average`).
pub(crate) fn merge_param(
    scope: &Scope,
    name: &str,
    attribute: Option<bool>,
    argument: Option<bool>,
) -> Result<bool> {
    let message = match (attribute, argument) {
        (Some(v), None) | (None, Some(v)) => return Ok(v),
        (Some(_), Some(_)) => "was set both as an attribute and as an argument",
        (None, None) => "must be set as an attribute or an argument",
    };
    Err(Error::Flax {
        path: scope.path_text(),
        message: format!("{name} {message}"),
    })
}

/// Flax's `promote_dtype`: the arguments cast to `dtype` when given, else
/// to their promoted dtype (made floating when `inexact`).
pub fn promote_dtype(args: &[&Value], dtype: Option<DType>, inexact: bool) -> Result<Vec<Value>> {
    let d = match dtype {
        Some(d) => d,
        None => {
            let mut d = args
                .first()
                .map(|v| v.dtype())
                .ok_or_else(|| Error::Empty {
                    what: "promote_dtype".into(),
                    reason: "it needs at least one argument",
                })?;
            for a in &args[1..] {
                d = crate::builder::promote_types(d, a.dtype());
            }
            if inexact && !d.is_float() {
                d = crate::builder::promote_types(DType::F32, d);
            }
            d
        }
    };
    args.iter()
        .map(|a| {
            if a.dtype() == d {
                Ok((*a).clone())
            } else {
                a.convert(d)
            }
        })
        .collect()
}
