//! Differentiation rules of the elementwise ops: unary and binary
//! arithmetic (JAX's JVP/transpose rules, written as cotangent rules),
//! `select`, `clamp` and `convert`.

use crate::error::Result;

use super::super::core::Value;
use super::super::op::{BinaryOp, UnaryOp};
use super::{At, Grads};

/// `Op::Unary`: the cotangent of the operand, or none for ops that are
/// piecewise constant or not on floats.
pub(super) fn unary(at: &At, op: UnaryOp) -> Result<Grads> {
    let g = unary_rule(op, &at.x(0), &at.ans(0), &at.ct0()?)?;
    Ok(g.map(|g| (at.id(0), g)).into_iter().collect())
}

/// `Op::Binary`: the cotangents of the operands that need one.
pub(super) fn binary(at: &At, op: BinaryOp) -> Result<Grads> {
    let (gx, gy) = binary_rule(op, &at.x(0), &at.x(1), &at.ans(0), &at.ct0()?, at.needs)?;
    let mut out = Vec::new();
    out.extend(gx.map(|g| (at.id(0), g)));
    out.extend(gy.map(|g| (at.id(1), g)));
    Ok(out)
}

/// `Op::Select`: the cotangent goes to the branch the predicate chose.
pub(super) fn select(at: &At) -> Result<Grads> {
    let (p, g) = (at.x(0), at.ct0()?);
    let z = at.cx.zeros(&g.spec)?;
    let mut out = Vec::new();
    if at.needs[1] {
        out.push((at.id(1), p.select(&g, &z)?));
    }
    if at.needs[2] {
        out.push((at.id(2), p.select(&z, &g)?));
    }
    Ok(out)
}

/// `Op::Clamp`: the cotangent goes to whichever of `lo`, `x`, `hi` was
/// chosen; a scalar bound gets the sum.
pub(super) fn clamp(at: &At) -> Result<Grads> {
    let (lo, v, hi, g) = (at.x(0), at.x(1), at.x(2), at.ct0()?);
    let z = at.cx.zeros(&g.spec)?;
    let fit = |t: Value, like: &Value| -> Result<Value> {
        if like.rank() == 0 && t.rank() > 0 {
            t.sum(&(0..t.rank()).collect::<Vec<_>>(), false)
        } else {
            Ok(t)
        }
    };
    let mut out = Vec::new();
    if at.needs[0] {
        let m = lo.gt(&v)?.and(&lo.lt(&hi)?)?;
        out.push((at.id(0), fit(m.select(&g, &z)?, &lo)?));
    }
    if at.needs[1] {
        let m = v.gt(&lo)?.and(&v.lt(&hi)?)?;
        out.push((at.id(1), m.select(&g, &z)?));
    }
    if at.needs[2] {
        let m = hi.lt(&v)?;
        out.push((at.id(2), fit(m.select(&g, &z)?, &hi)?));
    }
    Ok(out)
}

/// `Op::Convert`: the cotangent converted back, for a float operand only.
pub(super) fn convert(at: &At) -> Result<Grads> {
    let a = at.x(0);
    if !a.dtype().is_float() {
        return Ok(Vec::new());
    }
    Ok(vec![(at.id(0), at.ct0()?.convert(a.dtype())?)])
}

