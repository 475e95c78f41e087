//! Calls of kernels registered with the runtime (`stablehlo.custom_call`).

use crate::dtype::ArraySpec;
use crate::error::Result;

use super::core::{op_err, Builder, Value};
use super::op::Op;

/// Whether `s` is a name that can stand unquoted in the emitted program
/// text: ASCII letters, digits, `_` and `.`, starting with a letter or `_`.
fn plain_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

impl Builder {
    /// Lets ops use the CPU kernels that `crate::pjrt::ffi` registers
    /// with a CPU plugin (today: `QWeight::linear`'s matrix-vector
    /// product), or stops them; off by default. Turn it on only for
    /// programs compiled by a client whose [`crate::Client::cpu_kernels`]
    /// is true: elsewhere the program does not compile.
    pub fn set_cpu_kernels(&self, on: bool) {
        self.state.borrow_mut().cpu_kernels = on;
    }

    /// Whether ops may call the CPU kernels ([`Builder::set_cpu_kernels`]).
    pub fn cpu_kernels(&self) -> bool {
        self.state.borrow().cpu_kernels
    }

    /// A call of the kernel registered with the runtime as `target`
    /// (XLA's typed FFI, `api_version = 4`) on `operands`, returning arrays
    /// of `results`' types; `attrs` are passed to the kernel as its
    /// attributes (`backend_config`). Nothing here knows what the kernel
    /// computes: the caller checks operand types for it (see
    /// `crate::models::qmatvec` for a typed wrapper), and the kernel
    /// itself gets the buffers' types and refuses wrong ones at run time.
    ///
    /// Errors: [`crate::Error::Op`] (op `custom_call`) for a target or
    /// attribute name that is not a plain identifier (letters, digits, `_`,
    /// `.`), or no results; the usual errors for operands of another
    /// builder and result shapes too large.
    pub fn custom_call(
        &self,
        target: &str,
        operands: &[&Value],
        results: Vec<ArraySpec>,
        attrs: &[(&str, i64)],
    ) -> Result<Vec<Value>> {
        if !plain_name(target) {
            return Err(op_err(
                "custom_call",
                format!(
                    "target name {target:?} is not a plain identifier (letters, digits, '_', '.')"
                ),
            ));
        }
        if let Some((k, _)) = attrs.iter().find(|(k, _)| !plain_name(k)) {
            return Err(op_err(
                "custom_call",
                format!("attribute name {k:?} of {target} is not a plain identifier"),
            ));
        }
        if results.is_empty() {
            return Err(op_err(
                "custom_call",
                format!("{target}: a call must return at least one array"),
            ));
        }
        let mut attrs: Vec<(String, i64)> =
            attrs.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        // XLA hands a kernel its attributes sorted by name.
        attrs.sort();
        self.push(
            Op::CustomCall {
                target: target.to_string(),
                attrs,
            },
            operands,
            results,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn emits_a_typed_ffi_call_and_checks_names() {
        let b = Builder::new();
        let x = b.parameter(ArraySpec::of::<f32>([4]), "x").unwrap();
        let y = b
            .custom_call(
                "my_kernel",
                &[&x],
                vec![ArraySpec::of::<f32>([2])],
                &[("n", 3)],
            )
            .unwrap();
        assert_eq!(y[0].dims(), &[2]);
        let text = b.build(&[y[0].clone()]).unwrap().to_stablehlo();
        assert!(text.contains(
            r#""stablehlo.custom_call"(%v0) {api_version = 4 : i32, backend_config = {n = 3 : i64}, call_target_name = "my_kernel"} : (tensor<4xf32>) -> tensor<2xf32>"#
        ), "{text}");
        for bad in ["", "a\"b", "9x", "a b"] {
            match b.custom_call(bad, &[&x], vec![ArraySpec::of::<f32>([2])], &[]) {
                Err(Error::Op {
                    op: "custom_call", ..
                }) => {}
                other => panic!("target {bad:?}: expected Error::Op, got {other:?}"),
            }
        }
        assert!(matches!(
            b.custom_call("k", &[&x], vec![ArraySpec::of::<f32>([2])], &[("a=1", 1)]),
            Err(Error::Op {
                op: "custom_call",
                ..
            })
        ));
        assert!(matches!(
            b.custom_call("k", &[&x], vec![], &[]),
            Err(Error::Op {
                op: "custom_call",
                ..
            })
        ));
        assert!(!b.cpu_kernels());
        b.set_cpu_kernels(true);
        assert!(b.cpu_kernels());
    }
}
