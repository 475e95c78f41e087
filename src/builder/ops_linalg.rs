//! Contractions: dot_general, matmul, two-operand einsum, convolution.

use std::collections::BTreeSet;

use crate::dtype::ArraySpec;
use crate::error::{Error, Result};

use super::core::{check_dim_list, check_i64_attr, op_err, window_output_size, Value};
use super::op::{ConvAttrs, DotDims, Op};

impl Value {
    /// `lax.dot_general`: output dimensions are batch, then lhs free, then rhs free.
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
    /// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
    /// let d = DotDims { lhs_contract: vec![1], rhs_contract: vec![1], ..Default::default() };
    /// assert_eq!(x.dot_general(&y, &d)?.dims(), &[2, 2]);
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn dot_general(&self, rhs: &Value, dims: &DotDims) -> Result<Value> {
        let err = |m: String| {
            op_err(
                "dot_general",
                format!("{m} (lhs {}, rhs {}, {dims:?})", self.spec, rhs.spec),
            )
        };
        if self.dtype() != rhs.dtype() {
            return Err(err("dtype mismatch".into()));
        }
        if dims.lhs_batch.len() != dims.rhs_batch.len()
            || dims.lhs_contract.len() != dims.rhs_contract.len()
        {
            return Err(err(
                "batch/contracting dimension lists differ in length".into()
            ));
        }
        let all_l: Vec<usize> = dims
            .lhs_batch
            .iter()
            .chain(&dims.lhs_contract)
            .copied()
            .collect();
        let all_r: Vec<usize> = dims
            .rhs_batch
            .iter()
            .chain(&dims.rhs_contract)
            .copied()
            .collect();
        for (all, v) in [(&all_l, self), (&all_r, rhs)] {
            let set: BTreeSet<_> = all.iter().collect();
            if set.len() != all.len() || all.iter().any(|&d| d >= v.rank()) {
                return Err(err("dimensions out of range or repeated".into()));
            }
        }
        for (&l, &r) in dims
            .lhs_batch
            .iter()
            .zip(&dims.rhs_batch)
            .chain(dims.lhs_contract.iter().zip(&dims.rhs_contract))
        {
            if self.dims()[l] != rhs.dims()[r] {
                return Err(err(format!(
                    "lhs dimension {l} ({}) != rhs dimension {r} ({})",
                    self.dims()[l],
                    rhs.dims()[r]
                )));
            }
        }
        let mut out: Vec<usize> = dims.lhs_batch.iter().map(|&d| self.dims()[d]).collect();
        out.extend(
            (0..self.rank())
                .filter(|d| !all_l.contains(d))
                .map(|d| self.dims()[d]),
        );
        out.extend(
            (0..rhs.rank())
                .filter(|d| !all_r.contains(d))
                .map(|d| rhs.dims()[d]),
        );
        let spec = ArraySpec::new(self.dtype(), out);
        Ok(self
            .builder
            .push(Op::DotGeneral(dims.clone()), &[self, rhs], vec![spec])?
            .remove(0))
    }

