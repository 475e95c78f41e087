//! Elementwise ops: unary functions, binary arithmetic with numpy-style
//! broadcasting, comparisons, select, clamp, conversions, and `std::ops`.

use std::ops;

use crate::dtype::{ArraySpec, DType};
use crate::error::Result;

use super::core::{op_err, scalar_bytes, Value};
use super::op::{BinaryOp, CompareDir, Op, UnaryOp};

/// The shape two shapes broadcast to under numpy's rules (trailing
/// dimensions aligned; a dimension of 1 stretches).
///
/// ```
/// use xlayer::builder::broadcast_shapes;
/// assert_eq!(broadcast_shapes(&[2, 1, 4], &[3, 1]).unwrap(), vec![2, 3, 4]);
/// assert!(broadcast_shapes(&[2, 3], &[4]).is_err());
/// ```
pub fn broadcast_shapes(a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let da = if i + a.len() >= n {
            a[i + a.len() - n]
        } else {
            1
        };
        let db = if i + b.len() >= n {
            b[i + b.len() - n]
        } else {
            1
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => {
                return Err(op_err(
                    "broadcast",
                    format!("shapes {a:?} and {b:?} are not broadcast-compatible"),
                ))
            }
        };
    }
    Ok(out)
}

/// The dtype two dtypes promote to, following JAX's type promotion lattice
/// (bool < unsigned/signed ints < floats; `bf16` with `f16` gives `f32`;
/// unsigned with signed of at most equal width gives the next wider signed).
pub fn promote_types(a: DType, b: DType) -> DType {
    use DType::*;
    if a == b {
        return a;
    }
    let rank_float = |d: DType| match d {
        F16 | BF16 => 16,
        F32 => 32,
        F64 => 64,
        _ => 0,
    };
    match (a.is_float(), b.is_float()) {
        (true, true) => {
            if (a == F16 && b == BF16) || (a == BF16 && b == F16) {
                F32
            } else if rank_float(a) >= rank_float(b) {
                a
            } else {
                b
            }
        }
        (true, false) => a,
        (false, true) => b,
        _ => {
            if a == Bool {
                return b;
            }
            if b == Bool {
                return a;
            }
            let (wa, wb) = (a.bit_width(), b.bit_width());
            match (a.is_signed_int(), b.is_signed_int()) {
                (true, true) | (false, false) => {
                    if wa >= wb {
                        a
                    } else {
                        b
                    }
                }
                _ => {
                    let (s, u) = if a.is_signed_int() { (a, b) } else { (b, a) };
                    if s.bit_width() > u.bit_width() {
                        s
                    } else {
                        match u.bit_width() {
                            8 => I16,
                            16 => I32,
                            32 => I64,
                            // JAX promotes u64 with a signed int to a float.
                            _ => F32,
                        }
                    }
                }
            }
        }
    }
}

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
    ($($(#[$doc:meta])* $name:ident => $op:ident;)*) => {
        impl Value {
            $(
                $(#[$doc])*
                pub fn $name(&self) -> Result<Value> {
                    self.unary(UnaryOp::$op)
                }
            )*
        }
    };
}

unary_methods! {
    /// `-x` (floats and signed integers).
    neg => Neg;
    /// `|x|` (floats and signed integers).
    abs => Abs;
    /// The sign: -1, 0 or 1 (NaN stays NaN).
    sign => Sign;
    /// e^x.
    ///
    /// ```
    /// # let b = xlayer::builder::Builder::new();
    /// let y = b.scalar(1f32)?.exp()?;
    /// assert_eq!(y.dtype(), xlayer::DType::F32);
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    exp => Exp;
    /// e^x - 1, accurate near 0.
    expm1 => Expm1;
    /// Natural logarithm.
    log => Log;
    /// log(1 + x), accurate near 0.
    log1p => Log1p;
    /// Square root.
    sqrt => Sqrt;
    /// 1 / sqrt(x).
    rsqrt => Rsqrt;
    /// Cube root.
    cbrt => Cbrt;
    /// Hyperbolic tangent.
    tanh => Tanh;
    /// The logistic sigmoid 1 / (1 + e^-x).
    logistic => Logistic;
    /// Sine.
    sin => Sin;
    /// Cosine.
    cos => Cos;
    /// Tangent.
    tan => Tan;
    /// Round toward -inf.
    floor => Floor;
    /// Round toward +inf.
    ceil => Ceil;
    /// Round half away from zero (`lax.round` default).
    round => RoundNearestAfz;
    /// Round half to even (`jnp.round`).
    round_nearest_even => RoundNearestEven;
    /// Logical not for bool, bitwise not for integers.
    not => Not;
    /// The error function.
    erf => Erf;
    /// The inverse error function.
    erf_inv => ErfInv;
    /// Number of set bits (integers).
    population_count => PopCount;
}

impl Value {
    /// Applies a unary elementwise op, checking the dtype.
    pub fn unary(&self, op: UnaryOp) -> Result<Value> {
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
    pub fn scalar_like(&self, value: f64) -> Result<Value> {
        self.builder.constant_bytes(
            scalar_bytes(value, self.dtype()),
            ArraySpec::new(self.dtype(), []),
        )
    }

    fn broadcast_pair(&self, op: &'static str, rhs: &Value) -> Result<(Value, Value)> {
        if self.dtype() != rhs.dtype() {
            return Err(op_err(
                op,
                format!(
                    "dtype mismatch: {} vs {} (convert one with .convert(), see builder::promote_types)",
                    self.spec, rhs.spec
                ),
            ));
        }
        let dims = broadcast_shapes(self.dims(), rhs.dims()).map_err(|_| {
            op_err(
                op,
                format!(
                    "shapes {} and {} are not broadcast-compatible",
                    self.spec, rhs.spec
                ),
            )
        })?;
        Ok((self.broadcast_to(&dims)?, rhs.broadcast_to(&dims)?))
    }

    /// Applies a binary elementwise op with numpy broadcasting; dtypes must match.
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
        Ok(self
            .builder
            .push(Op::Binary(op), &[&a, &b], vec![a.spec.clone()])?
            .remove(0))
    }

    /// `self + rhs`.
    pub fn add(&self, rhs: &Value) -> Result<Value> {
        self.binary(BinaryOp::Add, rhs)
    }
    /// `self - rhs`.
    pub fn sub(&self, rhs: &Value) -> Result<Value> {
        self.binary(BinaryOp::Sub, rhs)
    }
    /// `self * rhs`.
    pub fn mul(&self, rhs: &Value) -> Result<Value> {
        self.binary(BinaryOp::Mul, rhs)
    }
    /// `self / rhs` (integers truncate toward zero).
    pub fn div(&self, rhs: &Value) -> Result<Value> {
        self.binary(BinaryOp::Div, rhs)
    }
    /// Remainder with the sign of `self` (C `fmod`; `lax.rem`).
    pub fn rem(&self, rhs: &Value) -> Result<Value> {
        self.binary(BinaryOp::Rem, rhs)
    }
    /// `self ^ rhs` (floats).
    pub fn pow(&self, rhs: &Value) -> Result<Value> {
        self.binary(BinaryOp::Pow, rhs)
    }
    /// Elementwise maximum.
    pub fn maximum(&self, rhs: &Value) -> Result<Value> {
        self.binary(BinaryOp::Max, rhs)
    }
    /// Elementwise minimum.
    pub fn minimum(&self, rhs: &Value) -> Result<Value> {
        self.binary(BinaryOp::Min, rhs)
    }
    /// `atan2(self, rhs)`.
    pub fn atan2(&self, rhs: &Value) -> Result<Value> {
        self.binary(BinaryOp::Atan2, rhs)
    }
    /// Logical/bitwise and.
    pub fn and(&self, rhs: &Value) -> Result<Value> {
        self.binary(BinaryOp::And, rhs)
    }
    /// Logical/bitwise or.
    pub fn or(&self, rhs: &Value) -> Result<Value> {
        self.binary(BinaryOp::Or, rhs)
    }
    /// Logical/bitwise xor.
    pub fn xor(&self, rhs: &Value) -> Result<Value> {
        self.binary(BinaryOp::Xor, rhs)
    }
    /// `self << rhs` (integers; shifts ≥ the bit width give 0).
    pub fn shift_left(&self, rhs: &Value) -> Result<Value> {
        self.binary(BinaryOp::ShiftLeft, rhs)
    }
    /// Arithmetic `self >> rhs` (sign-extending).
    pub fn shift_right_arithmetic(&self, rhs: &Value) -> Result<Value> {
        self.binary(BinaryOp::ShiftRightArithmetic, rhs)
    }
    /// Logical `self >> rhs` (zero-filling).
    pub fn shift_right_logical(&self, rhs: &Value) -> Result<Value> {
        self.binary(BinaryOp::ShiftRightLogical, rhs)
    }

    /// Elementwise comparison with broadcasting → bool.
    pub fn compare(&self, dir: CompareDir, rhs: &Value) -> Result<Value> {
        let (a, b) = self.broadcast_pair("compare", rhs)?;
        let out = ArraySpec::new(DType::Bool, a.dims());
        Ok(self
            .builder
            .push(Op::Compare(dir), &[&a, &b], vec![out])?
            .remove(0))
    }
    /// `self == rhs`.
    pub fn eq(&self, rhs: &Value) -> Result<Value> {
        self.compare(CompareDir::Eq, rhs)
    }
    /// `self != rhs`.
    pub fn ne(&self, rhs: &Value) -> Result<Value> {
        self.compare(CompareDir::Ne, rhs)
    }
    /// `self < rhs`.
    pub fn lt(&self, rhs: &Value) -> Result<Value> {
        self.compare(CompareDir::Lt, rhs)
    }
    /// `self <= rhs`.
    pub fn le(&self, rhs: &Value) -> Result<Value> {
        self.compare(CompareDir::Le, rhs)
    }
    /// `self > rhs`.
    pub fn gt(&self, rhs: &Value) -> Result<Value> {
        self.compare(CompareDir::Gt, rhs)
    }
    /// `self >= rhs`.
    pub fn ge(&self, rhs: &Value) -> Result<Value> {
        self.compare(CompareDir::Ge, rhs)
    }

    /// `self ? on_true : on_false`, elementwise; `self` is bool; all three broadcast.
    pub fn select(&self, on_true: &Value, on_false: &Value) -> Result<Value> {
        if self.dtype() != DType::Bool {
            return Err(op_err(
                "select",
                format!("predicate must be bool, got {}", self.spec),
            ));
        }
        let (t, f) = on_true.broadcast_pair("select", on_false)?;
        let dims = broadcast_shapes(self.dims(), t.dims()).map_err(|_| {
            op_err(
                "select",
                format!("predicate {} does not broadcast with {}", self.spec, t.spec),
            )
        })?;
        let (p, t, f) = (
            self.broadcast_to(&dims)?,
            t.broadcast_to(&dims)?,
            f.broadcast_to(&dims)?,
        );
        Ok(self
            .builder
            .push(Op::Select, &[&p, &t, &f], vec![t.spec.clone()])?
            .remove(0))
    }

    /// `min(max(self, lo), hi)`; `lo`/`hi` are scalars or of the same shape.
    pub fn clamp(&self, lo: &Value, hi: &Value) -> Result<Value> {
        for (what, v) in [("lower bound", lo), ("upper bound", hi)] {
            if v.dtype() != self.dtype() || (v.rank() != 0 && v.dims() != self.dims()) {
                return Err(op_err(
                    "clamp",
                    format!("{what} {} must be a scalar or match {}", v.spec, self.spec),
                ));
            }
        }
        Ok(self
            .builder
            .push(Op::Clamp, &[lo, self, hi], vec![self.spec.clone()])?
            .remove(0))
    }

    /// Converts values to `dtype` (`lax.convert_element_type`).
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

    /// `x * x`.
    pub fn square(&self) -> Result<Value> {
        self.mul(self)
    }

    /// `1 / x` (floats).
    pub fn recip(&self) -> Result<Value> {
        self.scalar_like(1.0)?.div(self)
    }
}

macro_rules! bin_ops {
    ($($trait:ident, $method:ident, $op:ident;)*) => {$(
        impl ops::$trait<&Value> for &Value {
            type Output = Result<Value>;
            fn $method(self, rhs: &Value) -> Result<Value> {
                self.binary(BinaryOp::$op, rhs)
            }
        }
        impl ops::$trait<Value> for Value {
            type Output = Result<Value>;
            fn $method(self, rhs: Value) -> Result<Value> {
                self.binary(BinaryOp::$op, &rhs)
            }
        }
        impl ops::$trait<&Value> for Value {
            type Output = Result<Value>;
            fn $method(self, rhs: &Value) -> Result<Value> {
                self.binary(BinaryOp::$op, rhs)
            }
        }
        impl ops::$trait<Value> for &Value {
            type Output = Result<Value>;
            fn $method(self, rhs: Value) -> Result<Value> {
                self.binary(BinaryOp::$op, &rhs)
            }
        }
        /// A Rust number acts like a weakly typed Python scalar: it takes the array's dtype.
        impl ops::$trait<f64> for &Value {
            type Output = Result<Value>;
            fn $method(self, rhs: f64) -> Result<Value> {
                self.binary(BinaryOp::$op, &self.scalar_like(rhs)?)
            }
        }
        impl ops::$trait<f64> for Value {
            type Output = Result<Value>;
            fn $method(self, rhs: f64) -> Result<Value> {
                self.binary(BinaryOp::$op, &self.scalar_like(rhs)?)
            }
        }
    )*};
}

bin_ops! {
    Add, add, Add;
    Sub, sub, Sub;
    Mul, mul, Mul;
    Div, div, Div;
}

impl ops::Neg for &Value {
    type Output = Result<Value>;
    fn neg(self) -> Result<Value> {
        self.unary(UnaryOp::Neg)
    }
}

impl ops::Neg for Value {
    type Output = Result<Value>;
    fn neg(self) -> Result<Value> {
        self.unary(UnaryOp::Neg)
    }
}
