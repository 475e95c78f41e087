//! Indexing ops: gather and scatter (with `take`, embedding lookup and
//! `x.at[idx].set/add` on top), sort with indices, top_k.

use crate::dtype::{ArraySpec, DType};
use crate::error::Result;

use super::axis::{axis_of, Axis};
use super::core::{check_dim_list, op_err, Value};
use super::op::{BinaryOp, GatherDims, Op, ScatterDims};

/// How a scatter combines the existing value with the update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScatterMode {
    /// Replace (`x.at[i].set(u)`).
    Set,
    /// Add (`x.at[i].add(u)`).
    Add,
    /// Multiply (`x.at[i].multiply(u)`).
    Mul,
    /// Maximum (`x.at[i].max(u)`).
    Max,
    /// Minimum (`x.at[i].min(u)`).
    Min,
}

fn check_indices(op: &'static str, indices: &Value) -> Result<()> {
    if !indices.dtype().is_int() {
        return Err(op_err(
            op,
            format!("indices must be integers, got {}", indices.spec),
        ));
    }
    Ok(())
}

impl Value {
    /// `lax.gather` with explicit dimension numbers and slice sizes.
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
    /// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
    /// let dims = GatherDims { offset_dims: vec![1], collapsed_slice_dims: vec![0], start_index_map: vec![0], index_vector_dim: 1 };
    /// assert_eq!(x.gather(&idx, &dims, &[1, 3])?.dims(), &[4, 3]);
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn gather(
        &self,
        indices: &Value,
        dims: &GatherDims,
        slice_sizes: &[usize],
    ) -> Result<Value> {
        check_indices("gather", indices)?;
        let err = |m: String| {
            op_err(
                "gather",
                format!(
                    "{m} (operand {}, indices {}, {dims:?}, slice_sizes {slice_sizes:?})",
                    self.spec, indices.spec
                ),
            )
        };
        if slice_sizes.len() != self.rank() {
            return Err(err(
                "slice_sizes needs one entry per operand dimension".into()
            ));
        }
        if slice_sizes.iter().zip(self.dims()).any(|(s, d)| s > d) {
            return Err(err("a slice size exceeds the operand".into()));
        }
        if dims.index_vector_dim > indices.rank() {
            return Err(err("index_vector_dim out of range".into()));
        }
        let index_len = if dims.index_vector_dim == indices.rank() {
            1
        } else {
            indices.dims()[dims.index_vector_dim]
        };
        let r = self.rank();
        check_dim_list(
            "gather",
            "start_index_map",
            "operand",
            &dims.start_index_map,
            r,
            &self.spec,
        )?;
        check_dim_list(
            "gather",
            "collapsed_slice_dims",
            "operand",
            &dims.collapsed_slice_dims,
            r,
            &self.spec,
        )?;
        if dims.start_index_map.len() != index_len {
            return Err(err(
                "start_index_map must map each index component to an operand dimension".into(),
            ));
        }
        if dims
            .collapsed_slice_dims
            .iter()
            .any(|&d| slice_sizes[d] != 1)
        {
            return Err(err("collapsed dimensions must have slice size 1".into()));
        }
        let batch: Vec<usize> = (0..indices.rank())
            .filter(|&d| d != dims.index_vector_dim)
            .map(|d| indices.dims()[d])
            .collect();
        let offsets: Vec<usize> = (0..self.rank())
            .filter(|d| !dims.collapsed_slice_dims.contains(d))
            .map(|d| slice_sizes[d])
            .collect();
        let out_rank = batch.len() + offsets.len();
        check_dim_list(
            "gather",
            "offset_dims",
            "output",
            &dims.offset_dims,
            out_rank,
            &self.spec,
        )?;
        if dims.offset_dims.len() != offsets.len() {
            return Err(err(format!(
                "offset_dims must list {} output dimensions",
                offsets.len()
            )));
        }
        let mut out = Vec::with_capacity(out_rank);
        let (mut bi, mut oi) = (0, 0);
        for d in 0..out_rank {
            if dims.offset_dims.contains(&d) {
                out.push(offsets[oi]);
                oi += 1;
            } else {
                out.push(batch[bi]);
                bi += 1;
            }
        }
        let op = Op::Gather {
            dims: dims.clone(),
            slice_sizes: slice_sizes.to_vec(),
        };
        Ok(self
            .builder
            .push(
                op,
                &[self, indices],
                vec![ArraySpec::new(self.dtype(), out)],
            )?
            .remove(0))
    }

