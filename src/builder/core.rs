//! [`Builder`] and [`Value`]: recording ops into a graph while checking
//! every shape and dtype as it is built.

use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;

use crate::dtype::{ArraySpec, DType, NativeType};
use crate::error::{Error, Result};

use super::collectives::MeshAxes;
use super::graph::{Graph, Node, Region, RegionId, ValueId};
use super::op::Op;

pub(crate) struct State {
    pub(crate) graph: Graph,
    /// The region ops are currently recorded into (`None`: the entry function).
    pub(crate) scope: Option<RegionId>,
    /// Whether ops may call the CPU kernels registered by
    /// `crate::pjrt::ffi` ([`Builder::set_cpu_kernels`]).
    pub(crate) cpu_kernels: bool,
}

/// Records ops into a graph. Cheap to clone (shared); single-threaded.
///
/// Usually obtained through [`crate::builder::trace`] or
/// [`crate::builder::jit`], which create the parameters and build the
/// [`crate::builder::Computation`] from the closure's outputs.
///
/// ```
/// use xlayer::builder::Builder;
/// use xlayer::ArraySpec;
/// let b = Builder::new();
/// let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
/// let y = x.exp()?.sum(&[1], false)?;
/// assert_eq!(y.dims(), &[2]);
/// let text = b.build(&[y])?.to_stablehlo();
/// assert!(text.contains("stablehlo.exponential"));
/// # Ok::<(), xlayer::Error>(())
/// ```
#[derive(Clone)]
pub struct Builder {
    pub(crate) state: Rc<RefCell<State>>,
}

impl Default for Builder {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.state.borrow();
        write!(
            f,
            "Builder({} nodes, {} params)",
            s.graph.nodes.len(),
            s.graph.params.len()
        )
    }
}

/// A symbolic array: one output of a recorded op, with its dtype and shape.
///
/// Ops are methods (`x.exp()`, `x.matmul(&w)`) and operators (`&x + &y`),
/// all returning [`Result`]: misuse is an [`Error::Op`] (or a typed
/// dimension or size error: [`Error::DimensionOutOfRange`],
/// [`Error::DuplicateDimension`], [`Error::ShapeTooLarge`],
/// [`Error::ShapeOverflow`], [`Error::AttributeTooLarge`]) naming the op
/// and the shapes, at trace time.
#[derive(Clone)]
pub struct Value {
    pub(crate) builder: Builder,
    pub(crate) id: ValueId,
    pub(crate) spec: ArraySpec,
    pub(crate) scope: Option<RegionId>,
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Value(%{} {})", self.id.node, self.spec)
    }
}

impl Value {
    /// The dtype and dimensions.
    pub fn spec(&self) -> &ArraySpec {
        &self.spec
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.spec.dtype
    }

    /// The dimensions.
    pub fn dims(&self) -> &[usize] {
        &self.spec.dims
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.spec.dims.len()
    }

    /// Number of elements.
    pub fn element_count(&self) -> usize {
        self.spec.element_count()
    }

    /// The builder this value belongs to.
    pub fn builder(&self) -> &Builder {
        &self.builder
    }

    /// Its place in the graph.
    pub fn id(&self) -> ValueId {
        self.id
    }
}

pub(crate) fn op_err(op: &'static str, message: impl Into<String>) -> Error {
    Error::Op {
        op,
        message: message.into(),
    }
}

/// Checks dimension numbers from the caller: each below `rank`, none twice.
///
/// Errors: [`Error::DimensionOutOfRange`] or [`Error::DuplicateDimension`],
/// naming `op`, the list (`what`), what it indexes (`target`) and `operand`.
pub(crate) fn check_dim_list(
    op: &'static str,
    what: &'static str,
    target: &'static str,
    dims: &[usize],
    rank: usize,
    operand: &ArraySpec,
) -> Result<()> {
    let mut seen = vec![false; rank];
    for &dim in dims {
        if dim >= rank {
            return Err(Error::DimensionOutOfRange {
                op,
                what,
                dim,
                target,
                rank,
                operand: operand.clone(),
            });
        }
        if seen[dim] {
            return Err(Error::DuplicateDimension {
                op,
                what,
                dim,
                dims: dims.to_vec(),
                operand: operand.clone(),
            });
        }
        seen[dim] = true;
    }
    Ok(())
}

