//! xlayer's measured compile flags for the CPU plugin, added to a compile
//! whose caller has not chosen them ([`CompileOptions::cpu_tuning`], on
//! in [`CompileOptions::new`]). Each was measured against the build's own
//! default on the speed suite and MiniLM (`docs/benchmarks.md`, "CPU
//! compile flags chosen by measurement"):
//!
//! - **YNNPACK fusion types, for a program with a convolution.** XLA's CPU
//!   compiler turns some operations into calls of the YNNPACK library;
//!   [`CPU_LIBRARY_FUSION_FLAG`] chooses which kinds. On the default CPU
//!   build, its own choice leaves the flatten between a CNN's last pool
//!   and its dense layer inside the pool's loop, which then runs over the
//!   flat shape, recovering each element's 4-D index with a division by
//!   the map's width: scalar code, 1.1 ms of the Keras-test CNN's 9 ms at
//!   batch 256. With [`CPU_CONV_LIBRARY_FUSION`] (dots and reductions) the
//!   dot takes the flatten, the pool stays a vectorised 4-D loop, and the
//!   convolutions run on XLA's own kernels, which the CNN's train step
//!   also runs faster. The same kinds made MiniLM at batch 1 1.1–1.5×
//!   slower (small dots become library calls), hence only programs with a
//!   convolution.
//!
//! (512-bit vectors, `xla_cpu_prefer_vector_width = 512`, were measured
//! too and are not set: 5–12% faster in some A/Bs on an AMD EPYC, level
//! in others.)
//!
//! Only single-device compiles get them (they were measured there, and a
//! multi-device program's library calls share the thread pool its
//! all-reduces block: [`crate::pjrt::multi_device`]). A flag the caller
//! set is never replaced, and a build that does not
//! know a flag or refuses its value compiles without it, without an error.
//! The compile cache keys the flags a compile runs with.
//!
//! ```
//! use xlayer::pjrt::cpu_tuning::has_convolution;
//! use xlayer::Program;
//! let conv = Program::mlir_text(
//!     "func.func @main(%x: tensor<1x4x4x1xf32>, %k: tensor<3x3x1x1xf32>) -> tensor<1x2x2x1xf32> {\n\
//!        %0 = stablehlo.convolution(%x, %k) dim_numbers = [b, 0, 1, f]x[0, 1, i, o]->[b, 0, 1, f], \
//!        window = {} {batch_group_count = 1 : i64, feature_group_count = 1 : i64} \
//!        : (tensor<1x4x4x1xf32>, tensor<3x3x1x1xf32>) -> tensor<1x2x2x1xf32>\n\
//!        return %0 : tensor<1x2x2x1xf32>\n}",
//! )?;
//! assert!(has_convolution(&conv));
//! # Ok::<(), xlayer::Error>(())
//! ```

use super::client::Client;
use super::compile_options::CompileOptions;
use crate::error::Error;
use crate::program::Program;

/// The CPU compiler's flag choosing which operations become YNNPACK calls:
/// the enum's full names (`LIBRARY_FUSION_TYPE_...`) joined by commas.
pub const CPU_LIBRARY_FUSION_FLAG: &str = "xla_cpu_experimental_ynn_fusion_type";

/// The value of [`CPU_LIBRARY_FUSION_FLAG`] xlayer sets for a program with
/// a convolution: dots (with the reshapes around them) and reductions.
pub const CPU_CONV_LIBRARY_FUSION: &str = "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE";

/// Whether `program` has a convolution: its code, text or bytecode, holds
/// the op's name. (A name or location that merely contains the word also
/// counts; that only changes which kernels run.)
pub fn has_convolution(program: &Program) -> bool {
    const NAME: &[u8] = b"convolution";
    program.code().windows(NAME.len()).any(|w| w == NAME)
}

