//! Reductions: generic `reduce` with a body closure, sum/prod/max/min/all/any,
//! argmax/argmin, `reduce_window` pooling, cumulative sums and maxima.

use crate::dtype::{ArraySpec, DType};
use crate::error::{Error, Result};

use super::axis::{axes_of, axis_of, Axes, Axis};
use super::core::{
    check_dim_list, check_i64_attr, op_err, scalar_bytes, window_output_size, Builder, Value,
};
use super::op::{BinaryOp, Op, WindowAttrs};

/// The identity of a reduction for a dtype: the value `x op identity == x`.
pub(crate) fn identity_value(op: BinaryOp, dtype: DType) -> Vec<u8> {
    let (lowest, highest) = match dtype {
        DType::Bool => (0.0, 1.0),
        d if d.is_float() => (f64::NEG_INFINITY, f64::INFINITY),
        DType::I8 => (i8::MIN as f64, i8::MAX as f64),
        DType::I16 => (i16::MIN as f64, i16::MAX as f64),
        DType::I32 => (i32::MIN as f64, i32::MAX as f64),
        DType::I64 => return int64_identity(op),
        DType::U8 => (0.0, u8::MAX as f64),
        DType::U16 => (0.0, u16::MAX as f64),
        DType::U32 => (0.0, u32::MAX as f64),
        DType::U64 => return uint64_identity(op),
        _ => (0.0, 0.0),
    };
    let v = match op {
        BinaryOp::Add | BinaryOp::Or | BinaryOp::Xor => 0.0,
        BinaryOp::Mul | BinaryOp::And if dtype == DType::Bool => 1.0,
        BinaryOp::And => return vec![0xff; dtype.size_in_bytes()],
        BinaryOp::Mul => 1.0,
        BinaryOp::Max => lowest,
        BinaryOp::Min => highest,
        _ => 0.0,
    };
    scalar_bytes(v, dtype)
}

fn int64_identity(op: BinaryOp) -> Vec<u8> {
    match op {
        BinaryOp::Max => i64::MIN.to_le_bytes().to_vec(),
        BinaryOp::Min => i64::MAX.to_le_bytes().to_vec(),
        BinaryOp::Mul => 1i64.to_le_bytes().to_vec(),
        BinaryOp::And => (-1i64).to_le_bytes().to_vec(),
        _ => 0i64.to_le_bytes().to_vec(),
    }
}

fn uint64_identity(op: BinaryOp) -> Vec<u8> {
    match op {
        BinaryOp::Min | BinaryOp::And => u64::MAX.to_le_bytes().to_vec(),
        BinaryOp::Mul => 1u64.to_le_bytes().to_vec(),
        _ => 0u64.to_le_bytes().to_vec(),
    }
}

/// Padding of a window or convolution: `VALID`, `SAME` (as XLA/JAX
/// compute it: extra padding goes high), or explicit `(low, high)` pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Padding {
    /// No padding.
    Valid,
    /// Output size `ceil(input / stride)`.
    Same,
    /// Explicit `(low, high)` per dimension.
    Explicit(Vec<(i64, i64)>),
}

impl Padding {
    /// Resolves to explicit pairs for `input` sizes, window sizes and strides
    /// (window sizes already dilated).
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// assert_eq!(Padding::Same.resolve(&[5], &[3], &[2]), vec![(1, 1)]);
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn resolve(&self, input: &[usize], window: &[usize], strides: &[usize]) -> Vec<(i64, i64)> {
        match self {
            Padding::Valid => vec![(0, 0); input.len()],
            Padding::Explicit(p) => p.clone(),
            Padding::Same => input
                .iter()
                .zip(window)
                .zip(strides)
                .map(|((&i, &w), &s)| {
                    let out = i.div_ceil(s.max(1));
                    // Saturating: a size past i64 is refused by the op using it.
                    let total = (out.saturating_sub(1))
                        .saturating_mul(s)
                        .saturating_add(w)
                        .saturating_sub(i)
                        .min(i64::MAX as usize) as i64;
                    (total / 2, total - total / 2)
                })
                .collect(),
        }
    }
}