    /// `jnp.take(x, indices, axis)`: picks entries along `axis`; the output
    /// replaces that dimension with the indices' dimensions. Out-of-range
    /// indices are clamped (XLA's gather semantics).
    ///
    /// ```
    /// # use xlayer::{builder::Builder, ArraySpec};
    /// let b = Builder::new();
    /// let table = b.parameter(ArraySpec::of::<f32>([100, 16]), "embedding")?;
    /// let ids = b.parameter(ArraySpec::of::<i32>([2, 7]), "ids")?;
    /// assert_eq!(table.take(&ids, 0)?.dims(), &[2, 7, 16]);
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn take(&self, indices: &Value, axis: impl Axis) -> Result<Value> {
        let axis = axis_of("take", axis, &self.spec, 0)?;
        check_indices("take", indices)?;
        let ir = indices.rank();
        let mut slice_sizes = self.dims().to_vec();
        slice_sizes[axis] = 1;
        let offset_dims: Vec<usize> = (0..self.rank())
            .filter(|&d| d != axis)
            .map(|d| if d < axis { d } else { d + ir - 1 })
            .collect();
        let dims = GatherDims {
            offset_dims,
            collapsed_slice_dims: vec![axis],
            start_index_map: vec![axis],
            index_vector_dim: ir,
        };
        self.gather(indices, &dims, &slice_sizes)
    }

    /// `lax.scatter*` with explicit dimension numbers and a combining mode.
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
    /// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
    /// let dims = ScatterDims { update_window_dims: vec![1], inserted_window_dims: vec![0], scatter_dims_to_operand_dims: vec![0], index_vector_dim: 1 };
    /// let u = b.zeros(DType::F32, &[4, 3])?;
    /// let z = x.scatter(&idx, &u, &dims, ScatterMode::Add)?;
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn scatter(
        &self,
        indices: &Value,
        updates: &Value,
        dims: &ScatterDims,
        mode: ScatterMode,
    ) -> Result<Value> {
        check_indices("scatter", indices)?;
        let err = |m: String| {
            op_err(
                "scatter",
                format!(
                    "{m} (operand {}, indices {}, updates {}, {dims:?})",
                    self.spec, indices.spec, updates.spec
                ),
            )
        };
        if updates.dtype() != self.dtype() {
            return Err(err("updates must have the operand's dtype".into()));
        }
        if dims.index_vector_dim > indices.rank() {
            return Err(err("index_vector_dim out of range".into()));
        }
        let index_len = if dims.index_vector_dim == indices.rank() {
            1
        } else {
            indices.dims()[dims.index_vector_dim]
        };
        let r = self.rank();
        check_dim_list(
            "scatter",
            "scatter_dims_to_operand_dims",
            "operand",
            &dims.scatter_dims_to_operand_dims,
            r,
            &self.spec,
        )?;
        check_dim_list(
            "scatter",
            "inserted_window_dims",
            "operand",
            &dims.inserted_window_dims,
            r,
            &self.spec,
        )?;
        check_dim_list(
            "scatter",
            "update_window_dims",
            "updates",
            &dims.update_window_dims,
            updates.rank(),
            &self.spec,
        )?;
        if dims.scatter_dims_to_operand_dims.len() != index_len {
            return Err(err(
                "scatter_dims_to_operand_dims must map each index component".into(),
            ));
        }
        let batch: Vec<usize> = (0..indices.rank())
            .filter(|&d| d != dims.index_vector_dim)
            .map(|d| indices.dims()[d])
            .collect();
        if dims.update_window_dims.len() + dims.inserted_window_dims.len() != self.rank()
            || updates.rank() != batch.len() + dims.update_window_dims.len()
        {
            return Err(err(
                "window and inserted dimensions do not add up to the operand rank".into(),
            ));
        }
        let scatter_dims: Vec<usize> = (0..updates.rank())
            .filter(|d| !dims.update_window_dims.contains(d))
            .collect();
        if scatter_dims
            .iter()
            .zip(&batch)
            .any(|(&d, &b)| updates.dims()[d] != b)
        {
            return Err(err(
                "update scatter dimensions must match the indices' batch dimensions".into(),
            ));
        }
        let window_operand: Vec<usize> = (0..self.rank())
            .filter(|d| !dims.inserted_window_dims.contains(d))
            .collect();
        for (&u, &o) in dims.update_window_dims.iter().zip(&window_operand) {
            if updates.dims().get(u).is_none_or(|&s| s > self.dims()[o]) {
                return Err(err(format!(
                    "update window dimension {u} is larger than operand dimension {o}"
                )));
            }
        }
        let b = &self.builder;
        let scalar = ArraySpec::new(self.dtype(), []);
        let (body, _) = b.region("scatter", &[scalar.clone(), scalar], |a| {
            Ok(vec![match mode {
                ScatterMode::Set => a[1].clone(),
                ScatterMode::Add => a[0].binary(BinaryOp::Add, &a[1])?,
                ScatterMode::Mul => a[0].binary(BinaryOp::Mul, &a[1])?,
                ScatterMode::Max => a[0].binary(BinaryOp::Max, &a[1])?,
                ScatterMode::Min => a[0].binary(BinaryOp::Min, &a[1])?,
            }])
        })?;
        Ok(b.push(
            Op::Scatter {
                dims: dims.clone(),
                body,
            },
            &[self, indices, updates],
            vec![self.spec.clone()],
        )?
        .remove(0))
    }

