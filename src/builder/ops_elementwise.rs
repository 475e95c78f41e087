//! Elementwise ops: unary functions and binary arithmetic with numpy-style
//! broadcasting (the shape and dtype rules are in `promotion.rs`);
//! comparisons, `select` and `clamp` are in `ops_compare.rs`, conversions in
//! `ops_convert.rs`, the `std::ops` operators in `ops_operators.rs`.

use crate::dtype::{ArraySpec, DType};
use crate::error::{Error, Result};

use super::core::{op_err, scalar_bytes, Value};
use super::op::{BinaryOp, Op, UnaryOp};
use super::promotion::{broadcast_dims, broadcast_shapes};

fn unary_dtype_ok(op: UnaryOp, d: DType) -> bool {
    use UnaryOp::*;
    match op {
        Neg | Sign => d.is_float() || d.is_signed_int(),
        Abs => d.is_float() || d.is_signed_int(),
        Not => d.is_int() || d == DType::Bool,
        PopCount => d.is_int(),
        _ => d.is_float(),
    }
}

fn binary_dtype_ok(op: BinaryOp, d: DType) -> bool {
    use BinaryOp::*;
    match op {
        Add | Sub | Mul | Div | Rem | Max | Min => d != DType::Bool || matches!(op, Max | Min),
        Pow | Atan2 => d.is_float(),
        And | Or | Xor => d.is_int() || d == DType::Bool,
        ShiftLeft | ShiftRightArithmetic | ShiftRightLogical => d.is_int(),
    }
}