fn normalize_axes(op: &'static str, v: &Value, axes: &[usize]) -> Result<Vec<usize>> {
    check_dim_list(op, "axes", "operand", axes, v.rank(), &v.spec)?;
    let mut a = axes.to_vec();
    a.sort_unstable();
    Ok(a)
}

impl Builder {
    /// Generic variadic reduction (`lax.reduce`): reduces `inputs` over
    /// `axes` starting from the scalar `inits`, combining with `body`, which
    /// receives `(acc_0.., x_0..)` scalars and returns the new accumulators.
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// let init = b.scalar(0f32)?;
    /// let s = b.reduce(&[x.clone()], &[init], &[1], |a| Ok(vec![a[0].add(&a[1])?]))?;
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn reduce(
        &self,
        inputs: &[Value],
        inits: &[Value],
        axes: impl Axes,
        body: impl FnOnce(&[Value]) -> Result<Vec<Value>>,
    ) -> Result<Vec<Value>> {
        let first = inputs
            .first()
            .ok_or_else(|| op_err("reduce", "needs at least one input"))?;
        if inits.len() != inputs.len() {
            return Err(op_err(
                "reduce",
                format!("{} inputs but {} init values", inputs.len(), inits.len()),
            ));
        }
        for (x, i) in inputs.iter().zip(inits) {
            if x.dims() != first.dims() || i.rank() != 0 || i.dtype() != x.dtype() {
                return Err(op_err("reduce", format!("input {} / init {} do not match (inputs share a shape; inits are scalars of their dtype)", x.spec, i.spec)));
            }
        }
        let axes = normalize_axes("reduce", first, &axes_of("reduce", axes, &first.spec)?)?;
        let scalars: Vec<ArraySpec> = inputs
            .iter()
            .map(|x| ArraySpec::new(x.dtype(), []))
            .collect();
        let mut arg_specs = scalars.clone();
        arg_specs.extend(scalars.iter().cloned());
        let (body, results) = self.region("reduce", &arg_specs, body)?;
        if results != scalars {
            return Err(op_err(
                "reduce",
                format!("the body must return scalars {scalars:?}, returned {results:?}"),
            ));
        }
        let dims: Vec<usize> = (0..first.rank())
            .filter(|d| !axes.contains(d))
            .map(|d| first.dims()[d])
            .collect();
        let outs = inputs
            .iter()
            .map(|x| ArraySpec::new(x.dtype(), dims.clone()))
            .collect();
        let mut operands: Vec<&Value> = inputs.iter().collect();
        operands.extend(inits.iter());
        self.push(Op::Reduce { dims: axes, body }, &operands, outs)
    }