/// Checks integer attributes that StableHLO stores as i64 (strides,
/// dilations, window sizes, group counts, interior padding).
///
/// Errors: [`Error::AttributeTooLarge`] for the first value past `i64::MAX`.
pub(crate) fn check_i64_attr(
    op: &'static str,
    what: &'static str,
    values: &[usize],
    operand: &ArraySpec,
) -> Result<()> {
    match values.iter().find(|&&v| i64::try_from(v).is_err()) {
        Some(&value) => Err(Error::AttributeTooLarge {
            op,
            what,
            value,
            operand: operand.clone(),
        }),
        None => Ok(()),
    }
}

/// Output length of a windowed op (convolution, reduce_window) along one
/// dimension: the input of `size` dilated by `base_dilation`, padded by
/// `padding`, swept by a window of `window` elements dilated by
/// `window_dilation` with `stride`. `None` when the arithmetic overflows
/// (dilations and strides are positive here).
pub(crate) fn window_output_size(
    size: usize,
    base_dilation: usize,
    padding: (i64, i64),
    window: usize,
    window_dilation: usize,
    stride: usize,
) -> Option<usize> {
    let dilate = |n: usize, d: usize| -> Option<i128> {
        if n == 0 {
            Some(0)
        } else {
            (n as i128 - 1).checked_mul(d as i128)?.checked_add(1)
        }
    };
    let padded = dilate(size, base_dilation)?
        .checked_add(i128::from(padding.0))?
        .checked_add(i128::from(padding.1))?;
    let w = dilate(window, window_dilation)?;
    if padded < w {
        return Some(0);
    }
    usize::try_from((padded - w) / stride as i128 + 1).ok()
}

impl Builder {
    /// An empty graph.
    pub fn new() -> Builder {
        Builder {
            state: Rc::new(RefCell::new(State {
                graph: Graph::default(),
                scope: None,
                cpu_kernels: false,
            })),
        }
    }

    /// Adds a parameter of the entry function. `name` is used in messages
    /// (e.g. its tree path `params/Dense_0/kernel`).
    ///
    /// Errors: [`Error::Op`] when called inside a region body.
    pub fn parameter(&self, spec: ArraySpec, name: &str) -> Result<Value> {
        if self.state.borrow().scope.is_some() {
            return Err(op_err(
                "parameter",
                format!("`{name}`: parameters can only be added to the entry function"),
            ));
        }
        let index = self.state.borrow().graph.params.len();
        let v = self.push(
            Op::Parameter {
                index,
                name: name.to_string(),
            },
            &[],
            vec![spec],
        )?;
        let node = v[0].id.node;
        self.state.borrow_mut().graph.params.push(node);
        Ok(v.into_iter().next().expect("one output"))
    }

    /// A constant array from host data.
    ///
    /// Errors: [`Error::HostDataSize`] when `data.len()` is not the product of `dims`.
    pub fn constant<T: NativeType>(&self, data: &[T], dims: &[usize]) -> Result<Value> {
        let spec = ArraySpec::new(T::DTYPE, dims);
        spec.check_size(|| "constant".into())?;
        if data.len() != spec.element_count() {
            return Err(Error::HostDataSize {
                expected: spec.element_count(),
                actual: data.len(),
                spec,
            });
        }
        let bytes = native_bytes(data);
        self.constant_bytes(bytes, spec)
    }

    /// A scalar constant.
    pub fn scalar<T: NativeType>(&self, value: T) -> Result<Value> {
        self.constant(&[value], &[])
    }

    /// An array of `dims` filled with `value` converted to `dtype`
    /// (a splat constant: no data is materialised in the program).
    pub fn full(&self, value: f64, dtype: DType, dims: &[usize]) -> Result<Value> {
        self.constant_bytes(scalar_bytes(value, dtype), ArraySpec::new(dtype, dims))
    }