    /// `jnp.matmul`: vectors are promoted and squeezed back; batch dimensions broadcast.
    ///
    /// ```
    /// # use xlayer::{builder::Builder, ArraySpec};
    /// let b = Builder::new();
    /// let x = b.parameter(ArraySpec::of::<f32>([8, 2, 3]), "x")?;
    /// let w = b.parameter(ArraySpec::of::<f32>([3, 4]), "w")?;
    /// assert_eq!(x.matmul(&w)?.dims(), &[8, 2, 4]);
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn matmul(&self, rhs: &Value) -> Result<Value> {
        if self.rank() == 0 || rhs.rank() == 0 {
            return Err(op_err(
                "matmul",
                format!(
                    "operands must be at least 1-D, got {} and {}",
                    self.spec, rhs.spec
                ),
            ));
        }
        let a = if self.rank() == 1 {
            self.expand_dims(0)?
        } else {
            self.clone()
        };
        let b = if rhs.rank() == 1 {
            rhs.expand_dims(1)?
        } else {
            rhs.clone()
        };
        let (ra, rb) = (a.rank(), b.rank());
        if a.dims()[ra - 1] != b.dims()[rb - 2] {
            return Err(op_err(
                "matmul",
                format!("contracting sizes differ: {} @ {}", self.spec, rhs.spec),
            ));
        }
        let batch = super::promotion::broadcast_shapes(&a.dims()[..ra - 2], &b.dims()[..rb - 2])
            .map_err(|_| {
                op_err(
                    "matmul",
                    format!(
                        "batch dimensions of {} and {} do not broadcast",
                        self.spec, rhs.spec
                    ),
                )
            })?;
        let nb = batch.len();
        let full = |v: &Value, r: usize| -> Result<Value> {
            let mut d = batch.clone();
            d.extend_from_slice(&v.dims()[r - 2..]);
            v.broadcast_to(&d)
        };
        let (a, b) = (full(&a, ra)?, full(&b, rb)?);
        let batch_dims: Vec<usize> = (0..nb).collect();
        let mut out = a.dot_general(
            &b,
            &DotDims {
                lhs_batch: batch_dims.clone(),
                rhs_batch: batch_dims,
                lhs_contract: vec![nb + 1],
                rhs_contract: vec![nb],
            },
        )?;
        if rhs.rank() == 1 {
            out = out.squeeze(&[out.rank() - 1])?;
        }
        if self.rank() == 1 {
            out = out.squeeze(&[out.rank() - if rhs.rank() == 1 { 1 } else { 2 }])?;
        }
        Ok(out)
    }

    /// Two-operand einsum, e.g. `"bij,bjk->bik"`: letters in both operands
    /// and the output are batch, letters in both but not the output are
    /// contracted, letters in one operand only and not in the output are summed.
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
    /// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
    /// assert_eq!(Value::einsum("ij,kj->ik", &x, &y)?.dims(), &[2, 2]);
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn einsum(spec: &str, lhs: &Value, rhs: &Value) -> Result<Value> {
        let bad = |m: &str| {
            op_err(
                "einsum",
                format!("`{spec}`: {m} (operands {} and {})", lhs.spec, rhs.spec),
            )
        };
        let (ins, out) = spec.split_once("->").ok_or_else(|| bad("missing `->`"))?;
        let (l, r) = ins
            .split_once(',')
            .ok_or_else(|| bad("needs two operands"))?;
        let (l, r, out): (Vec<char>, Vec<char>, Vec<char>) = (
            l.trim().chars().collect(),
            r.trim().chars().collect(),
            out.trim().chars().collect(),
        );
        if l.len() != lhs.rank() || r.len() != rhs.rank() {
            return Err(bad("subscripts do not match the operand ranks"));
        }
        // Sum away letters that appear in one operand only and not in the output.
        let reduce_only = |v: &Value, s: &[char], other: &[char]| -> Result<(Value, Vec<char>)> {
            let axes: Vec<usize> = (0..s.len())
                .filter(|&i| !other.contains(&s[i]) && !out.contains(&s[i]))
                .collect();
            let kept: Vec<char> = (0..s.len())
                .filter(|i| !axes.contains(i))
                .map(|i| s[i])
                .collect();
            Ok((
                if axes.is_empty() {
                    v.clone()
                } else {
                    v.sum(&axes, false)?
                },
                kept,
            ))
        };
        let (a, l) = reduce_only(lhs, &l, &r)?;
        let (b, r) = reduce_only(rhs, &r, &l)?;
        let pos = |s: &[char], c: char| s.iter().position(|&x| x == c);
        let batch: Vec<char> = l
            .iter()
            .copied()
            .filter(|c| r.contains(c) && out.contains(c))
            .collect();
        let contract: Vec<char> = l
            .iter()
            .copied()
            .filter(|c| r.contains(c) && !out.contains(c))
            .collect();
        let dims = DotDims {
            lhs_batch: batch.iter().filter_map(|&c| pos(&l, c)).collect(),
            rhs_batch: batch.iter().filter_map(|&c| pos(&r, c)).collect(),
            lhs_contract: contract.iter().filter_map(|&c| pos(&l, c)).collect(),
            rhs_contract: contract.iter().filter_map(|&c| pos(&r, c)).collect(),
        };
        let prod = a.dot_general(&b, &dims).map_err(|e| match e {
            // a letter with two sizes: report it as the einsum's error
            crate::Error::Op { message, .. } => bad(&message),
            other => other,
        })?;
        let mut order: Vec<char> = batch.clone();
        order.extend(
            l.iter()
                .filter(|c| !batch.contains(c) && !contract.contains(c)),
        );
        order.extend(
            r.iter()
                .filter(|c| !batch.contains(c) && !contract.contains(c)),
        );
        if order.len() != out.len() || out.iter().any(|c| !order.contains(c)) {
            return Err(bad(
                "output subscripts must be a permutation of the remaining letters",
            ));
        }
        let perm: Vec<usize> = out.iter().filter_map(|&c| pos(&order, c)).collect();
        if perm.iter().enumerate().all(|(i, &p)| i == p) {
            Ok(prod)
        } else {
            prod.transpose(&perm)
        }
    }

