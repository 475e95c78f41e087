//! Shape ops: broadcast_in_dim, reshape, transpose, slices, concatenate,
//! pad, reverse, and the numpy-style helpers built on them.

use crate::dtype::ArraySpec;
use crate::error::{Error, Result};

use super::axis::{axes_of, axis_of, Axes, Axis};
use super::core::{check_dim_list, check_i64_attr, op_err, Value};
use super::op::Op;

impl Value {
    /// Broadcasts into `dims`: operand dimension i becomes output dimension
    /// `broadcast_dims[i]` (its size must be 1 or equal); the rest are new.
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
    /// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
    /// assert_eq!(x.broadcast_in_dim(&[2, 5, 3], &[0, 2])?.dims(), &[2, 5, 3]);
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn broadcast_in_dim(&self, dims: &[usize], broadcast_dims: &[usize]) -> Result<Value> {
        if broadcast_dims.len() != self.rank() {
            return Err(op_err(
                "broadcast_in_dim",
                format!(
                    "operand {} needs {} broadcast dimensions, got {broadcast_dims:?}",
                    self.spec,
                    self.rank()
                ),
            ));
        }
        check_dim_list(
            "broadcast_in_dim",
            "broadcast dimensions",
            "output",
            broadcast_dims,
            dims.len(),
            &self.spec,
        )?;
        for (i, &d) in broadcast_dims.iter().enumerate() {
            if self.dims()[i] != 1 && self.dims()[i] != dims[d] {
                return Err(op_err(
                    "broadcast_in_dim",
                    format!(
                        "operand {} dimension {i} cannot broadcast to size {} of {dims:?}",
                        self.spec, dims[d]
                    ),
                ));
            }
        }
        let out = ArraySpec::new(self.dtype(), dims);
        Ok(self
            .builder
            .push(
                Op::BroadcastInDim {
                    dims: broadcast_dims.to_vec(),
                },
                &[self],
                vec![out],
            )?
            .remove(0))
    }

    /// Same elements in row-major order, new dimensions.
    ///
    /// ```
    /// # let b = xlayer::builder::Builder::new();
    /// let x = b.iota(xlayer::DType::F32, &[6], 0)?.reshape(&[2, 3])?;
    /// assert_eq!(x.dims(), &[2, 3]);
    /// assert!(x.reshape(&[4, 2]).is_err());
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn reshape(&self, dims: &[usize]) -> Result<Value> {
        let out = ArraySpec::new(self.dtype(), dims);
        if out.element_count() != self.element_count() {
            return Err(op_err(
                "reshape",
                format!(
                    "cannot reshape {} ({} elements) to {dims:?}",
                    self.spec,
                    self.element_count()
                ),
            ));
        }
        if dims == self.dims() {
            return Ok(self.clone());
        }
        Ok(self
            .builder
            .push(Op::Reshape, &[self], vec![out])?
            .remove(0))
    }

    /// Permutes dimensions: output dimension i is operand dimension `perm[i]`.
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
    /// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
    /// assert_eq!(x.transpose(&[1, 0])?.dims(), &[3, 2]);
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn transpose(&self, perm: impl Axes) -> Result<Value> {
        let perm = &axes_of("transpose", perm, &self.spec)?;
        if perm.len() != self.rank() {
            return Err(op_err(
                "transpose",
                format!("permutation {perm:?} does not match {}", self.spec),
            ));
        }
        check_dim_list(
            "transpose",
            "permutation",
            "operand",
            perm,
            self.rank(),
            &self.spec,
        )?;
        let dims: Vec<usize> = perm.iter().map(|&p| self.dims()[p]).collect();
        Ok(self
            .builder
            .push(
                Op::Transpose {
                    perm: perm.to_vec(),
                },
                &[self],
                vec![ArraySpec::new(self.dtype(), dims)],
            )?
            .remove(0))
    }

    /// Swaps the last two dimensions (`x.mT`).
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
    /// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
    /// assert_eq!(x.t()?.dims(), &[3, 2]);
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn t(&self) -> Result<Value> {
        if self.rank() < 2 {
            return Err(op_err(
                "transpose",
                format!("t() needs rank >= 2, got {}", self.spec),
            ));
        }
        let mut perm: Vec<usize> = (0..self.rank()).collect();
        perm.swap(self.rank() - 2, self.rank() - 1);
        self.transpose(&perm)
    }

