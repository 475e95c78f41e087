//! Comparisons (`compare`, `eq` … `ge`, bool results) and the elementwise
//! choices `select` and `clamp`, with numpy-style broadcasting.

use crate::dtype::{ArraySpec, DType};
use crate::error::Result;

use super::core::{op_err, Value};
use super::op::{CompareDir, Op};
use super::promotion::broadcast_shapes;

impl Value {
    /// Elementwise comparison with broadcasting → bool.
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
    /// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
    /// let z = x.compare(CompareDir::Le, &y)?;
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn compare(&self, dir: CompareDir, rhs: &Value) -> Result<Value> {
        let (a, b) = self.broadcast_pair("compare", rhs)?;
        let out = ArraySpec::new(DType::Bool, a.dims());
        Ok(self
            .builder
            .push(Op::Compare(dir), &[&a, &b], vec![out])?
            .remove(0))
    }
}

/// The comparison shorthands `x.eq(&y)` … `x.ge(&y)`: [`Value::compare`]
/// with one direction each, bool results.
macro_rules! compare_methods {
    ($($sym:literal $name:ident => $dir:ident;)*) => {
        impl Value {
            $(
                #[doc = concat!("`self ", $sym, " rhs`, elementwise with broadcasting → bool.")]
                ///
                #[doc = concat!(
                    "```\n# let b = xlayer::builder::Builder::new();\n",
                    "# let x = b.parameter(xlayer::ArraySpec::of::<f32>([2, 3]), \"x\")?;\n",
                    "# let y = b.parameter(xlayer::ArraySpec::of::<f32>([3]), \"y\")?;\n",
                    "let z = x.", stringify!($name), "(&y)?;\n",
                    "assert_eq!((z.dtype(), z.dims()), (xlayer::DType::Bool, &[2, 3][..]));\n",
                    "# Ok::<(), xlayer::Error>(())\n```"
                )]
                pub fn $name(&self, rhs: &Value) -> Result<Value> {
                    self.compare(CompareDir::$dir, rhs)
                }
            )*
        }
    };
}

compare_methods! {
    "==" eq => Eq;
    "!=" ne => Ne;
    "<" lt => Lt;
    "<=" le => Le;
    ">" gt => Gt;
    ">=" ge => Ge;
}

impl Value {
    /// `self ? on_true : on_false`, elementwise; `self` is bool; all three broadcast.
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
    /// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
    /// let z = x.gt(&y)?.select(&x, &y)?;
    /// # Ok::<(), xlayer::Error>(())
    /// ```
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
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
    /// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
    /// let z = x.clamp(&x.scalar_like(-1.0)?, &x.scalar_like(1.0)?)?;
    /// # Ok::<(), xlayer::Error>(())
    /// ```
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
}
