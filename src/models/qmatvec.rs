//! The quantized matrix-vector product as a call of xlayer's CPU kernel
//! (`crate::pjrt::ffi`), with its operands checked while the program is
//! built.

use crate::builder::Value;
use crate::dtype::{ArraySpec, DType};
use crate::error::{Error, Result};
use crate::gguf::GgmlType;
use crate::pjrt::ffi::matvec_target;

const OP: &str = "quantized_matvec";

fn op_err(message: String) -> Error {
    Error::Op { op: OP, message }
}

/// `W x` for a block-quantized weight `W` of type `ty` and logical shape
/// `[rows, cols]`, given as its parts in upload order (`d`, (`m`,) `qs`;
/// see `crate::models::qweight`), and `x` of `cols` f32 elements (any
/// shape): `f32[rows]`, computed by the CPU kernel
/// ([`crate::pjrt::ffi::matvec_target`]) in one pass over the 4- or 8-bit
/// data. The program compiles only on a client whose
/// [`crate::Client::cpu_kernels`] is true.
///
/// Errors: [`Error::Op`] (op `quantized_matvec`) naming the operand at
/// fault with its type and the expected one: a type other than `Q4_0`,
/// `Q4_1`, `Q8_0`; `cols` not a multiple of 32; `x` not f32 or not of
/// `cols` elements; a missing part, or one of another dtype or shape.
pub fn quantized_matvec(
    ty: GgmlType,
    rows: usize,
    cols: usize,
    x: &Value,
    parts: &[Value],
) -> Result<Value> {
    let Some(target) = matvec_target(ty) else {
        return Err(op_err(format!(
            "no kernel for {ty} weights (Q4_0, Q4_1 and Q8_0 have one)"
        )));
    };
    if cols == 0 || !cols.is_multiple_of(32) {
        return Err(op_err(format!(
            "{ty} weight [{rows}, {cols}]: columns must be a positive multiple of 32"
        )));
    }
    if x.dtype() != DType::F32 || x.element_count() != cols {
        return Err(op_err(format!(
            "x is {}, expected f32 with {cols} elements (the weight's columns)",
            x.spec()
        )));
    }
    let want = super::qweight::block_parts(ty, &[rows, cols]);
    if parts.len() != want.len() {
        return Err(op_err(format!(
            "a {ty} weight has {} parts ({}), got {}",
            want.len(),
            want.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "),
            parts.len()
        )));
    }
    for ((name, spec), p) in want.iter().zip(parts) {
        if p.spec() != spec {
            return Err(op_err(format!(
                "part `{name}` of the {ty} weight [{rows}, {cols}] is {}, expected {spec}",
                p.spec()
            )));
        }
    }
    let x1 = x.reshape(&[cols])?;
    let mut operands: Vec<&Value> = vec![&x1];
    operands.extend(parts);
    let mut out = x.builder().custom_call(
        target,
        &operands,
        vec![ArraySpec::new(DType::F32, vec![rows])],
        &[],
    )?;
    Ok(out.remove(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::Builder;

    #[test]
    fn operands_are_checked_by_name() {
        let b = Builder::new();
        let p = |dt, dims: &[usize], n| b.parameter(ArraySpec::new(dt, dims.to_vec()), n).unwrap();
        let x = p(DType::F32, &[1, 64], "x");
        let d = p(DType::F16, &[5, 2], "d");
        let m = p(DType::F16, &[5, 2], "m");
        let qs = p(DType::U8, &[5, 2, 16], "qs");
        let y = quantized_matvec(
            GgmlType::Q4_1,
            5,
            64,
            &x,
            &[d.clone(), m.clone(), qs.clone()],
        )
        .unwrap();
        assert_eq!(y.dims(), &[5]);
        let text = b.build(&[y]).unwrap().to_stablehlo();
        assert!(
            text.contains("call_target_name = \"xlayer_q4_1_matvec\""),
            "{text}"
        );
        let msg = |r: Result<Value>| match r {
            Err(Error::Op { op: OP, message }) => message,
            other => panic!("expected Error::Op, got {other:?}"),
        };
        // Q4_0 has no `m`: three parts are one too many.
        assert!(msg(quantized_matvec(
            GgmlType::Q4_0,
            5,
            64,
            &x,
            &[d.clone(), m.clone(), qs.clone()]
        ))
        .contains("2 parts"));
        // A part of the wrong shape is named with both specs.
        let m_bad = p(DType::F16, &[5, 3], "m2");
        let e = msg(quantized_matvec(
            GgmlType::Q4_1,
            5,
            64,
            &x,
            &[d.clone(), m_bad, qs.clone()],
        ));
        assert!(
            e.contains("part `m`") && e.contains("f16[5,3]") && e.contains("f16[5,2]"),
            "{e}"
        );
        // Q8_0 wants i8 quants.
        let e = msg(quantized_matvec(
            GgmlType::Q8_0,
            5,
            64,
            &x,
            &[d.clone(), qs.clone()],
        ));
        assert!(e.contains("part `qs`"), "{e}");
        // x of another length or dtype.
        let x_bad = p(DType::F32, &[32], "x2");
        assert!(msg(quantized_matvec(
            GgmlType::Q4_0,
            5,
            64,
            &x_bad,
            &[d.clone(), qs.clone()]
        ))
        .contains("x is"));
        let x_f16 = p(DType::F16, &[64], "x3");
        assert!(msg(quantized_matvec(
            GgmlType::Q4_0,
            5,
            64,
            &x_f16,
            &[d.clone(), qs.clone()]
        ))
        .contains("x is"));
        assert!(msg(quantized_matvec(
            GgmlType::Q4_K,
            5,
            64,
            &x,
            &[d.clone(), qs.clone()]
        ))
        .contains("no kernel"));
        assert!(
            msg(quantized_matvec(GgmlType::Q4_0, 5, 48, &x, &[d, qs])).contains("multiple of 32")
        );
    }
}
