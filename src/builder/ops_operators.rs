//! Arithmetic operators on traced values: `+ - * /` and unary `-`.
//!
//! Every operator records one broadcasting op and returns `Result<Value>`
//! (the same op as [`Value::add`], [`Value::sub`], [`Value::mul`],
//! [`Value::div`], [`Value::neg`], with the same typed errors). So that
//! expressions chain without a `?` at every step, an operand may also be a
//! `Result<Value>` (an error on either side passes through unchanged, the
//! first one winning), and a Rust `f64` on either side acts like a weakly
//! typed Python scalar: it takes the array's dtype.
//!
//! | left \ right      | `Value`, `&Value` | `Result<Value>` | `f64` |
//! |-------------------|-------------------|-----------------|-------|
//! | `Value`, `&Value` | yes               | yes             | yes   |
//! | `Result<Value>`   | yes               | no              | no    |
//! | `f64`             | yes               | no              | —     |
//!
//! The three "no"s (and unary `-` on a `Result`) are what Rust's orphan
//! rule forbids: neither `Result` nor `f64` nor the operator traits belong
//! to this crate, so one side must be a [`Value`]. Apply `?` once there:
//! `((&x * &y)? + 1.0)?`, `(&x * &y)? - (&x / &y)?`.
//!
//! ```
//! use xlayer::{builder::*, ArraySpec};
//! let b = Builder::new();
//! let x = b.parameter(ArraySpec::of::<f32>([3]), "x")?;
//! let w = b.parameter(ArraySpec::of::<f32>([3]), "w")?;
//! // (2x·w + x) / w, one `?` at the end
//! let y = ((2.0 * &x * &w + &x) / &w)?;
//! assert_eq!(y.dims(), &[3]);
//! let z = (-&y)?;
//! assert_eq!(z.dims(), &[3]);
//! # Ok::<(), xlayer::Error>(())
//! ```

use std::ops;

use crate::error::Result;

use super::core::Value;
use super::op::{BinaryOp, UnaryOp};

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
        impl ops::$trait<&Value> for f64 {
            type Output = Result<Value>;
            fn $method(self, rhs: &Value) -> Result<Value> {
                rhs.scalar_like(self)?.binary(BinaryOp::$op, rhs)
            }
        }
        impl ops::$trait<Value> for f64 {
            type Output = Result<Value>;
            fn $method(self, rhs: Value) -> Result<Value> {
                rhs.scalar_like(self)?.binary(BinaryOp::$op, &rhs)
            }
        }
        impl ops::$trait<Result<Value>> for &Value {
            type Output = Result<Value>;
            fn $method(self, rhs: Result<Value>) -> Result<Value> {
                self.binary(BinaryOp::$op, &rhs?)
            }
        }
        impl ops::$trait<Result<Value>> for Value {
            type Output = Result<Value>;
            fn $method(self, rhs: Result<Value>) -> Result<Value> {
                self.binary(BinaryOp::$op, &rhs?)
            }
        }
        impl ops::$trait<&Value> for Result<Value> {
            type Output = Result<Value>;
            fn $method(self, rhs: &Value) -> Result<Value> {
                self?.binary(BinaryOp::$op, rhs)
            }
        }
        impl ops::$trait<Value> for Result<Value> {
            type Output = Result<Value>;
            fn $method(self, rhs: Value) -> Result<Value> {
                self?.binary(BinaryOp::$op, &rhs)
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

#[cfg(test)]
mod tests {
    use crate::builder::{jit, Builder};
    use crate::{ArraySpec, Client, DType, Error};

    /// Chains of operators over values, results and scalars compute what
    /// the same ops written one by one compute.
    #[test]
    fn chained_operators_compute_the_expression() -> crate::Result<()> {
        let client = Client::cpu()?;
        let spec = ArraySpec::of::<f32>([3]);
        let exe = jit(&client, &[spec.clone(), spec], |_b, a| {
            let (x, w) = (&a[0], &a[1]);
            Ok(vec![
                ((2.0 * x * w + x) / w)?,
                (x.clone() - (x * w))?,
                (1.0 - (x / 4.0)?)?,
                (-((x - w)? * 3.0)?)?,
            ])
        })?;
        let xs = [1f32, -2.0, 4.0];
        let ws = [2f32, 0.5, -8.0];
        let x = client.buffer_from_host(&xs, &[3])?;
        let w = client.buffer_from_host(&ws, &[3])?;
        let out = exe.execute(&[&x, &w])?;
        let got: Vec<Vec<f32>> = out
            .iter()
            .map(|b| b.to_vec::<f32>())
            .collect::<Result<_, _>>()?;
        let want: [fn(f32, f32) -> f32; 4] = [
            |x, w| (2.0 * x * w + x) / w,
            |x, w| x - x * w,
            |x, _| 1.0 - x / 4.0,
            |x, w| -((x - w) * 3.0),
        ];
        for (g, f) in got.iter().zip(want) {
            for (k, (&x, &w)) in xs.iter().zip(&ws).enumerate() {
                // within 2 ulp: XLA may contract a multiply-add
                let want = f(x, w);
                assert!(
                    (g[k] - want).abs() <= 2.0 * f32::EPSILON * want.abs(),
                    "{g:?}"
                );
            }
        }
        Ok(())
    }

    /// An error on either side of an operator passes through unchanged:
    /// the first error of a chain is the one reported.
    #[test]
    fn errors_pass_through_chains() {
        let b = Builder::new();
        let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x").unwrap();
        let y = b.parameter(ArraySpec::of::<f32>([4]), "y").unwrap();
        let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i").unwrap();
        // the shape mismatch comes first; the dtype mismatch after it is never recorded
        match (&x + &y) * &i {
            Err(Error::ShapeMismatch { op, lhs, rhs }) => {
                assert_eq!(op, "add");
                assert_eq!((lhs.dims, rhs.dims), (vec![2, 3], vec![4]));
            }
            other => panic!("expected ShapeMismatch, got {other:?}"),
        }
        match &x - (&x * &i) {
            Err(Error::DTypeMismatch { op, lhs, rhs }) => {
                assert_eq!(op, "mul");
                assert_eq!((lhs.dtype, rhs.dtype), (DType::F32, DType::I32));
            }
            other => panic!("expected DTypeMismatch, got {other:?}"),
        }
        // a scalar on the left takes the array's dtype; booleans refuse arithmetic
        let t = b.parameter(ArraySpec::of::<bool>([2]), "t").unwrap();
        assert!(matches!(2.0 * &t, Err(Error::Op { op: "mul", .. })));
        assert!(matches!(-&t, Err(Error::Op { op: "neg", .. })));
        let s = (1.0 - &i).unwrap();
        assert_eq!(s.dtype(), DType::I32);
    }
}
