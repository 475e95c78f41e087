//! Axis numbers as NumPy takes them: from the front (`0`, `1`, ...) or,
//! negative, from the end (`-1` is the last axis). Every op that takes an
//! axis or a list of axes (reductions, `softmax`, `concatenate`,
//! `transpose`, `squeeze`, `expand_dims`, `cumsum`, `argmax`, `take`,
//! `sort`, ...) accepts any [`Axis`] / [`Axes`] and normalizes it here, once.
//!
//! ```
//! use xlayer::{builder::*, ArraySpec, Error};
//! let b = Builder::new();
//! let x = b.parameter(ArraySpec::of::<f32>([2, 3, 4]), "x")?;
//! assert_eq!(nn::softmax(&x, -1)?.dims(), &[2, 3, 4]);
//! assert_eq!(x.sum(&[0, -1], false)?.dims(), &[3]);
//! assert_eq!(x.transpose(&[-1, 0, 1])?.dims(), &[4, 2, 3]);
//! assert_eq!(x.expand_dims(-1)?.dims(), &[2, 3, 4, 1]);
//! assert_eq!(normalize_axis("mine", -3, x.rank())?, 0);
//! match x.sum(&[3], false) {
//!     Err(Error::AxisOutOfRange { op, axis: 3, rank: 3, .. }) => assert_eq!(op, "sum"),
//!     other => panic!("{other:?}"),
//! }
//! # Ok::<(), xlayer::Error>(())
//! ```

use crate::dtype::ArraySpec;
use crate::error::{Error, Result};

mod sealed {
    pub trait Sealed {}
}

/// One axis number: unsigned from the front, signed negative from the end.
///
/// Implemented for `usize`, `u32`, `i32`, `i64` and `isize`; an integer
/// literal (`-1`, `2`) is an `i32`.
pub trait Axis: Copy + sealed::Sealed {
    /// The number as given, widened (`usize` past `i128::MAX` cannot occur).
    #[doc(hidden)]
    fn as_i128(self) -> i128;
}

macro_rules! axis_ints {
    ($($t:ty),*) => {$(
        impl sealed::Sealed for $t {}
        impl Axis for $t {
            fn as_i128(self) -> i128 {
                self as i128
            }
        }
    )*};
}
axis_ints!(usize, u32, i32, i64, isize);

/// A list of axes: a borrowed slice, array or vector of [`Axis`] numbers
/// (`&[0, -1]`, `&axes_vec`, `axes_slice`).
pub trait Axes {
    /// The numbers as given, widened.
    #[doc(hidden)]
    fn as_i128s(&self) -> Vec<i128>;
}

impl<A: Axis> Axes for &[A] {
    fn as_i128s(&self) -> Vec<i128> {
        self.iter().map(|a| a.as_i128()).collect()
    }
}

impl<A: Axis, const N: usize> Axes for &[A; N] {
    fn as_i128s(&self) -> Vec<i128> {
        self.iter().map(|a| a.as_i128()).collect()
    }
}

impl<A: Axis> Axes for &Vec<A> {
    fn as_i128s(&self) -> Vec<i128> {
        self.iter().map(|a| a.as_i128()).collect()
    }
}

fn resolve(
    op: &'static str,
    axis: i128,
    rank: usize,
    operand: Option<&ArraySpec>,
) -> Result<usize> {
    let r = rank as i128;
    let a = if axis < 0 { axis + r } else { axis };
    if (0..r).contains(&a) {
        return Ok(a as usize);
    }
    Err(Error::AxisOutOfRange {
        op,
        axis: axis.clamp(i64::MIN as i128, i64::MAX as i128) as i64,
        rank,
        input: operand.cloned(),
    })
}

/// `axis` as an index below `rank` (`-1` is `rank - 1`).
///
/// Errors: [`Error::AxisOutOfRange`] naming `op`, the axis as given and
/// the rank, when `axis` is not in `-rank..rank`.
///
/// ```
/// use xlayer::builder::normalize_axis;
/// assert_eq!(normalize_axis("softmax", -1, 3)?, 2);
/// assert_eq!(normalize_axis("softmax", 1usize, 3)?, 1);
/// assert!(normalize_axis("softmax", -4, 3).is_err());
/// # Ok::<(), xlayer::Error>(())
/// ```
pub fn normalize_axis(op: &'static str, axis: impl Axis, rank: usize) -> Result<usize> {
    resolve(op, axis.as_i128(), rank, None)
}

/// [`normalize_axis`] for an axis of `operand` (the error also names the
/// operand's type); `extra` widens the range for ops that address a new
/// axis (`expand_dims`: `rank + 1` places).
pub(crate) fn axis_of(
    op: &'static str,
    axis: impl Axis,
    operand: &ArraySpec,
    extra: usize,
) -> Result<usize> {
    resolve(op, axis.as_i128(), operand.rank() + extra, Some(operand))
}

