//! Which operations the CPU compiler hands to YNNPACK, when the caller has
//! not chosen: xlayer's default for programs with a convolution.
//!
//! XLA's CPU compiler turns some operations into calls of the YNNPACK
//! library ("YNN fusions"); the repeated enum flag
//! [`CPU_LIBRARY_FUSION_FLAG`] chooses which kinds. On the default CPU
//! build, its own choice leaves the flatten between a CNN's last pool and
//! its dense layer inside the pool's loop, and that loop then runs over
//! the flat shape, recovering each element's 4-D index with a division by
//! the map's width: scalar code, 1.1 ms of the Keras-test CNN's 9 ms at
//! batch 256. With [`CPU_CONV_LIBRARY_FUSION`] (dots and reductions) the
//! dot takes the flatten, the pool stays a vectorised 4-D loop, and the
//! convolutions run on XLA's own kernels, which the CNN's train step also
//! runs faster. The same kinds made MiniLM at batch 1 1.1–1.5× slower
//! (every small dot becomes a library call), so xlayer chooses them only
//! for a program with a convolution. Measurements: `docs/benchmarks.md`,
//! "YNNPACK fusion types".
//!
//! [`CompileOptions::new`] allows this choice; setting the flag with
//! [`CompileOptions::xla_flag`], or
//! [`CompileOptions::library_fusion_defaults`]`(false)`, leaves it to the
//! caller, and [`CompileOptions::plugin_defaults`] never makes it. A build
//! that does not know the flag or its values compiles without it.
//!
//! ```
//! use xlayer::pjrt::library_fusion::has_convolution;
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
    /// xlayer's library fusion default applies (a CPU client, a program
    /// with a convolution, [`CompileOptions::library_fusion_defaults`] on
    /// and the flag not set); else `None`.
    pub(crate) fn for_program(&self, client: &Client, program: &Program) -> Option<CompileOptions> {
        let applies = self.library_fusion_defaults
            && !self.flags.contains_key(CPU_LIBRARY_FUSION_FLAG)
            && client.platform_name().eq_ignore_ascii_case("cpu")
            && has_convolution(program);
        applies.then(|| {
            let mut o = self.clone();
            o.flags.insert(
                CPU_LIBRARY_FUSION_FLAG.into(),
                CPU_CONV_LIBRARY_FUSION.into(),
            );
            o
        })
    }

    /// Whether the library fusion flag these options carry is xlayer's
    /// default (added by [`CompileOptions::for_program`]), which a build
    /// refusing it may compile without.
    pub(crate) fn has_default_library_fusion(&self) -> bool {
        self.library_fusion_defaults && self.flags.contains_key(CPU_LIBRARY_FUSION_FLAG)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_new_leaves_the_choice_to_xlayer() {
        assert!(CompileOptions::new().library_fusion_defaults);
        assert!(!CompileOptions::plugin_defaults().library_fusion_defaults);
        let chosen =
            CompileOptions::new().xla_flag(CPU_LIBRARY_FUSION_FLAG, "LIBRARY_FUSION_TYPE_DOT");
        assert!(!chosen.library_fusion_defaults);
        assert!(!chosen.has_default_library_fusion());
        assert!(
            !CompileOptions::new()
                .library_fusion_defaults(false)
                .library_fusion_defaults
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
