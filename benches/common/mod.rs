//! Helpers shared by the benchmarks (`mod common;`). Each bench uses some
//! of them, hence `dead_code` is allowed here.
#![allow(dead_code)]

pub mod interleaved;

use xlayer::builder::{ConvAttrs, ConvDims, Value};

/// A 3×3 NHWC convolution, stride 1, padding 1 ("same"), plus bias `b`:
/// the conv of the benchmarks' Flax-style CNN.
pub fn conv(x: &Value, k: &Value, b: &Value) -> xlayer::Result<Value> {
    let attrs = ConvAttrs::new(ConvDims::nhwc(2)).padding(&[(1, 1), (1, 1)]);
    x.conv_general(k, &attrs)? + b
}