    /// Static strided slice `[start, limit)` with `strides` per dimension.
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
    /// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
    /// assert_eq!(x.slice(&[0, 0], &[2, 3], &[1, 2])?.dims(), &[2, 2]);
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn slice(&self, start: &[usize], limit: &[usize], strides: &[usize]) -> Result<Value> {
        let r = self.rank();
        if start.len() != r || limit.len() != r || strides.len() != r {
            return Err(op_err("slice", format!("start {start:?}, limit {limit:?}, strides {strides:?} must each have {r} entries for {}", self.spec)));
        }
        check_i64_attr("slice", "strides", strides, &self.spec)?;
        let mut dims = Vec::with_capacity(r);
        for i in 0..r {
            if start[i] > limit[i] || limit[i] > self.dims()[i] || strides[i] == 0 {
                return Err(op_err(
                    "slice",
                    format!(
                        "dimension {i}: [{}, {}) step {} is invalid for {}",
                        start[i], limit[i], strides[i], self.spec
                    ),
                ));
            }
            dims.push((limit[i] - start[i]).div_ceil(strides[i]));
        }
        let op = Op::Slice {
            start: start.to_vec(),
            limit: limit.to_vec(),
            strides: strides.to_vec(),
        };
        Ok(self
            .builder
            .push(op, &[self], vec![ArraySpec::new(self.dtype(), dims)])?
            .remove(0))
    }

    /// `x[start:limit]` along one dimension.
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
    /// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
    /// assert_eq!(x.slice_axis(1, 1, 3)?.dims(), &[2, 2]);
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn slice_axis(&self, axis: impl Axis, start: usize, limit: usize) -> Result<Value> {
        let axis = axis_of("slice", axis, &self.spec, 0)?;
        let mut s = vec![0; self.rank()];
        let mut l = self.dims().to_vec();
        s[axis] = start;
        l[axis] = limit;
        self.slice(&s, &l, &vec![1; self.rank()])
    }

    /// A slice of `sizes` starting at run-time indices (one integer scalar
    /// per dimension; clamped into range as XLA does).
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
    /// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
    /// let s = b.scalar(1i32)?;
    /// assert_eq!(x.dynamic_slice(&[s.clone(), s], &[1, 2])?.dims(), &[1, 2]);
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn dynamic_slice(&self, starts: &[Value], sizes: &[usize]) -> Result<Value> {
        if starts.len() != self.rank() || sizes.len() != self.rank() {
            return Err(op_err(
                "dynamic_slice",
                format!(
                    "{} needs {} start indices and sizes",
                    self.spec,
                    self.rank()
                ),
            ));
        }
        check_index_scalars("dynamic_slice", starts)?;
        for (i, (&s, &d)) in sizes.iter().zip(self.dims()).enumerate() {
            if s > d {
                return Err(op_err(
                    "dynamic_slice",
                    format!("size {s} of dimension {i} exceeds {}", self.spec),
                ));
            }
        }
        let mut operands: Vec<&Value> = vec![self];
        operands.extend(starts.iter());
        let out = ArraySpec::new(self.dtype(), sizes);
        Ok(self
            .builder
            .push(
                Op::DynamicSlice {
                    sizes: sizes.to_vec(),
                },
                &operands,
                vec![out],
            )?
            .remove(0))
    }

    /// Overwrites the block of `update`'s shape at run-time start indices.
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
    /// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
    /// let s = b.scalar(0i32)?;
    /// let z = x.dynamic_update_slice(&b.ones(DType::F32, &[1, 3])?, &[s.clone(), s])?;
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn dynamic_update_slice(&self, update: &Value, starts: &[Value]) -> Result<Value> {
        if update.dtype() != self.dtype()
            || update.rank() != self.rank()
            || starts.len() != self.rank()
        {
            return Err(op_err(
                "dynamic_update_slice",
                format!(
                    "update {} and {} start indices do not fit {}",
                    update.spec,
                    starts.len(),
                    self.spec
                ),
            ));
        }
        if update.dims().iter().zip(self.dims()).any(|(u, d)| u > d) {
            return Err(op_err(
                "dynamic_update_slice",
                format!("update {} is larger than {}", update.spec, self.spec),
            ));
        }
        check_index_scalars("dynamic_update_slice", starts)?;
        let mut operands: Vec<&Value> = vec![self, update];
        operands.extend(starts.iter());
        Ok(self
            .builder
            .push(Op::DynamicUpdateSlice, &operands, vec![self.spec.clone()])?
            .remove(0))
    }

    /// Joins values along `dim`; all other dimensions and the dtype must match.
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
    /// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
    /// assert_eq!(Value::concatenate(&[x.clone(), y.clone()], 0)?.dims(), &[4, 3]);
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn concatenate(values: &[Value], dim: impl Axis) -> Result<Value> {
        let first = values
            .first()
            .ok_or_else(|| op_err("concatenate", "needs at least one operand"))?;
        let dim = axis_of("concatenate", dim, &first.spec, 0)?;
        let mut dims = first.dims().to_vec();
        dims[dim] = 0;
        for v in values {
            let same = v.dtype() == first.dtype()
                && v.rank() == first.rank()
                && (0..v.rank()).all(|i| i == dim || v.dims()[i] == first.dims()[i]);
            if !same {
                let all: Vec<String> = values.iter().map(|v| v.spec.to_string()).collect();
                return Err(op_err(
                    "concatenate",
                    format!(
                        "operands [{}] differ outside dimension {dim}",
                        all.join(", ")
                    ),
                ));
            }
            dims[dim] =
                dims[dim]
                    .checked_add(v.dims()[dim])
                    .ok_or_else(|| Error::ShapeOverflow {
                        op: "concatenate",
                        operands: values.iter().map(|v| v.spec.clone()).collect(),
                        detail: format!("the sum of the sizes of dimension {dim}"),
                    })?;
        }
        let refs: Vec<&Value> = values.iter().collect();
        Ok(first
            .builder
            .push(
                Op::Concatenate { dim },
                &refs,
                vec![ArraySpec::new(first.dtype(), dims)],
            )?
            .remove(0))
    }