    /// Generic windowed reduction (`lax.reduce_window`).
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// let w = WindowAttrs { dims: vec![1, 2], strides: vec![1, 1], base_dilation: vec![1, 1], window_dilation: vec![1, 1], padding: vec![(0, 0), (0, 0)] };
    /// let m = b.reduce_window(&[x.clone()], &[b.scalar(f32::NEG_INFINITY)?], &w, |a| Ok(vec![a[0].maximum(&a[1])?]))?;
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn reduce_window(
        &self,
        inputs: &[Value],
        inits: &[Value],
        window: &WindowAttrs,
        body: impl FnOnce(&[Value]) -> Result<Vec<Value>>,
    ) -> Result<Vec<Value>> {
        let first = inputs
            .first()
            .ok_or_else(|| op_err("reduce_window", "needs at least one input"))?;
        let r = first.rank();
        let w = window;
        if [
            w.dims.len(),
            w.strides.len(),
            w.base_dilation.len(),
            w.window_dilation.len(),
            w.padding.len(),
        ]
        .iter()
        .any(|&l| l != r)
        {
            return Err(op_err(
                "reduce_window",
                format!("window {w:?} does not match rank of {}", first.spec),
            ));
        }
        if inits.len() != inputs.len()
            || inputs
                .iter()
                .zip(inits)
                .any(|(x, i)| x.dims() != first.dims() || i.rank() != 0 || i.dtype() != x.dtype())
        {
            return Err(op_err(
                "reduce_window",
                "inputs must share a shape; inits must be scalars of their dtypes",
            ));
        }
        for (what, values) in [
            ("window dimensions", &w.dims),
            ("strides", &w.strides),
            ("base_dilation", &w.base_dilation),
            ("window_dilation", &w.window_dilation),
        ] {
            check_i64_attr("reduce_window", what, values, &first.spec)?;
        }
        let mut dims = Vec::with_capacity(r);
        for i in 0..r {
            if w.strides[i] == 0
                || w.base_dilation[i] == 0
                || w.window_dilation[i] == 0
                || w.dims[i] == 0
            {
                return Err(op_err(
                    "reduce_window",
                    format!("dimension {i}: window sizes, strides and dilations must be positive"),
                ));
            }
            dims.push(
                window_output_size(
                    first.dims()[i],
                    w.base_dilation[i],
                    w.padding[i],
                    w.dims[i],
                    w.window_dilation[i],
                    w.strides[i],
                )
                .ok_or_else(|| Error::ShapeOverflow {
                    op: "reduce_window",
                    operands: inputs.iter().map(|x| x.spec.clone()).collect(),
                    detail: format!("dimension {i} of window {w:?}"),
                })?,
            );
        }
        let scalars: Vec<ArraySpec> = inputs
            .iter()
            .map(|x| ArraySpec::new(x.dtype(), []))
            .collect();
        let mut arg_specs = scalars.clone();
        arg_specs.extend(scalars.iter().cloned());
        let (body, results) = self.region("reduce_window", &arg_specs, body)?;
        if results != scalars {
            return Err(op_err(
                "reduce_window",
                format!("the body must return scalars {scalars:?}"),
            ));
        }
        let outs = inputs
            .iter()
            .map(|x| ArraySpec::new(x.dtype(), dims.clone()))
            .collect();
        let mut operands: Vec<&Value> = inputs.iter().collect();
        operands.extend(inits.iter());
        self.push(
            Op::ReduceWindow {
                window: w.clone(),
                body,
            },
            &operands,
            outs,
        )
    }
}

impl Value {
    fn monoid_reduce(&self, op: BinaryOp, axes: &[usize], keepdims: bool) -> Result<Value> {
        let b = &self.builder;
        let init = b.constant_bytes(
            identity_value(op, self.dtype()),
            ArraySpec::new(self.dtype(), []),
        )?;
        let axes_n = normalize_axes(op_name(op), self, axes)?;
        let out = b
            .reduce(std::slice::from_ref(self), &[init], &axes_n, |args| {
                Ok(vec![args[0].binary(op, &args[1])?])
            })?
            .remove(0);
        if keepdims {
            let dims: Vec<usize> = (0..self.rank())
                .map(|d| {
                    if axes_n.contains(&d) {
                        1
                    } else {
                        self.dims()[d]
                    }
                })
                .collect();
            out.reshape(&dims)
        } else {
            Ok(out)
        }
    }