macro_rules! unary_methods {
    ($($(#[$doc:meta])* $name:ident => $op:ident, $ty:ty;)*) => {
        impl Value {
            $(
                $(#[$doc])*
                ///
                #[doc = concat!(
                    "```\n# let b = xlayer::builder::Builder::new();\n",
                    "# let x = b.parameter(xlayer::ArraySpec::of::<", stringify!($ty), ">([2, 3]), \"x\")?;\n",
                    "let y = x.", stringify!($name), "()?;\n",
                    "assert_eq!(y.dims(), &[2, 3]);\n",
                    "# Ok::<(), xlayer::Error>(())\n```"
                )]
                pub fn $name(&self) -> Result<Value> {
                    self.unary(UnaryOp::$op)
                }
            )*
        }
    };
}

unary_methods! {
    /// `-x` (floats and signed integers).
    neg => Neg, f32;
    /// `|x|` (floats and signed integers).
    abs => Abs, i32;
    /// The sign: -1, 0 or 1 (NaN stays NaN).
    sign => Sign, f32;
    /// e^x.
    exp => Exp, f32;
    /// e^x - 1, accurate near 0.
    expm1 => Expm1, f32;
    /// Natural logarithm.
    log => Log, f32;
    /// log(1 + x), accurate near 0.
    log1p => Log1p, f32;
    /// Square root.
    sqrt => Sqrt, f32;
    /// 1 / sqrt(x).
    rsqrt => Rsqrt, f32;
    /// Cube root.
    cbrt => Cbrt, f32;
    /// Hyperbolic tangent.
    tanh => Tanh, f32;
    /// The logistic sigmoid 1 / (1 + e^-x).
    logistic => Logistic, f32;
    /// Sine.
    sin => Sin, f32;
    /// Cosine.
    cos => Cos, f32;
    /// Tangent.
    tan => Tan, f32;
    /// Round toward -inf.
    floor => Floor, f32;
    /// Round toward +inf.
    ceil => Ceil, f32;
    /// Round half away from zero (`lax.round` default).
    round => RoundNearestAfz, f32;
    /// Round half to even (`jnp.round`).
    round_nearest_even => RoundNearestEven, f32;
    /// Logical not for bool, bitwise not for integers.
    not => Not, i32;
    /// The error function.
    erf => Erf, f32;
    /// The inverse error function.
    erf_inv => ErfInv, f32;
    /// The complementary error function `1 - erf(x)`, accurate for large x.
    erfc => Erfc, f32;
    /// Number of set bits (integers).
    population_count => PopCount, u32;
}

impl Value {
    /// Applies a unary elementwise op, checking the dtype.
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
    /// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
    /// assert_eq!(x.unary(UnaryOp::Exp)?.dims(), &[2, 3]);
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn unary(&self, op: UnaryOp) -> Result<Value> {
        if op == UnaryOp::IsFinite {
            // its output is bool, not the operand's type
            return self.is_finite();
        }
        if !unary_dtype_ok(op, self.dtype()) {
            return Err(op_err(
                op.name(),
                format!(
                    "not defined for dtype {} (operand {})",
                    self.dtype(),
                    self.spec
                ),
            ));
        }
        Ok(self
            .builder
            .push(Op::Unary(op), &[self], vec![self.spec.clone()])?
            .remove(0))
    }

    /// Whether each element is finite (not inf or NaN); floats only.
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
    /// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
    /// assert_eq!(x.is_finite()?.dtype(), DType::Bool);
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn is_finite(&self) -> Result<Value> {
        if !self.dtype().is_float() {
            return Err(op_err(
                "is_finite",
                format!("needs a float operand, got {}", self.spec),
            ));
        }
        let out = ArraySpec::new(DType::Bool, self.dims());
        Ok(self
            .builder
            .push(Op::Unary(UnaryOp::IsFinite), &[self], vec![out])?
            .remove(0))
    }

    /// Broadcasts to `dims` under numpy's rules (trailing dimensions aligned).
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
    /// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
    /// assert_eq!(x.broadcast_to(&[4, 2, 3])?.dims(), &[4, 2, 3]);
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn broadcast_to(&self, dims: &[usize]) -> Result<Value> {
        if self.dims() == dims {
            return Ok(self.clone());
        }
        let target = broadcast_shapes(self.dims(), dims)?;
        if target != dims {
            return Err(op_err(
                "broadcast_to",
                format!("cannot broadcast {} to {dims:?}", self.spec),
            ));
        }
        let offset = dims.len() - self.rank();
        // Drop size-1 dimensions that stretch, then broadcast_in_dim.
        let keep: Vec<usize> = (0..self.rank())
            .filter(|&i| self.dims()[i] == dims[i + offset])
            .collect();
        let squeezed = if keep.len() == self.rank() {
            self.clone()
        } else {
            self.reshape(&keep.iter().map(|&i| self.dims()[i]).collect::<Vec<_>>())?
        };
        squeezed.broadcast_in_dim(dims, &keep.iter().map(|&i| i + offset).collect::<Vec<_>>())
    }

    /// A scalar constant of this value's dtype (like a weakly typed Python scalar in JAX).
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
    /// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
    /// let two = x.scalar_like(2.0)?; // f32[]
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn scalar_like(&self, value: f64) -> Result<Value> {
        self.builder.constant_bytes(
            scalar_bytes(value, self.dtype()),
            ArraySpec::new(self.dtype(), []),
        )
    }

    /// Both operands broadcast to their common shape.
    ///
    /// Errors: [`Error::DTypeMismatch`] or [`Error::ShapeMismatch`] naming
    /// `op` and both operands' types.
    pub(super) fn broadcast_pair(&self, op: &'static str, rhs: &Value) -> Result<(Value, Value)> {
        if self.dtype() != rhs.dtype() {
            return Err(Error::DTypeMismatch {
                op,
                lhs: self.spec.clone(),
                rhs: rhs.spec.clone(),
            });
        }
        let dims = broadcast_dims(self.dims(), rhs.dims()).ok_or_else(|| Error::ShapeMismatch {
            op,
            lhs: self.spec.clone(),
            rhs: rhs.spec.clone(),
        })?;
        Ok((self.broadcast_to(&dims)?, rhs.broadcast_to(&dims)?))
    }

    /// Applies a binary elementwise op with numpy broadcasting; dtypes must match.
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
    /// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
    /// let z = x.binary(BinaryOp::Add, &y)?;
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn binary(&self, op: BinaryOp, rhs: &Value) -> Result<Value> {
        let (a, b) = self.broadcast_pair(op.name(), rhs)?;
        if !binary_dtype_ok(op, a.dtype()) {
            return Err(op_err(
                op.name(),
                format!(
                    "not defined for dtype {} (operands {} and {})",
                    a.dtype(),
                    self.spec,
                    rhs.spec
                ),
            ));
        }
        // XLA's constant folding evaluates an integer division by a constant
        // zero with the host's division instruction, which kills the process
        // (SIGFPE). Hiding integer divisors behind an optimization barrier
        // keeps them out of constant folding; at run time XLA defines x / 0
        // and x % 0 without trapping.
        let b = if matches!(op, BinaryOp::Div | BinaryOp::Rem) && a.dtype().is_int() {
            b.optimization_barrier()?
        } else {
            b
        };
        Ok(self
            .builder
            .push(Op::Binary(op), &[&a, &b], vec![a.spec.clone()])?
            .remove(0))
    }

    /// `self + rhs`.
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
    /// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
    /// let z = x.add(&y)?; // or (&x + &y)?
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn add(&self, rhs: &Value) -> Result<Value> {
        self.binary(BinaryOp::Add, rhs)
    }
    /// `self - rhs`.
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
    /// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
    /// let z = x.sub(&y)?; // or (&x - &y)?
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn sub(&self, rhs: &Value) -> Result<Value> {
        self.binary(BinaryOp::Sub, rhs)
    }
    /// `self * rhs`.
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
    /// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
    /// let z = x.mul(&y)?; // or (&x * 2.0)?
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn mul(&self, rhs: &Value) -> Result<Value> {
        self.binary(BinaryOp::Mul, rhs)
    }
    /// `self / rhs` (integers truncate toward zero).
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
    /// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
    /// let z = x.div(&y)?; // or (&x / &y)?
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn div(&self, rhs: &Value) -> Result<Value> {
        self.binary(BinaryOp::Div, rhs)
    }
    /// Remainder with the sign of `self` (C `fmod`; `lax.rem`).
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
    /// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
    /// let z = i.rem(&i.scalar_like(3.0)?)?;
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn rem(&self, rhs: &Value) -> Result<Value> {
        self.binary(BinaryOp::Rem, rhs)
    }
    /// `self ^ rhs` (floats).
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
    /// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
    /// let z = x.pow(&y)?;
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn pow(&self, rhs: &Value) -> Result<Value> {
        self.binary(BinaryOp::Pow, rhs)
    }
    /// Elementwise maximum.
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
    /// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
    /// let z = x.maximum(&y)?;
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn maximum(&self, rhs: &Value) -> Result<Value> {
        self.binary(BinaryOp::Max, rhs)
    }
    /// Elementwise minimum.
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
    /// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
    /// let z = x.minimum(&y)?;
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn minimum(&self, rhs: &Value) -> Result<Value> {
        self.binary(BinaryOp::Min, rhs)
    }
    /// `atan2(self, rhs)`.
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
    /// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
    /// let z = x.atan2(&y)?;
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn atan2(&self, rhs: &Value) -> Result<Value> {
        self.binary(BinaryOp::Atan2, rhs)
    }
    /// Logical/bitwise and.
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
    /// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
    /// let z = i.and(&i.scalar_like(1.0)?)?;
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn and(&self, rhs: &Value) -> Result<Value> {
        self.binary(BinaryOp::And, rhs)
    }
    /// Logical/bitwise or.
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
    /// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
    /// let z = x.gt(&y)?.or(&x.lt(&y)?)?;
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn or(&self, rhs: &Value) -> Result<Value> {
        self.binary(BinaryOp::Or, rhs)
    }
    /// Logical/bitwise xor.
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
    /// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
    /// let z = i.xor(&i)?;
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn xor(&self, rhs: &Value) -> Result<Value> {
        self.binary(BinaryOp::Xor, rhs)
    }
    /// `self << rhs` (integers; shifts ≥ the bit width give 0).
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
    /// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
    /// let z = i.shift_left(&i.scalar_like(2.0)?)?;
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn shift_left(&self, rhs: &Value) -> Result<Value> {
        self.binary(BinaryOp::ShiftLeft, rhs)
    }
    /// Arithmetic `self >> rhs` (sign-extending).
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
    /// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
    /// let z = i.shift_right_arithmetic(&i.scalar_like(1.0)?)?;
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn shift_right_arithmetic(&self, rhs: &Value) -> Result<Value> {
        self.binary(BinaryOp::ShiftRightArithmetic, rhs)
    }
    /// Logical `self >> rhs` (zero-filling).
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
    /// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
    /// let z = i.shift_right_logical(&i.scalar_like(1.0)?)?;
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn shift_right_logical(&self, rhs: &Value) -> Result<Value> {
        self.binary(BinaryOp::ShiftRightLogical, rhs)
    }

    /// `x * x`.
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
    /// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
    /// let z = x.square()?;
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn square(&self) -> Result<Value> {
        self.mul(self)
    }

    /// `1 / x` (floats).
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
    /// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
    /// let z = x.recip()?;
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn recip(&self) -> Result<Value> {
        self.scalar_like(1.0)?.div(self)
    }
}

#[cfg(test)]
mod broadcast_error_tests {
    use crate::builder::Builder;
    use crate::{ArraySpec, Error};

    /// Broadcasting errors keep their structured cause: the op and both
    /// operands' types.
    #[test]
    fn mismatches_name_op_and_both_operands() {
        let b = Builder::new();
        let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x").unwrap();
        let y = b.parameter(ArraySpec::of::<f32>([4]), "y").unwrap();
        let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i").unwrap();
        match &x + &y {
            Err(Error::ShapeMismatch { op, lhs, rhs }) => {
                assert_eq!(op, "add");
                assert_eq!((lhs.dims, rhs.dims), (vec![2, 3], vec![4]));
            }
            other => panic!("expected ShapeMismatch, got {other:?}"),
        }
        match x.mul(&i) {
            Err(e @ Error::DTypeMismatch { .. }) => {
                let Error::DTypeMismatch { op, lhs, rhs } = &e else {
                    unreachable!()
                };
                assert_eq!(*op, "mul");
                assert_eq!(
                    (lhs.dtype, rhs.dtype),
                    (crate::DType::F32, crate::DType::I32)
                );
                assert!(e.to_string().contains("f32[2,3]"), "{e}");
            }
            other => panic!("expected DTypeMismatch, got {other:?}"),
        }
    }
}
