//! Pooling over windows of every dimension: [`Pool`] (window, strides,
//! padding, with Keras's defaults) and `max_pool`, `min_pool`, `sum_pool`,
//! `avg_pool`.

use crate::dtype::DType;
use crate::error::Result;

use super::core::Value;
use super::op::BinaryOp;
use super::ops_reduce::Padding;

/// A pooling window over every dimension of the operand (use 1 for batch
/// and features), its strides and its padding.
///
/// Defaults as Keras's pooling layers: the strides are the window (windows
/// that tile the input without overlap) and the padding is `VALID`. (Flax's
/// `nn.max_pool` defaults to strides of 1 instead; [`crate::flax::max_pool`]
/// keeps Flax's defaults.)
///
/// ```
/// use xlayer::{builder::*, ArraySpec};
/// let b = Builder::new();
/// let x = b.parameter(ArraySpec::of::<f32>([1, 4, 6, 3]), "x")?;
/// // 2x2 windows, stride 2, VALID
/// assert_eq!(x.max_pool(&Pool::new(&[1, 2, 2, 1]))?.dims(), &[1, 2, 3, 3]);
/// // overlapping 3x3 windows, stride 1, SAME
/// let p = Pool::new(&[1, 3, 3, 1]).strides(&[1, 1, 1, 1]).padding(Padding::Same);
/// assert_eq!(x.avg_pool(&p)?.dims(), &[1, 4, 6, 3]);
/// # Ok::<(), xlayer::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    /// Window size per dimension.
    pub window: Vec<usize>,
    /// Strides per dimension; `None` for the window itself.
    pub strides: Option<Vec<usize>>,
    /// Padding (`VALID` by default).
    pub padding: Padding,
}

impl Pool {
    /// A window with strides equal to it and `VALID` padding.
    pub fn new(window: &[usize]) -> Pool {
        Pool {
            window: window.to_vec(),
            strides: None,
            padding: Padding::Valid,
        }
    }

    /// Sets the strides (one per dimension).
    pub fn strides(mut self, strides: &[usize]) -> Pool {
        self.strides = Some(strides.to_vec());
        self
    }

    /// Sets the padding.
    pub fn padding(mut self, padding: Padding) -> Pool {
        self.padding = padding;
        self
    }

    /// The strides in effect: those set, or the window.
    pub fn effective_strides(&self) -> &[usize] {
        self.strides.as_deref().unwrap_or(&self.window)
    }
}

/// Largest window (elements) a tiled sum pool is written as slices for:
/// measured for 2x2 windows; 3x3 is 9 slices.
const MAX_TILED_WINDOW: usize = 9;

impl Value {
    /// Max pooling (`lax.reduce_window` with `max`).
    ///
    /// Errors: [`crate::Error::Op`] naming `max_pool` and the operand when
    /// the window or strides do not have one entry per dimension.
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// assert_eq!(x.max_pool(&Pool::new(&[1, 2]).strides(&[1, 1]))?.dims(), &[2, 2]);
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn max_pool(&self, pool: &Pool) -> Result<Value> {
        self.pool_with("max_pool", BinaryOp::Max, pool)
    }

    /// Min pooling.
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// let p = Pool::new(&[2, 2]).strides(&[1, 1]).padding(Padding::Same);
    /// assert_eq!(x.min_pool(&p)?.dims(), &[2, 3]);
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn min_pool(&self, pool: &Pool) -> Result<Value> {
        self.pool_with("min_pool", BinaryOp::Min, pool)
    }

    /// Sum pooling.
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// assert_eq!(x.sum_pool(&Pool::new(&[1, 3]))?.dims(), &[2, 1]);
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn sum_pool(&self, pool: &Pool) -> Result<Value> {
        self.pool_with("sum_pool", BinaryOp::Add, pool)
    }

    /// Average pooling; padded positions count in the divisor (Flax's
    /// `avg_pool` default, `count_include_pad=True`).
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// assert_eq!(x.avg_pool(&Pool::new(&[2, 2]).padding(Padding::Same))?.dims(), &[1, 2]);
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn avg_pool(&self, pool: &Pool) -> Result<Value> {
        let n: f64 = pool.window.iter().map(|&w| w as f64).product();
        self.pool_with("avg_pool", BinaryOp::Add, pool)? / n
    }

