//! numpy's broadcasting and JAX's type promotion: the shape and the dtype
//! two operands of an elementwise op meet at.

use crate::dtype::DType;
use crate::error::Result;

use super::core::op_err;

/// The shape two shapes broadcast to under numpy's rules (trailing
/// dimensions aligned; a dimension of 1 stretches).
///
/// ```
/// use xlayer::builder::broadcast_shapes;
/// assert_eq!(broadcast_shapes(&[2, 1, 4], &[3, 1]).unwrap(), vec![2, 3, 4]);
/// assert!(broadcast_shapes(&[2, 3], &[4]).is_err());
/// ```
pub fn broadcast_shapes(a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    broadcast_dims(a, b).ok_or_else(|| {
        op_err(
            "broadcast",
            format!("shapes {a:?} and {b:?} are not broadcast-compatible"),
        )
    })
}

/// [`broadcast_shapes`], `None` when the shapes do not broadcast.
pub(super) fn broadcast_dims(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
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
            _ => return None,
        };
    }
    Some(out)
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