    /// Zeros of a dtype and shape.
    pub fn zeros(&self, dtype: DType, dims: &[usize]) -> Result<Value> {
        self.full(0.0, dtype, dims)
    }

    /// Ones of a dtype and shape.
    pub fn ones(&self, dtype: DType, dims: &[usize]) -> Result<Value> {
        self.full(1.0, dtype, dims)
    }

    pub(crate) fn constant_bytes(&self, bytes: Vec<u8>, spec: ArraySpec) -> Result<Value> {
        let n = bytes.len() / spec.dtype.size_in_bytes().max(1);
        if n != 1 && n != spec.element_count() {
            return Err(op_err(
                "constant",
                format!("{} bytes do not fill {spec}", bytes.len()),
            ));
        }
        Ok(self
            .push(Op::Constant { bytes }, &[], vec![spec])?
            .remove(0))
    }

    /// Indices `0..dims[dim]` along `dim`, broadcast over the other dimensions.
    ///
    /// ```
    /// # use xlayer::{builder::Builder, DType};
    /// let b = Builder::new();
    /// let i = b.iota(DType::I32, &[2, 3], 1)?;
    /// assert_eq!(i.dims(), &[2, 3]);
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn iota(&self, dtype: DType, dims: &[usize], dim: usize) -> Result<Value> {
        if dim >= dims.len() {
            return Err(op_err(
                "iota",
                format!("dimension {dim} out of range for shape {dims:?}"),
            ));
        }
        if dtype == DType::Bool {
            return Err(op_err("iota", "dtype bool cannot count"));
        }
        Ok(self
            .push(Op::Iota { dim }, &[], vec![ArraySpec::new(dtype, dims)])?
            .remove(0))
    }

    /// Checks that `v` can be used here: same builder, visible scope.
    pub(crate) fn check_value(&self, op: &'static str, v: &Value) -> Result<()> {
        if !Rc::ptr_eq(&self.state, &v.builder.state) {
            return Err(op_err(
                op,
                format!("operand {v:?} belongs to another builder"),
            ));
        }
        let s = self.state.borrow();
        if !s.graph.is_visible(v.scope, s.scope) {
            return Err(op_err(
                op,
                format!(
                    "operand {v:?} was defined inside a region body and cannot be used outside it"
                ),
            ));
        }
        Ok(())
    }

    /// Records a node after checking its operands; returns its outputs.
    pub(crate) fn push(
        &self,
        op: Op,
        operands: &[&Value],
        outputs: Vec<ArraySpec>,
    ) -> Result<Vec<Value>> {
        let name = op.name();
        for v in operands {
            self.check_value(name, v)?;
        }
        for (i, spec) in outputs.iter().enumerate() {
            spec.check_size(|| {
                if let Op::Parameter { name, .. } = &op {
                    format!("parameter `{name}`")
                } else if outputs.len() == 1 {
                    format!("output of {name}")
                } else {
                    format!("output {i} of {name}")
                }
            })?;
        }
        let mut s = self.state.borrow_mut();
        let scope = s.scope;
        let node = s.graph.nodes.len();
        s.graph.nodes.push(Node {
            op,
            operands: operands.iter().map(|v| v.id).collect(),
            outputs: outputs.clone(),
            scope,
        });
        match scope {
            None => s.graph.main_nodes.push(node),
            Some(r) => s.graph.regions[r.0].nodes.push(node),
        }
        drop(s);
        Ok(outputs
            .into_iter()
            .enumerate()
            .map(|(output, spec)| Value {
                builder: self.clone(),
                id: ValueId { node, output },
                spec,
                scope,
            })
            .collect())
    }

    /// Records a region: block arguments of `arg_specs`, a body built by `f`.
    /// The region's results must have `expect` types when given.
    pub(crate) fn region(
        &self,
        op: &'static str,
        arg_specs: &[ArraySpec],
        f: impl FnOnce(&[Value]) -> Result<Vec<Value>>,
    ) -> Result<(RegionId, Vec<ArraySpec>)> {
        self.region_in(op, arg_specs, None, f)
    }