    /// `x.at[indices].set/add/...(updates)` along `axis`: `indices` is
    /// integer of any rank; `updates` has the shape `take(indices, axis)`
    /// would return (or broadcasts to it). Out-of-range updates are dropped.
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
    /// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
    /// let z = x.at_update(&idx, &b.ones(DType::F32, &[4, 3])?, 0, ScatterMode::Max)?;
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn at_update(
        &self,
        indices: &Value,
        updates: &Value,
        axis: impl Axis,
        mode: ScatterMode,
    ) -> Result<Value> {
        let axis = axis_of("scatter", axis, &self.spec, 0)?;
        check_indices("scatter", indices)?;
        let ir = indices.rank();
        let mut want: Vec<usize> = self.dims()[..axis].to_vec();
        want.extend_from_slice(indices.dims());
        want.extend_from_slice(&self.dims()[axis + 1..]);
        let updates = updates.broadcast_to(&want).map_err(|_| {
            op_err(
                "scatter",
                format!(
                    "updates {} do not broadcast to {want:?} (operand {}, indices {})",
                    updates.spec, self.spec, indices.spec
                ),
            )
        })?;
        // Move the index dimensions of the updates to the front.
        let mut perm: Vec<usize> = (axis..axis + ir).collect();
        perm.extend(0..axis);
        perm.extend(axis + ir..want.len());
        let updates = updates.transpose(&perm)?;
        let dims = ScatterDims {
            update_window_dims: (ir..ir + self.rank() - 1).collect(),
            inserted_window_dims: vec![axis],
            scatter_dims_to_operand_dims: vec![axis],
            index_vector_dim: ir,
        };
        self.scatter(indices, &updates, &dims, mode)
    }

    /// `x.at[indices].set(updates)` along axis 0.
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
    /// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
    /// let z = x.at_set(&idx, &b.zeros(DType::F32, &[4, 3])?)?;
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn at_set(&self, indices: &Value, updates: &Value) -> Result<Value> {
        self.at_update(indices, updates, 0, ScatterMode::Set)
    }