    fn pool_with(&self, op: &'static str, reducer: BinaryOp, pool: &Pool) -> Result<Value> {
        let strides = pool.effective_strides();
        if reducer == BinaryOp::Add {
            if let Some(tiled) = self.tiled_sum_pool(&pool.window, strides, &pool.padding)? {
                return Ok(tiled);
            }
        }
        self.pool(op, reducer, &pool.window, strides, &pool.padding)
    }

    /// A sum pool whose windows tile the input (strides = window, no
    /// padding) and hold at most [`MAX_TILED_WINDOW`] elements, as the sum
    /// of one strided slice per window position; `None` when the pool is
    /// not of that form (or not f32/f64: the sum order differs from
    /// `reduce_window`'s, within the reordered-sum tolerance).
    ///
    /// Elementwise ops the CPU compiler fuses with what produced the input:
    /// a 3x3 convolution of one feature (shifted products), relu and this
    /// 2x2 pool over f32[256,28,28,32] took 3.0 ms on the pinned plugin,
    /// against 38 ms with `reduce_window` and 8.2 ms as a reshape + sum
    /// (docs/benchmarks.md, "Convolutions on the pinned plugin"). Max and
    /// min pools keep `reduce_window`, whose gradient picks one element of a
    /// tied window (a sum of slices would not).
    fn tiled_sum_pool(
        &self,
        window: &[usize],
        strides: &[usize],
        padding: &Padding,
    ) -> Result<Option<Value>> {
        let r = self.rank();
        let size = window
            .iter()
            .try_fold(1usize, |a, &w| a.checked_mul(w))
            .unwrap_or(usize::MAX);
        if !matches!(self.dtype(), DType::F32 | DType::F64)
            || window.len() != r
            || strides != window
            || size <= 1
            || size > MAX_TILED_WINDOW
            || padding
                .resolve(self.dims(), window, strides)
                .iter()
                .any(|&p| p != (0, 0))
        {
            return Ok(None);
        }
        let dims = self.dims();
        if dims.iter().zip(window).any(|(&d, &w)| w == 0 || d < w) {
            return Ok(None);
        }
        // Windows per dimension (a VALID pool drops the ragged tail).
        let out: Vec<usize> = dims.iter().zip(window).map(|(&d, &w)| d / w).collect();
        let mut acc: Option<Value> = None;
        for k in 0..size {
            // The position inside the window, last dimension fastest.
            let mut offset = vec![0usize; r];
            let mut rest = k;
            for a in (0..r).rev() {
                offset[a] = rest % window[a];
                rest /= window[a];
            }
            let limit: Vec<usize> = (0..r)
                .map(|a| offset[a] + (out[a] - 1) * window[a] + 1)
                .collect();
            let part = self.slice(&offset, &limit, window)?;
            acc = Some(match acc {
                None => part,
                Some(a) => a.add(&part)?,
            });
        }
        Ok(acc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::{jit, Builder};
    use crate::{ArraySpec, Client, Error};

    /// The defaults are Keras's: strides = window, VALID (a 2x2 window
    /// over 4x5 gives 2x2, dropping the last column).
    #[test]
    fn defaults_tile_the_input_without_padding() -> Result<()> {
        let p = Pool::new(&[2, 2]);
        assert_eq!(p.effective_strides(), &[2, 2]);
        assert_eq!(p.padding, Padding::Valid);
        let client = Client::cpu()?;
        let exe = jit(&client, &[ArraySpec::of::<f32>([4, 5])], |_b, a| {
            let p = Pool::new(&[2, 2]);
            Ok(vec![a[0].max_pool(&p)?, a[0].avg_pool(&p)?])
        })?;
        let data: Vec<f32> = (0..20).map(|i| i as f32).collect();
        let x = client.buffer_from_host(&data, &[4, 5])?;
        let out = exe.execute(&[&x])?;
        assert_eq!(out[0].dims(), &[2, 2]);
        assert_eq!(out[0].to_vec::<f32>()?, vec![6.0, 8.0, 16.0, 18.0]);
        assert_eq!(out[1].to_vec::<f32>()?, vec![3.0, 5.0, 13.0, 15.0]);
        Ok(())
    }

    #[test]
    fn a_window_of_the_wrong_rank_names_the_op() {
        let b = Builder::new();
        let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x").unwrap();
        match x.max_pool(&Pool::new(&[2])) {
            Err(Error::Op { op, message }) => {
                assert_eq!(op, "max_pool");
                assert!(message.contains("f32[2,3]"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let bad = Pool::new(&[1, 2]).strides(&[1]);
        assert!(matches!(
            x.avg_pool(&bad),
            Err(Error::Op { op: "avg_pool", .. })
        ));
    }
}