    /// `lax.conv_general_dilated`: `self` is the input, `kernel` the filter.
    ///
    /// A convolution of at most 27 products per output (kernel taps ×
    /// input features, e.g. 3x3 over 1 or 3 features) in f32/f64 is emitted
    /// as a sum of shifted products, which the CPU compiler runs several
    /// times faster; its gradient is still the convolution's.
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
    /// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
    /// let img = b.parameter(ArraySpec::of::<f32>([1, 8, 8, 3]), "img")?;
    /// let k = b.parameter(ArraySpec::of::<f32>([3, 3, 3, 16]), "k")?;
    /// let attrs = ConvAttrs::new(ConvDims::nhwc(2)).padding(&[(1, 1), (1, 1)]);
    /// assert_eq!(img.conv_general(&k, &attrs)?.dims(), &[1, 8, 8, 16]);
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn conv_general(&self, kernel: &Value, attrs: &ConvAttrs) -> Result<Value> {
        let d = &attrs.dims;
        let n = d.input_spatial.len();
        let err = |m: String| {
            op_err(
                "convolution",
                format!("{m} (input {}, kernel {})", self.spec, kernel.spec),
            )
        };
        if self.dtype() != kernel.dtype() {
            return Err(err("dtype mismatch".into()));
        }
        if n == 0 || self.rank() != n + 2 || kernel.rank() != n + 2 {
            return Err(err(format!(
                "input and kernel must have rank {} for {n} spatial dimensions",
                n + 2
            )));
        }
        for (what, v) in [
            ("strides", attrs.strides.len()),
            ("padding", attrs.padding.len()),
            ("lhs_dilation", attrs.lhs_dilation.len()),
            ("rhs_dilation", attrs.rhs_dilation.len()),
            ("kernel_spatial", d.kernel_spatial.len()),
            ("output_spatial", d.output_spatial.len()),
        ] {
            if v != n {
                return Err(err(format!(
                    "{what} has {v} entries for {n} spatial dimensions"
                )));
            }
        }
        // Every dimension number must be below the rank, and each of the
        // input, kernel and output layouts a permutation of 0..n+2.
        let rank = n + 2;
        check_conv_layout(
            "input",
            [
                ("input_batch", d.input_batch),
                ("input_feature", d.input_feature),
            ],
            ("input_spatial", &d.input_spatial),
            rank,
            &self.spec,
        )?;
        check_conv_layout(
            "kernel",
            [
                ("kernel_input_feature", d.kernel_input_feature),
                ("kernel_output_feature", d.kernel_output_feature),
            ],
            ("kernel_spatial", &d.kernel_spatial),
            rank,
            &kernel.spec,
        )?;
        check_conv_layout(
            "output",
            [
                ("output_batch", d.output_batch),
                ("output_feature", d.output_feature),
            ],
            ("output_spatial", &d.output_spatial),
            rank,
            &self.spec,
        )?;
        for (what, values) in [
            ("strides", &attrs.strides[..]),
            ("lhs_dilation", &attrs.lhs_dilation[..]),
            ("rhs_dilation", &attrs.rhs_dilation[..]),
            ("feature_group_count", &[attrs.feature_group_count][..]),
            ("batch_group_count", &[attrs.batch_group_count][..]),
        ] {
            check_i64_attr("convolution", what, values, &self.spec)?;
        }
        let (g, bg) = (attrs.feature_group_count, attrs.batch_group_count);
        if g == 0 || bg == 0 {
            return Err(err("group counts must be positive".into()));
        }
        let in_f = self.dims()[d.input_feature];
        let k_in = kernel.dims()[d.kernel_input_feature];
        let k_out = kernel.dims()[d.kernel_output_feature];
        let batch = self.dims()[d.input_batch];
        if k_in.checked_mul(g) != Some(in_f) {
            return Err(err(format!(
                "input features {in_f} != kernel input features {k_in} x feature_group_count {g}"
            )));
        }
        if !k_out.is_multiple_of(g) || !k_out.is_multiple_of(bg) || !batch.is_multiple_of(bg) {
            return Err(err(format!("output features {k_out} / batch {batch} not divisible by the group counts ({g}, {bg})")));
        }
        let mut out = vec![0usize; n + 2];
        out[d.output_batch] = batch / bg;
        out[d.output_feature] = k_out;
        for i in 0..n {
            if attrs.strides[i] == 0 || attrs.lhs_dilation[i] == 0 || attrs.rhs_dilation[i] == 0 {
                return Err(err(format!(
                    "spatial dimension {i}: strides and dilations must be positive"
                )));
            }
            out[d.output_spatial[i]] = window_output_size(
                self.dims()[d.input_spatial[i]],
                attrs.lhs_dilation[i],
                attrs.padding[i],
                kernel.dims()[d.kernel_spatial[i]],
                attrs.rhs_dilation[i],
                attrs.strides[i],
            )
            .ok_or_else(|| Error::ShapeOverflow {
                op: "convolution",
                operands: vec![self.spec.clone(), kernel.spec.clone()],
                detail: format!(
                    "spatial dimension {i}: padding {:?}, lhs_dilation {}, rhs_dilation {}, stride {}",
                    attrs.padding[i], attrs.lhs_dilation[i], attrs.rhs_dilation[i], attrs.strides[i]
                ),
            })?;
        }
        let spec = ArraySpec::new(self.dtype(), out.clone());
        let conv = self
            .builder
            .push(Op::Convolution(attrs.clone()), &[self, kernel], vec![spec])?
            .remove(0);
        match super::conv_taps::shifted_products(self, kernel, attrs, &out)? {
            Some(products) => products.with_gradient_of(&conv),
            None => Ok(conv),
        }
    }
}

/// Checks one layout of a convolution's dimension numbers (input, kernel or
/// output): each number below `rank`, and together a permutation.
fn check_conv_layout(
    target: &'static str,
    fields: [(&'static str, usize); 2],
    spatial: (&'static str, &[usize]),
    rank: usize,
    operand: &ArraySpec,
) -> Result<()> {
    let all: Vec<(&'static str, usize)> = fields
        .into_iter()
        .chain(spatial.1.iter().map(|&x| (spatial.0, x)))
        .collect();
    for &(field, dim) in &all {
        check_dim_list("convolution", field, target, &[dim], rank, operand)?;
    }
    let what = match target {
        "input" => "input dimension numbers",
        "kernel" => "kernel dimension numbers",
        _ => "output dimension numbers",
    };
    let dims: Vec<usize> = all.iter().map(|&(_, x)| x).collect();
    check_dim_list("convolution", what, target, &dims, rank, operand)
}