    /// Records the body of a manual region over `mesh` (see
    /// [`crate::builder::shard_map`]): isolated from the values outside it.
    pub(crate) fn manual_region(
        &self,
        mesh: MeshAxes,
        arg_specs: &[ArraySpec],
        f: impl FnOnce(&[Value]) -> Result<Vec<Value>>,
    ) -> Result<(RegionId, Vec<ArraySpec>)> {
        self.region_in("shard_map", arg_specs, Some(mesh), f)
    }

    fn region_in(
        &self,
        op: &'static str,
        arg_specs: &[ArraySpec],
        manual: Option<MeshAxes>,
        f: impl FnOnce(&[Value]) -> Result<Vec<Value>>,
    ) -> Result<(RegionId, Vec<ArraySpec>)> {
        let (rid, parent) = {
            let mut s = self.state.borrow_mut();
            let rid = RegionId(s.graph.regions.len());
            let parent = s.scope;
            let args_node = s.graph.nodes.len();
            s.graph.nodes.push(Node {
                op: Op::RegionArgs,
                operands: vec![],
                outputs: arg_specs.to_vec(),
                scope: Some(rid),
            });
            s.graph.regions.push(Region {
                parent,
                args_node,
                nodes: vec![args_node],
                results: vec![],
                manual,
            });
            s.scope = Some(rid);
            (rid, parent)
        };
        let args: Vec<Value> = {
            let s = self.state.borrow();
            let args_node = s.graph.regions[rid.0].args_node;
            arg_specs
                .iter()
                .enumerate()
                .map(|(output, spec)| Value {
                    builder: self.clone(),
                    id: ValueId {
                        node: args_node,
                        output,
                    },
                    spec: spec.clone(),
                    scope: Some(rid),
                })
                .collect()
        };
        let result = f(&args);
        let outcome = result.and_then(|results| {
            for r in &results {
                self.check_value(op, r)?;
            }
            Ok(results)
        });
        let mut s = self.state.borrow_mut();
        s.scope = parent;
        let results = outcome?;
        s.graph.regions[rid.0].results = results.iter().map(|v| v.id).collect();
        Ok((rid, results.iter().map(|v| v.spec.clone()).collect()))
    }

    /// A snapshot of the graph recorded so far.
    pub fn graph(&self) -> Graph {
        self.state.borrow().graph.clone()
    }
}

/// The little-endian bytes of a slice of native values.
pub(crate) fn native_bytes<T: NativeType>(data: &[T]) -> Vec<u8> {
    let mut out = Vec::with_capacity(std::mem::size_of_val(data));
    for x in data {
        x.extend_le_bytes(&mut out);
    }
    out
}

/// The bytes of one scalar `value` converted to `dtype` (as `jnp.asarray(value, dtype)`).
pub(crate) fn scalar_bytes(value: f64, dtype: DType) -> Vec<u8> {
    match dtype {
        DType::Bool => vec![(value != 0.0) as u8],
        DType::I8 => (value as i8).to_le_bytes().to_vec(),
        DType::I16 => (value as i16).to_le_bytes().to_vec(),
        DType::I32 => (value as i32).to_le_bytes().to_vec(),
        DType::I64 => (value as i64).to_le_bytes().to_vec(),
        DType::U8 => (value as u8).to_le_bytes().to_vec(),
        DType::U16 => (value as u16).to_le_bytes().to_vec(),
        DType::U32 => (value as u32).to_le_bytes().to_vec(),
        DType::U64 => (value as u64).to_le_bytes().to_vec(),
        DType::F16 => half::f16::from_f64(value).to_le_bytes().to_vec(),
        DType::BF16 => half::bf16::from_f64(value).to_le_bytes().to_vec(),
        DType::F32 => (value as f32).to_le_bytes().to_vec(),
        DType::F64 => value.to_le_bytes().to_vec(),
    }
}