/// Every axis of `axes` normalized against `operand`'s rank, in the order
/// given.
///
/// Errors: [`Error::AxisOutOfRange`] for the first axis out of range;
/// [`Error::DuplicateDimension`] when two name the same axis (`1` and `-2`
/// of a rank-3 operand).
pub(crate) fn axes_of(
    op: &'static str,
    axes: impl Axes,
    operand: &ArraySpec,
) -> Result<Vec<usize>> {
    let given = axes.as_i128s();
    let mut out = Vec::with_capacity(given.len());
    for a in given {
        out.push(resolve(op, a, operand.rank(), Some(operand))?);
    }
    super::core::check_dim_list(op, "axes", "operand", &out, operand.rank(), operand)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negative_axes_count_from_the_end() {
        let x = ArraySpec::of::<f32>([2, 3, 4]);
        assert_eq!(axes_of("sum", &[-1, 0], &x).unwrap(), vec![2, 0]);
        assert_eq!(axes_of("sum", &vec![1usize], &x).unwrap(), vec![1]);
        assert_eq!(axis_of("expand_dims", -1, &x, 1).unwrap(), 3);
        assert_eq!(axis_of("expand_dims", -4, &x, 1).unwrap(), 0);
        assert_eq!(normalize_axis("f", i64::MIN, 3).ok(), None);
    }

    #[test]
    fn out_of_range_and_duplicate_axes_are_typed_errors() {
        let x = ArraySpec::of::<f32>([2, 3, 4]);
        match axes_of("mean", &[0, -4], &x) {
            Err(Error::AxisOutOfRange {
                op,
                axis,
                rank,
                input,
            }) => {
                assert_eq!((op, axis, rank), ("mean", -4, 3));
                assert_eq!(input, Some(x.clone()));
            }
            other => panic!("{other:?}"),
        }
        match normalize_axis("softmax", usize::MAX, 2) {
            Err(Error::AxisOutOfRange { axis, rank: 2, .. }) => assert_eq!(axis, i64::MAX),
            other => panic!("{other:?}"),
        }
        match axes_of("squeeze", &[1, -2], &x) {
            Err(Error::DuplicateDimension { op, dim: 1, .. }) => assert_eq!(op, "squeeze"),
            other => panic!("{other:?}"),
        }
    }

    /// Every op that takes axes computes with a negative axis exactly
    /// what it computes with the same axis counted from the front.
    #[test]
    fn ops_take_negative_axes() -> crate::Result<()> {
        use crate::builder::{jit, nn, Value};
        use crate::{Client, DType};
        let client = Client::cpu()?;
        let exe = jit(&client, &[ArraySpec::of::<f32>([2, 1, 3])], |b, a| {
            let x = &a[0];
            let idx = b.constant(&[2i32, 0], &[2])?;
            let pairs = [
                (nn::softmax(x, -1)?, nn::softmax(x, 2)?),
                (nn::log_softmax(x, -3)?, nn::log_softmax(x, 0)?),
                (
                    nn::logsumexp(x, -1, false)?,
                    nn::logsumexp(x, 2usize, false)?,
                ),
                (nn::standardize(x, -1, 1e-5)?, nn::standardize(x, 2, 1e-5)?),
                (x.sum(&[-1, -3], true)?, x.sum(&[2, 0], true)?),
                (x.mean(&vec![-1], false)?, x.mean(&vec![2], false)?),
                (x.max(&[-2], false)?, x.max(&[1], false)?),
                (
                    x.argmax(-1, DType::I32)?.convert(DType::F32)?,
                    x.argmax(2, DType::I32)?.convert(DType::F32)?,
                ),
                (x.cumsum(-1, false)?, x.cumsum(2, false)?),
                (
                    Value::concatenate(&[x.clone(), x.clone()], -2)?,
                    Value::concatenate(&[x.clone(), x.clone()], 1)?,
                ),
                (x.transpose(&[-1, 0, -2])?, x.transpose(&[2, 0, 1])?),
                (x.squeeze(&[-2])?, x.squeeze(&[1])?),
                (x.expand_dims(-1)?, x.expand_dims(3)?),
                (x.take(&idx, -1)?, x.take(&idx, 2)?),
                (x.sort(-1, true)?, x.sort(2, true)?),
                (x.reverse(&[-1])?, x.reverse(&[2])?),
                (x.slice_axis(-1, 1, 3)?, x.slice_axis(2, 1, 3)?),
            ];
            let mut out = Vec::new();
            for (neg, pos) in pairs {
                assert_eq!(neg.spec(), pos.spec());
                out.push(neg);
                out.push(pos);
            }
            Ok(out)
        })?;
        let x = client.buffer_from_host(&[0.5f32, -1.0, 2.0, 3.0, 0.25, -4.0], &[2, 1, 3])?;
        let out = exe.execute(&[&x])?;
        assert_eq!(out.len(), 34);
        for (k, pair) in out.chunks(2).enumerate() {
            assert_eq!(pair[0].to_bytes()?, pair[1].to_bytes()?, "pair {k}");
        }
        // and the rank-3 softmax really normalized the last axis
        let sm = out[0].to_vec::<f32>()?;
        assert!((sm[0] + sm[1] + sm[2] - 1.0).abs() < 1e-6);
        Ok(())
    }

    #[test]
    fn ops_name_themselves_in_axis_errors() {
        use crate::builder::{nn, Builder, Value};
        let b = Builder::new();
        let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x").unwrap();
        let cases = [
            ("softmax", nn::softmax(&x, -3).unwrap_err()),
            ("argmax", x.argmax(2, crate::DType::I32).unwrap_err()),
            ("cumsum", x.cumsum(-3, false).unwrap_err()),
            (
                "concatenate",
                Value::concatenate(std::slice::from_ref(&x), 5).unwrap_err(),
            ),
            ("expand_dims", x.expand_dims(-4).unwrap_err()),
            ("transpose", x.transpose(&[0, -3]).unwrap_err()),
        ];
        for (op, e) in cases {
            match &e {
                Error::AxisOutOfRange { op: got, input, .. } => {
                    assert_eq!(*got, op);
                    assert_eq!(input.as_ref().map(|i| i.dims.clone()), Some(vec![2, 3]));
                    assert!(e.to_string().contains(op), "{e}");
                }
                other => panic!("{op}: {other:?}"),
            }
        }
    }
}
