//! Why a `jax.export` artifact with `jax.numpy.linalg` in it does not
//! compile: on CPU, JAX lowers LU, Cholesky, QR, eigen and singular value
//! decompositions and triangular solves to custom calls of jaxlib's own
//! LAPACK wrappers (`lapack_sgetrf_ffi`, `lapack_spotrf_ffi`, ...). XLA's
//! PJRT plugins do not register them, so the plugin fails: a parse error
//! for the `custom_call_v2` of JAX 0.12's own serialization, "No FFI
//! handler registered" for one serialized for an older StableHLO. Both say
//! little about the cause; [`explain`] names the kernel instead.

use crate::error::Error;
use crate::program::Program;

/// The jaxlib LAPACK kernels `code` names, each once, in the order they
/// first appear (text or bytecode: the custom call's target is a plain
/// string in both): each an identifier
/// `lapack_` + a type letter (`s`, `d`, `c`, `z`) + a routine name +
/// `_ffi`, as jaxlib names them since its kernels moved to XLA's FFI
/// (JAX 0.4.32; the pre-FFI names are not matched, so that a file name
/// such as `lapack_data.py` in a location is not taken for one).
pub(crate) fn jaxlib_kernels(code: &[u8]) -> Vec<String> {
    const PREFIX: &[u8] = b"lapack_";
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut found: Vec<String> = Vec::new();
    let mut from = 0;
    while let Some(at) = code[from..]
        .windows(PREFIX.len())
        .position(|w| w == PREFIX)
        .map(|i| from + i)
    {
        from = at + PREFIX.len();
        if at > 0 && is_ident(code[at - 1]) {
            continue;
        }
        let end = code[from..]
            .iter()
            .position(|&b| !is_ident(b))
            .map_or(code.len(), |i| from + i);
        let name = &code[at..end];
        let Some(routine) = name[PREFIX.len()..].strip_suffix(b"_ffi") else {
            continue;
        };
        let typed = matches!(routine.first(), Some(b's' | b'd' | b'c' | b'z'));
        if typed && routine.len() >= 4 && routine[1..].iter().all(u8::is_ascii_lowercase) {
            let name = String::from_utf8_lossy(name).into_owned();
            if !found.contains(&name) {
                found.push(name);
            }
        }
    }
    found
}

/// `e` from compiling `program`, explained: a compile error of the
/// plugin's for a program that calls jaxlib LAPACK kernels becomes
/// [`Error::JaxlibKernel`] (keeping the plugin's message); any other error
/// is returned as it is.
pub(crate) fn explain(program: &Program, e: Error) -> Error {
    match e {
        Error::Pjrt {
            function: "PJRT_Client_Compile",
            code,
            message,
        } => {
            let targets = jaxlib_kernels(program.code());
            if targets.is_empty() {
                return Error::Pjrt {
                    function: "PJRT_Client_Compile",
                    code,
                    message,
                };
            }
            Error::JaxlibKernel {
                program: program.name().to_string(),
                targets,
                message,
            }
        }
        e => e,
    }
}

#[cfg(test)]
mod tests {
    use super::jaxlib_kernels;

    #[test]
    fn finds_jaxlibs_lapack_targets_in_text_and_bytes() {
        let text =
            b"%0:3 = stablehlo.custom_call @lapack_sgetrf_ffi(%arg0) {mhlo.backend_config = {}}";
        assert_eq!(jaxlib_kernels(text), ["lapack_sgetrf_ffi"]);
        let generic = br#""stablehlo.custom_call"(%0) {call_target_name = "lapack_zheevd_ffi"}"#;
        assert_eq!(jaxlib_kernels(generic), ["lapack_zheevd_ffi"]);
        let bytes = b"\x00\x07\x11lapack_dpotrf_ffi\x00\x01lapack_strsm_ffi\x00lapack_dpotrf_ffi";
        assert_eq!(
            jaxlib_kernels(bytes),
            ["lapack_dpotrf_ffi", "lapack_strsm_ffi"]
        );
    }

    #[test]
    fn other_names_are_not_kernels() {
        for code in [
            &b"stablehlo.custom_call @xlayer_q4_matvec(%a)"[..],
            b"loc(\"my_lapack_utils.py\":3:1)",
            b"loc(\"lapack_helpers.py\":3:1)",
            b"loc(\"lapack_data.py\":3:1)",
            b"stablehlo.custom_call @lapack_sgetrf(%a)",
            b"%lapack_s = stablehlo.add",
            b"lapack_",
            b"",
        ] {
            assert!(
                jaxlib_kernels(code).is_empty(),
                "{}",
                String::from_utf8_lossy(code)
            );
        }
    }
}
