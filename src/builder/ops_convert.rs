//! Conversions: `convert` (`lax.convert_element_type`), `bitcast_convert`
//! and `optimization_barrier`, the identity the compiler may not look through.

use crate::dtype::{ArraySpec, DType};
use crate::error::Result;

use super::core::{op_err, Value};
use super::op::Op;

impl Value {
    /// Converts values to `dtype` (`lax.convert_element_type`).
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
    /// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
    /// assert_eq!(x.convert(DType::BF16)?.dtype(), DType::BF16);
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn convert(&self, dtype: DType) -> Result<Value> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        Ok(self
            .builder
            .push(
                Op::Convert,
                &[self],
                vec![ArraySpec::new(dtype, self.dims())],
            )?
            .remove(0))
    }

    /// Reinterprets the bits as `dtype` (`lax.bitcast_convert_type`). A
    /// narrower dtype adds a trailing dimension; a wider one consumes it.
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
    /// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
    /// assert_eq!(x.bitcast_convert(DType::U32)?.dtype(), DType::U32);
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn bitcast_convert(&self, dtype: DType) -> Result<Value> {
        let (from, to) = (self.dtype().bit_width(), dtype.bit_width());
        if self.dtype() == DType::Bool || dtype == DType::Bool {
            return Err(op_err(
                "bitcast_convert",
                format!("cannot bitcast {} to {dtype}", self.spec),
            ));
        }
        let mut dims = self.dims().to_vec();
        if from > to {
            dims.push(from / to);
        } else if from < to {
            if dims.last() != Some(&(to / from)) {
                return Err(op_err(
                    "bitcast_convert",
                    format!(
                        "{} to {dtype} needs a last dimension of {}",
                        self.spec,
                        to / from
                    ),
                ));
            }
            dims.pop();
        }
        Ok(self
            .builder
            .push(
                Op::BitcastConvert,
                &[self],
                vec![ArraySpec::new(dtype, dims)],
            )?
            .remove(0))
    }

    /// The same values, hidden from the compiler's constant folding and
    /// algebraic simplification (`stablehlo.optimization_barrier`): what
    /// comes out is computed at run time as written.
    ///
    /// ```
    /// # let b = xlayer::builder::Builder::new();
    /// let x = b.scalar(2f32)?.optimization_barrier()?;
    /// assert!(b.build(&[x])?.to_stablehlo().contains("stablehlo.optimization_barrier"));
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn optimization_barrier(&self) -> Result<Value> {
        Ok(self
            .builder
            .push(Op::OptimizationBarrier, &[self], vec![self.spec.clone()])?
            .remove(0))
    }
}