impl CompileOptions {
    /// The options a compile of `program` on `client` runs with, when
    /// xlayer adds flags to them (a CPU client, one device,
    /// [`CompileOptions::cpu_tuning`] on, and a flag that applies and the
    /// caller has not set); else `None`.
    pub(crate) fn for_program(&self, client: &Client, program: &Program) -> Option<CompileOptions> {
        // Single-device compiles only: a multi-device CPU program's library
        // calls share the thread pool its all-reduces block
        // (`multi_device`), and these flags were measured on one device.
        // The program is scanned last: options that already carry the flag
        // (the caller's, or resolved before) are answered without it.
        let applies = self.cpu_tuning
            && self.device_count() <= 1
            && client.platform_name().eq_ignore_ascii_case("cpu")
            && !self.flags.contains_key(CPU_LIBRARY_FUSION_FLAG)
            && has_convolution(program);
        applies.then(|| {
            let mut o = self.clone();
            o.flags.insert(
                CPU_LIBRARY_FUSION_FLAG.into(),
                CPU_CONV_LIBRARY_FUSION.into(),
            );
            o.tuned.push(CPU_LIBRARY_FUSION_FLAG);
            o
        })
    }

    /// These options with xlayer's flags for `program` on `client` decided
    /// once: added where they apply ([`CompileOptions::for_program`]), and
    /// `cpu_tuning` off, so that the cache key and the compile that follow
    /// take them as they are instead of scanning the program again.
    pub(crate) fn tuned_for(&self, client: &Client, program: &Program) -> CompileOptions {
        let mut o = self
            .for_program(client, program)
            .unwrap_or_else(|| self.clone());
        o.cpu_tuning = false;
        o
    }

    /// The flag xlayer added ([`CompileOptions::for_program`]) that the
    /// compile error `e` refuses, if any: a build that does not know it
    /// or its value compiles without it.
    pub(crate) fn refused_tuning(&self, e: &Error) -> Option<&'static str> {
        self.tuned
            .iter()
            .copied()
            .find(|name| super::compile_options::refuses_flag(e, name))
    }

    /// The same options without the added flag `name`.
    pub(crate) fn without_tuning(&self, name: &str) -> CompileOptions {
        let mut o = self.clone().without_xla_flag(name);
        o.tuned.retain(|n| *n != name);
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pjrt::compile_options::XlaFlag;

    #[test]
    fn only_new_lets_xlayer_add_flags() {
        assert!(CompileOptions::new().cpu_tuning);
        assert!(!CompileOptions::plugin_defaults().cpu_tuning);
        assert!(!CompileOptions::new().cpu_tuning(false).cpu_tuning);
    }

    #[test]
    fn only_an_added_flag_that_the_build_refuses_is_dropped() {
        let refusal = |name: &str| Error::Pjrt {
            function: "PJRT_Client_Compile",
            code: crate::error::ErrorCode::InvalidArgument,
            message: format!("While setting option {name}, 'X' is not a valid enum value"),
        };
        let mut o = CompileOptions::new().xla_flag("xla_cpu_prefer_vector_width", 256i64);
        o.flags.insert(
            CPU_LIBRARY_FUSION_FLAG.into(),
            CPU_CONV_LIBRARY_FUSION.into(),
        );
        o.tuned.push(CPU_LIBRARY_FUSION_FLAG);
        assert_eq!(
            o.refused_tuning(&refusal(CPU_LIBRARY_FUSION_FLAG)),
            Some(CPU_LIBRARY_FUSION_FLAG)
        );
        // The caller's own flag is never dropped.
        assert_eq!(
            o.refused_tuning(&refusal("xla_cpu_prefer_vector_width")),
            None
        );
        let without = o.without_tuning(CPU_LIBRARY_FUSION_FLAG);
        assert!(!without.flags.contains_key(CPU_LIBRARY_FUSION_FLAG));
        assert!(without.tuned.is_empty());
        assert_eq!(
            without.flags["xla_cpu_prefer_vector_width"],
            XlaFlag::Int(256)
        );
    }

    #[test]
    fn convolutions_are_found_in_text_and_bytecode_alike() {
        let text = |body: &str| {
            Program::mlir_text(format!(
                "func.func @main(%x: tensor<4xf32>) -> tensor<4xf32> {{\n{body}\n}}"
            ))
            .unwrap()
        };
        assert!(!has_convolution(&text("return %x : tensor<4xf32>")));
        let bytecode = |names: &[u8]| {
            let mut code = b"ML\xefR\x00stablehlo\x00".to_vec();
            code.extend_from_slice(names);
            Program::mlir_bytecode(code, Default::default()).unwrap()
        };
        assert!(has_convolution(&bytecode(b"convolution\x00add\x00")));
        assert!(!has_convolution(&bytecode(b"dot_general\x00add\x00")));
    }
}