fn unary_rule(op: UnaryOp, x: &Value, ans: &Value, g: &Value) -> Result<Option<Value>> {
    use UnaryOp::*;
    let c = |v: f64| x.scalar_like(v);
    let r = match op {
        Neg => g.neg()?,
        Abs => x.ge(&c(0.0)?)?.select(g, &g.neg()?)?,
        // Piecewise constant: a zero cotangent (as JAX's symbolic zero, even for inf/NaN g).
        Sign | Floor | Ceil | RoundNearestAfz | RoundNearestEven => return Ok(None),
        Exp => g.mul(ans)?,
        Expm1 => g.mul(&ans.add(&c(1.0)?)?)?,
        Log => g.div(x)?,
        Log1p => g.div(&x.add(&c(1.0)?)?)?,
        Sqrt => g.mul(&c(0.5)?.div(ans)?)?,
        Rsqrt => g.mul(&c(-0.5)?.mul(&ans.div(x)?)?)?,
        Cbrt => g.mul(&c(1.0 / 3.0)?.mul(&ans.mul(ans)?.recip()?)?)?,
        Tanh => g.add(&g.mul(ans)?)?.mul(&c(1.0)?.sub(ans)?)?,
        Logistic => g.mul(&ans.mul(&c(1.0)?.sub(ans)?)?)?,
        Sin => g.mul(&x.cos()?)?,
        Cos => g.mul(&x.sin()?.neg()?)?,
        Tan => g.mul(&c(1.0)?.add(&ans.square()?)?)?,
        Erf => c(2.0 / std::f64::consts::PI.sqrt())?.mul(&g.mul(&x.square()?.neg()?.exp()?)?)?,
        Erfc => c(-2.0 / std::f64::consts::PI.sqrt())?.mul(&g.mul(&x.square()?.neg()?.exp()?)?)?,
        ErfInv => c(std::f64::consts::PI.sqrt() / 2.0)?.mul(&g.mul(&ans.square()?.exp()?)?)?,
        IsFinite | Not | PopCount => return Ok(None),
    };
    Ok(Some(r))
}

/// JAX's `_balanced_eq(x, z, y)`: 1 where x == z, halved where also y == z.
fn balanced_eq(x: &Value, z: &Value, y: &Value) -> Result<Value> {
    let one = z.scalar_like(1.0)?;
    let zero = z.scalar_like(0.0)?;
    let two = z.scalar_like(2.0)?;
    x.eq(z)?
        .select(&one, &zero)?
        .div(&y.eq(z)?.select(&two, &one)?)
}

fn replace_zero(x: &Value) -> Result<Value> {
    x.eq(&x.scalar_like(0.0)?)?.select(&x.scalar_like(1.0)?, x)
}

type Pair = (Option<Value>, Option<Value>);

fn binary_rule(
    op: BinaryOp,
    x: &Value,
    y: &Value,
    ans: &Value,
    g: &Value,
    needs: &[bool],
) -> Result<Pair> {
    use BinaryOp::*;
    let (nx, ny) = (needs[0], needs[1]);
    let when = |need: bool, f: &dyn Fn() -> Result<Value>| -> Result<Option<Value>> {
        if need {
            f().map(Some)
        } else {
            Ok(None)
        }
    };
    Ok(match op {
        Add => (when(nx, &|| Ok(g.clone()))?, when(ny, &|| Ok(g.clone()))?),
        Sub => (when(nx, &|| Ok(g.clone()))?, when(ny, &|| g.neg())?),
        Mul => (when(nx, &|| g.mul(y))?, when(ny, &|| g.mul(x))?),
        Div => (
            when(nx, &|| g.div(y))?,
            when(ny, &|| g.neg()?.mul(x)?.div(&y.square()?))?,
        ),
        Rem => (
            when(nx, &|| Ok(g.clone()))?,
            when(ny, &|| {
                let q = x.div(y)?;
                g.neg()?.mul(&q.sign()?.mul(&q.abs()?.floor()?)?)
            })?,
        ),
        Pow => (
            when(nx, &|| {
                g.mul(&y.mul(&x.pow(&y.sub(&y.scalar_like(1.0)?)?)?)?)
            })?,
            when(ny, &|| g.mul(&replace_zero(x)?.log()?.mul(ans)?))?,
        ),
        Max | Min => (
            when(nx, &|| g.mul(&balanced_eq(x, ans, y)?))?,
            when(ny, &|| g.mul(&balanced_eq(y, ans, x)?))?,
        ),
        Atan2 => {
            let den = || x.square()?.add(&y.square()?);
            (
                when(nx, &|| g.mul(&y.div(&den()?)?))?,
                when(ny, &|| g.mul(&x.neg()?.div(&den()?)?))?,
            )
        }
        And | Or | Xor | ShiftLeft | ShiftRightArithmetic | ShiftRightLogical => (None, None),
    })
}