    /// Sum over `axes` (all axes: pass `&[0, 1, ...]`), optionally keeping them as size 1.
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// assert_eq!(x.sum(&[1], false)?.dims(), &[2]);
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn sum(&self, axes: impl Axes, keepdims: bool) -> Result<Value> {
        let axes = &axes_of("sum", axes, &self.spec)?;
        if self.dtype() == DType::Bool {
            return Err(op_err(
                "sum",
                format!("convert bool {} to a number first", self.spec),
            ));
        }
        self.monoid_reduce(BinaryOp::Add, axes, keepdims)
    }
    /// Product over `axes`.
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// assert_eq!(x.prod(&[0, 1], false)?.dims(), &[] as &[usize]);
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn prod(&self, axes: impl Axes, keepdims: bool) -> Result<Value> {
        let axes = &axes_of("prod", axes, &self.spec)?;
        if self.dtype() == DType::Bool {
            return Err(op_err(
                "prod",
                format!("convert bool {} to a number first", self.spec),
            ));
        }
        self.monoid_reduce(BinaryOp::Mul, axes, keepdims)
    }
    /// Maximum over `axes`.
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// assert_eq!(x.max(&[1], true)?.dims(), &[2, 1]);
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn max(&self, axes: impl Axes, keepdims: bool) -> Result<Value> {
        let axes = &axes_of("max", axes, &self.spec)?;
        self.monoid_reduce(BinaryOp::Max, axes, keepdims)
    }
    /// Minimum over `axes`.
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// assert_eq!(x.min(&[0], false)?.dims(), &[3]);
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn min(&self, axes: impl Axes, keepdims: bool) -> Result<Value> {
        let axes = &axes_of("min", axes, &self.spec)?;
        self.monoid_reduce(BinaryOp::Min, axes, keepdims)
    }
    /// Logical and over `axes` (bool).
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// let z = x.gt(&y)?.all(&[1], false)?;
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn all(&self, axes: impl Axes, keepdims: bool) -> Result<Value> {
        let axes = &axes_of("all", axes, &self.spec)?;
        self.bool_only("all")?
            .monoid_reduce(BinaryOp::And, axes, keepdims)
    }
    /// Logical or over `axes` (bool).
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// let z = x.gt(&y)?.any(&[0, 1], false)?;
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn any(&self, axes: impl Axes, keepdims: bool) -> Result<Value> {
        let axes = &axes_of("any", axes, &self.spec)?;
        self.bool_only("any")?
            .monoid_reduce(BinaryOp::Or, axes, keepdims)
    }
    /// Mean over `axes` (floats).
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// assert_eq!(x.mean(&[1], false)?.dims(), &[2]);
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn mean(&self, axes: impl Axes, keepdims: bool) -> Result<Value> {
        let axes = &axes_of("mean", axes, &self.spec)?;
        if !self.dtype().is_float() {
            return Err(op_err("mean", format!("needs floats, got {}", self.spec)));
        }
        let n: usize = axes.iter().map(|&a| self.dims()[a]).product();
        self.sum(axes, keepdims)? / n as f64
    }

    fn bool_only(&self, op: &'static str) -> Result<&Value> {
        if self.dtype() != DType::Bool {
            return Err(op_err(op, format!("needs bool, got {}", self.spec)));
        }
        Ok(self)
    }

    fn arg_reduce(
        &self,
        op: &'static str,
        axis: usize,
        index_dtype: DType,
        greater: bool,
    ) -> Result<Value> {
        if !index_dtype.is_int() {
            return Err(op_err(
                op,
                format!("index dtype must be an integer type, got {index_dtype}"),
            ));
        }
        let b = &self.builder;
        let idx = b.iota(index_dtype, self.dims(), axis)?;
        let init_v = b.constant_bytes(
            identity_value(
                if greater {
                    BinaryOp::Max
                } else {
                    BinaryOp::Min
                },
                self.dtype(),
            ),
            ArraySpec::new(self.dtype(), []),
        )?;
        let init_i = b.constant_bytes(
            scalar_bytes(0.0, index_dtype),
            ArraySpec::new(index_dtype, []),
        )?;
        let is_float = self.dtype().is_float();
        let outs = b.reduce(&[self.clone(), idx], &[init_v, init_i], &[axis], |a| {
            let (acc_v, acc_i, x_v, x_i) = (&a[0], &a[1], &a[2], &a[3]);
            // Take x if it is strictly better or the first NaN (NaN wins, as
            // in JAX); on ties (equal, or both NaN) take the lower index, so
            // the result is the FIRST NaN whatever order XLA combines in.
            let better = if greater {
                x_v.gt(acc_v)?
            } else {
                x_v.lt(acc_v)?
            };
            let lower = x_i.lt(acc_i)?;
            let (pick_v, tie) = if is_float {
                let (x_nan, acc_nan) = (x_v.ne(x_v)?, acc_v.ne(acc_v)?);
                let new_nan = x_nan.and(&acc_nan.not()?)?;
                let both_nan = x_nan.and(&acc_nan)?;
                (better.or(&new_nan)?, x_v.eq(acc_v)?.or(&both_nan)?)
            } else {
                (better, x_v.eq(acc_v)?)
            };
            let pick_i = pick_v.or(&tie.and(&lower)?)?;
            Ok(vec![pick_v.select(x_v, acc_v)?, pick_i.select(x_i, acc_i)?])
        })?;
        Ok(outs.into_iter().nth(1).expect("two outputs"))
    }