    /// Pads with the scalar `value`: `low`/`high` per dimension (negative
    /// crops), `interior` elements between neighbours.
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
    /// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
    /// assert_eq!(x.pad(&x.scalar_like(0.0)?, &[1, 0], &[0, -1], &[0, 1])?.dims(), &[3, 4]);
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn pad(
        &self,
        value: &Value,
        low: &[i64],
        high: &[i64],
        interior: &[usize],
    ) -> Result<Value> {
        let r = self.rank();
        if value.rank() != 0 || value.dtype() != self.dtype() {
            return Err(op_err(
                "pad",
                format!(
                    "padding value must be a {} scalar, got {}",
                    self.dtype(),
                    value.spec
                ),
            ));
        }
        if low.len() != r || high.len() != r || interior.len() != r {
            return Err(op_err(
                "pad",
                format!(
                    "low {low:?}, high {high:?}, interior {interior:?} need {r} entries for {}",
                    self.spec
                ),
            ));
        }
        check_i64_attr("pad", "interior", interior, &self.spec)?;
        let mut dims = Vec::with_capacity(r);
        for i in 0..r {
            // i128: no i64 or usize input can overflow it.
            let d = self.dims()[i] as i128;
            let size =
                i128::from(low[i]) + i128::from(high[i]) + d + (d - 1).max(0) * interior[i] as i128;
            if size < 0 {
                return Err(op_err(
                    "pad",
                    format!(
                        "dimension {i} of {} would have negative size {size}",
                        self.spec
                    ),
                ));
            }
            dims.push(usize::try_from(size).map_err(|_| Error::ShapeOverflow {
                op: "pad",
                operands: vec![self.spec.clone()],
                detail: format!(
                    "dimension {i}: low {}, high {}, interior {}",
                    low[i], high[i], interior[i]
                ),
            })?);
        }
        let op = Op::Pad {
            low: low.to_vec(),
            high: high.to_vec(),
            interior: interior.to_vec(),
        };
        Ok(self
            .builder
            .push(op, &[self, value], vec![ArraySpec::new(self.dtype(), dims)])?
            .remove(0))
    }

    /// Reverses the order of elements along `dims`.
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
    /// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
    /// let z = x.reverse(&[0, 1])?;
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn reverse(&self, dims: impl Axes) -> Result<Value> {
        let dims = &axes_of("reverse", dims, &self.spec)?;
        Ok(self
            .builder
            .push(
                Op::Reverse {
                    dims: dims.to_vec(),
                },
                &[self],
                vec![self.spec.clone()],
            )?
            .remove(0))
    }

    /// Inserts a dimension of size 1 at `axis`.
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
    /// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
    /// assert_eq!(x.expand_dims(0)?.dims(), &[1, 2, 3]);
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn expand_dims(&self, axis: impl Axis) -> Result<Value> {
        let axis = axis_of("expand_dims", axis, &self.spec, 1)?;
        let mut dims = self.dims().to_vec();
        dims.insert(axis, 1);
        self.reshape(&dims)
    }

    /// Removes the given dimensions, which must have size 1.
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
    /// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
    /// assert_eq!(x.expand_dims(2)?.squeeze(&[2])?.dims(), &[2, 3]);
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn squeeze(&self, axes: impl Axes) -> Result<Value> {
        let axes = &axes_of("squeeze", axes, &self.spec)?;
        if let Some(&a) = axes.iter().find(|&&a| self.dims()[a] != 1) {
            return Err(op_err(
                "squeeze",
                format!("dimension {a} of {} is not 1", self.spec),
            ));
        }
        let dims: Vec<usize> = (0..self.rank())
            .filter(|i| !axes.contains(i))
            .map(|i| self.dims()[i])
            .collect();
        self.reshape(&dims)
    }

    /// Flattens to one dimension.
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
    /// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
    /// assert_eq!(x.flatten()?.dims(), &[6]);
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn flatten(&self) -> Result<Value> {
        self.reshape(&[self.element_count()])
    }
}

fn check_index_scalars(op: &'static str, starts: &[Value]) -> Result<()> {
    let first = starts.first().map(|v| v.dtype());
    for v in starts {
        if v.rank() != 0 || !v.dtype().is_int() || Some(v.dtype()) != first {
            return Err(op_err(
                op,
                format!(
                    "start indices must be integer scalars of one dtype, got {}",
                    v.spec
                ),
            ));
        }
    }
    Ok(())
}
