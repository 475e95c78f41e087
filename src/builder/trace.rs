//! From a closure to a [`Computation`] to an executable: `trace`, `jit`.

use crate::dtype::ArraySpec;
use crate::error::{Error, Result};
use crate::pjrt::client::Client;
use crate::pjrt::executable::Executable;
use crate::program::{Program, Signature};

use super::core::{op_err, Builder, Value};
use super::emit::emit_module;
use super::graph::{Graph, ValueId};
use super::tree::Tree;

/// A traced program: the graph, its parameters and outputs (as trees).
#[derive(Debug, Clone)]
pub struct Computation {
    name: String,
    graph: Graph,
    outputs: Vec<ValueId>,
    donors: Vec<bool>,
    input_tree: Tree<()>,
    output_tree: Tree<()>,
}

impl Builder {
    /// Builds a computation returning `outputs` (a flat list) from the
    /// parameters added so far.
    ///
    /// Errors: [`Error::Op`] if an output belongs to another builder or to a region body.
    pub fn build(&self, outputs: &[Value]) -> Result<Computation> {
        for v in outputs {
            self.check_value("build", v)?;
        }
        let graph = self.graph();
        let n_params = graph.params.len();
        Ok(Computation {
            name: "xlayer".to_string(),
            outputs: outputs.iter().map(|v| v.id).collect(),
            donors: vec![false; n_params],
            input_tree: Tree::List((0..n_params).map(|_| Tree::Leaf(())).collect()),
            output_tree: Tree::List(outputs.iter().map(|_| Tree::Leaf(())).collect()),
            graph,
        })
    }
}

/// Traces `f` on symbolic inputs shaped like `inputs` and returns the
/// computation. Input leaves become parameters in flatten order, named by
/// their tree paths.
///
/// ```
/// use xlayer::builder::{trace, Tree};
/// use xlayer::ArraySpec;
/// let inputs = Tree::map([("x", Tree::leaf(ArraySpec::of::<f32>([4])))]);
/// let c = trace("double", &inputs, |_b, t| {
///     let x = t.get("x")?;
///     Ok(Tree::leaf((x + x)?))
/// })?;
/// assert_eq!(c.signature().to_string(), "(f32[4]) -> (f32[4])");
/// # Ok::<(), xlayer::Error>(())
/// ```
pub fn trace(
    name: &str,
    inputs: &Tree<ArraySpec>,
    f: impl FnOnce(&Builder, Tree<Value>) -> Result<Tree<Value>>,
) -> Result<Computation> {
    let b = Builder::new();
    let mut params = Vec::new();
    for (path, spec) in inputs.entries() {
        params.push(b.parameter(spec.clone(), &path)?);
    }
    let tree = inputs.structure().unflatten(params)?;
    let out = f(&b, tree)?;
    let leaves: Vec<Value> = out.leaves().into_iter().cloned().collect();
    let mut c = b.build(&leaves)?;
    c.name = sanitize(name);
    c.input_tree = inputs.structure();
    c.output_tree = out.structure();
    Ok(c)
}

/// Traces `f` over flat inputs of `specs` and compiles it on `client`: the
/// one-call path from a closure to an [`Executable`]. Compiles through the
/// persistent compilation cache (see [`Computation::compile`]).
///
/// ```
/// use xlayer::{builder::jit, ArraySpec, Client};
/// let client = Client::cpu()?;
/// let exe = jit(&client, &[ArraySpec::of::<f32>([3])], |_b, x| Ok(vec![x[0].exp()?]))?;
/// let x = client.buffer_from_host(&[0f32, 1.0, 2.0], &[3])?;
/// let y = exe.execute(&[&x])?[0].to_vec::<f32>()?;
/// assert!((y[1] - std::f32::consts::E).abs() < 1e-6);
/// # Ok::<(), xlayer::Error>(())
/// ```
pub fn jit(
    client: &Client,
    specs: &[ArraySpec],
    f: impl FnOnce(&Builder, &[Value]) -> Result<Vec<Value>>,
) -> Result<Executable> {
    let inputs = Tree::List(specs.iter().cloned().map(Tree::Leaf).collect());
    let c = trace("jit", &inputs, |b, t| {
        let xs: Vec<Value> = t.into_leaves();
        Ok(Tree::List(f(b, &xs)?.into_iter().map(Tree::Leaf).collect()))
    })?;
    c.compile(client)
}