    /// `x.at[indices].add(updates)` along axis 0 (repeated indices accumulate).
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
    /// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
    /// let z = x.at_add(&idx, &b.ones(DType::F32, &[4, 3])?)?;
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn at_add(&self, indices: &Value, updates: &Value) -> Result<Value> {
        self.at_update(indices, updates, 0, ScatterMode::Add)
    }

    /// Sorts several arrays of one shape along `axis` by the first
    /// (ascending, stable; NaNs last, as `jnp.sort`).
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
    /// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
    /// let sorted = Value::sort_many(&[x.clone(), i.clone()], 1, false)?;
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn sort_many(values: &[Value], axis: impl Axis, descending: bool) -> Result<Vec<Value>> {
        let first = values
            .first()
            .ok_or_else(|| op_err("sort", "needs at least one operand"))?;
        let axis = axis_of("sort", axis, &first.spec, 0)?;
        if values.iter().any(|v| v.dims() != first.dims()) {
            return Err(op_err(
                "sort",
                format!("operands must share a shape ({})", first.spec),
            ));
        }
        let b = &first.builder;
        let mut args = Vec::new();
        for v in values {
            args.push(ArraySpec::new(v.dtype(), []));
            args.push(ArraySpec::new(v.dtype(), []));
        }
        let is_float = first.dtype().is_float();
        let (comparator, _) = b.region("sort", &args, |a| {
            let (x, y) = if descending {
                (&a[1], &a[0])
            } else {
                (&a[0], &a[1])
            };
            let lt = if is_float {
                // Total order with NaN last: x < y, or y is NaN and x is not.
                let x_nan = x.ne(x)?;
                let y_nan = y.ne(y)?;
                x.lt(y)?.or(&y_nan.and(&x_nan.not()?)?)?
            } else {
                x.lt(y)?
            };
            Ok(vec![lt])
        })?;
        let refs: Vec<&Value> = values.iter().collect();
        b.push(
            Op::Sort {
                dim: axis,
                stable: true,
                comparator,
            },
            &refs,
            values.iter().map(|v| v.spec.clone()).collect(),
        )
    }

    /// Sorted copy along `axis`.
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
    /// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
    /// let z = x.sort(1, false)?;
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn sort(&self, axis: impl Axis, descending: bool) -> Result<Value> {
        Ok(Value::sort_many(std::slice::from_ref(self), axis, descending)?.remove(0))
    }

    /// `(sorted values, indices)` along `axis` (`jnp.argsort` gives the indices).
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
    /// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
    /// let (values, order) = x.sort_with_indices(1, true, DType::I32)?;
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn sort_with_indices(
        &self,
        axis: usize,
        descending: bool,
        index_dtype: DType,
    ) -> Result<(Value, Value)> {
        let idx = self.builder.iota(
            index_dtype,
            self.dims(),
            axis.min(self.rank().saturating_sub(1)),
        )?;
        let mut out = Value::sort_many(&[self.clone(), idx], axis, descending)?;
        let i = out.pop().expect("two outputs");
        Ok((out.pop().expect("two outputs"), i))
    }

    /// The `k` largest entries along the last dimension and their i32
    /// indices, largest first (`lax.top_k`).
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
    /// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
    /// let (values, indices) = x.top_k(2)?;
    /// assert_eq!(values.dims(), &[2, 2]);
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn top_k(&self, k: usize) -> Result<(Value, Value)> {
        let r = self.rank();
        if r == 0 || k > self.dims()[r - 1] {
            return Err(op_err(
                "top_k",
                format!("k = {k} exceeds the last dimension of {}", self.spec),
            ));
        }
        let mut dims = self.dims().to_vec();
        dims[r - 1] = k;
        let outs = vec![
            ArraySpec::new(self.dtype(), dims.clone()),
            ArraySpec::new(DType::I32, dims),
        ];
        let mut v = self.builder.push(Op::TopK { k }, &[self], outs)?;
        let i = v.pop().expect("two outputs");
        Ok((v.pop().expect("two outputs"), i))
    }
}