    /// Index of the maximum along `axis` (first on ties; NaN counts as maximal).
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// assert_eq!(x.argmax(1, DType::I32)?.dims(), &[2]);
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn argmax(&self, axis: impl Axis, index_dtype: DType) -> Result<Value> {
        let axis = axis_of("argmax", axis, &self.spec, 0)?;
        self.arg_reduce("argmax", axis, index_dtype, true)
    }

    /// Index of the minimum along `axis` (first on ties; NaN counts as minimal).
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// assert_eq!(x.argmin(0, DType::I32)?.dims(), &[3]);
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn argmin(&self, axis: impl Axis, index_dtype: DType) -> Result<Value> {
        let axis = axis_of("argmin", axis, &self.spec, 0)?;
        self.arg_reduce("argmin", axis, index_dtype, false)
    }

    pub(super) fn pool(
        &self,
        op: &'static str,
        reducer: BinaryOp,
        window: &[usize],
        strides: &[usize],
        padding: &Padding,
    ) -> Result<Value> {
        if window.len() != self.rank() || strides.len() != self.rank() {
            return Err(op_err(
                op,
                format!(
                    "window {window:?} and strides {strides:?} need one entry per dimension of {}",
                    self.spec
                ),
            ));
        }
        let attrs = WindowAttrs {
            dims: window.to_vec(),
            strides: strides.to_vec(),
            base_dilation: vec![1; self.rank()],
            window_dilation: vec![1; self.rank()],
            padding: padding.resolve(self.dims(), window, strides),
        };
        let b = &self.builder;
        let init = b.constant_bytes(
            identity_value(reducer, self.dtype()),
            ArraySpec::new(self.dtype(), []),
        )?;
        Ok(
            b.reduce_window(std::slice::from_ref(self), &[init], &attrs, |a| {
                Ok(vec![a[0].binary(reducer, &a[1])?])
            })?
            .remove(0),
        )
    }

    fn cumulative(
        &self,
        op: &'static str,
        reducer: BinaryOp,
        axis: usize,
        reverse: bool,
    ) -> Result<Value> {
        let n = self.dims()[axis];
        let mut window = vec![1; self.rank()];
        window[axis] = n.max(1);
        let mut padding = vec![(0, 0); self.rank()];
        padding[axis] = if reverse {
            (0, n.saturating_sub(1) as i64)
        } else {
            (n.saturating_sub(1) as i64, 0)
        };
        self.pool(
            op,
            reducer,
            &window,
            &vec![1; self.rank()],
            &Padding::Explicit(padding),
        )
    }

    /// Running sum along `axis` (`jnp.cumsum`); `reverse` accumulates from the end.
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// assert_eq!(x.cumsum(1, false)?.dims(), &[2, 3]);
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn cumsum(&self, axis: impl Axis, reverse: bool) -> Result<Value> {
        let axis = axis_of("cumsum", axis, &self.spec, 0)?;
        self.cumulative("cumsum", BinaryOp::Add, axis, reverse)
    }

    /// Running maximum along `axis` (`lax.cummax`).
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// let z = x.cummax(0, true)?;
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn cummax(&self, axis: impl Axis, reverse: bool) -> Result<Value> {
        let axis = axis_of("cummax", axis, &self.spec, 0)?;
        self.cumulative("cummax", BinaryOp::Max, axis, reverse)
    }
}

fn op_name(op: BinaryOp) -> &'static str {
    match op {
        BinaryOp::Add => "sum",
        BinaryOp::Mul => "prod",
        BinaryOp::Max => "max",
        BinaryOp::Min => "min",
        BinaryOp::And => "all",
        BinaryOp::Or => "any",
        other => other.name(),
    }
}