fn sanitize(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
        format!("m_{s}")
    } else {
        s
    }
}

impl Computation {
    /// The module name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Renames the module (non-identifier characters become `_`).
    pub fn with_name(mut self, name: &str) -> Self {
        self.name = sanitize(name);
        self
    }

    /// Marks parameters whose buffers the executable may reuse for outputs.
    ///
    /// Errors: [`Error::Op`] when the list length differs from the parameter count.
    pub fn with_donors(mut self, donors: &[bool]) -> Result<Self> {
        if donors.len() != self.graph.params.len() {
            return Err(op_err(
                "donate",
                format!(
                    "{} flags for {} parameters",
                    donors.len(),
                    self.graph.params.len()
                ),
            ));
        }
        self.donors = donors.to_vec();
        Ok(self)
    }

    /// Sets the shardings of `@main`'s parameters and results.
    pub(super) fn set_shardings(&mut self, io: super::shardings::IoShardings) {
        self.graph.shardings = Some(io);
    }

    /// The recorded graph.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The structure of the inputs (parameters in flatten order).
    pub fn input_tree(&self) -> &Tree<()> {
        &self.input_tree
    }

    /// The structure of the outputs.
    pub fn output_tree(&self) -> &Tree<()> {
        &self.output_tree
    }

    /// Parameter and result types.
    pub fn signature(&self) -> Signature {
        Signature {
            inputs: self
                .graph
                .params
                .iter()
                .map(|&p| self.graph.nodes[p].outputs[0].clone())
                .collect(),
            outputs: self
                .outputs
                .iter()
                .map(|&v| self.graph.spec(v).clone())
                .collect(),
            donors: self.donors.clone(),
        }
    }

    /// The StableHLO module text.
    pub fn to_stablehlo(&self) -> String {
        emit_module(&self.graph, &self.name, &self.outputs, &self.donors)
    }

    /// The program to hand to a compiler.
    pub fn program(&self) -> Result<Program> {
        let p = Program::mlir_text(self.to_stablehlo())?;
        if *p.signature() != self.signature() {
            return Err(Error::Signature(format!(
                "emitted {} but traced {}",
                p.signature(),
                self.signature()
            )));
        }
        Ok(p)
    }

    /// Emits and compiles on `client` with the default [`crate::CompileOptions`]
    /// (NaN-propagating min/max, as JAX), through the environment's
    /// persistent compilation cache ([`crate::cache::CompileCache::from_env`];
    /// none when it names no folder): a program compiled before by the same
    /// plugin build, in this process or an earlier one, is loaded from disk.
    /// [`jit`], layer weight initialisation, optimizer-state init and
    /// `flax::init`/`apply` compile through here.
    ///
    /// Errors: the compiler's; a cache folder that is not private to this
    /// user (see [`crate::cache::CompileCache::compile`]).
    pub fn compile(&self, client: &Client) -> Result<Executable> {
        let cache = crate::cache::CompileCache::from_env()
            .unwrap_or_else(|_| crate::cache::CompileCache::disabled());
        self.compile_cached(client, &cache)
    }

    /// Emits and compiles on `client` through a persistent compilation
    /// cache: loads the executable from disk when this exact program was
    /// compiled before by the same plugin build.
    pub fn compile_cached(
        &self,
        client: &Client,
        cache: &crate::cache::CompileCache,
    ) -> Result<Executable> {
        cache.compile(client, &self.program()?, &crate::CompileOptions::new())
    }
}
