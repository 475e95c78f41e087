//! Programs handed to the compiler: StableHLO text or bytecode, and the
//! entry signature read from them.
//!
//! The signature of `@main` (parameter and result types, donated
//! parameters) is what lets [`crate::Executable::execute`] validate every
//! argument in Rust before anything reaches the plugin.

use std::fmt;
use std::path::Path;

use crate::dtype::{ArraySpec, DType};
use crate::error::{Error, Result};

/// The types of an entry function: parameters, results, and which
/// parameters the program allows to be donated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Signature {
    /// Parameter types, in order.
    pub inputs: Vec<ArraySpec>,
    /// Result types, in order.
    pub outputs: Vec<ArraySpec>,
    /// For each parameter: may its buffer be donated (`jax.buffer_donor`
    /// or `tf.aliasing_output` attribute)?
    pub donors: Vec<bool>,
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |v: &[ArraySpec]| {
            v.iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        write!(f, "({}) -> ({})", list(&self.inputs), list(&self.outputs))
    }
}

/// How the program's code is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgramFormat {
    /// StableHLO (MLIR) text.
    MlirText,
    /// MLIR bytecode (e.g. a StableHLO portable artifact).
    MlirBytecode,
}

/// A program to compile: its code and its entry signature.
///
/// ```
/// let p = xlayer::Program::mlir_text(
///     "func.func public @main(%a: tensor<2xf32>) -> tensor<2xf32> {\n  return %a : tensor<2xf32>\n}",
/// )?;
/// assert_eq!(p.signature().to_string(), "(f32[2]) -> (f32[2])");
/// # Ok::<(), xlayer::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Program {
    code: Vec<u8>,
    format: ProgramFormat,
    name: String,
    signature: Signature,
    /// For each parameter of `@main`, its position among the caller's inputs.
    input_positions: Vec<usize>,
    /// How many inputs the caller passes (more than the parameters when an
    /// export dropped unused ones).
    caller_inputs: usize,
    /// Platforms the program was lowered for, when known (export artifacts).
    platforms: Option<Vec<String>>,
    /// Devices the program spans (1, or an artifact's device count).
    device_count: usize,
    /// An artifact's input and output shardings (by caller input).
    export_shardings: Option<ExportShardings>,
}

/// The shardings a `jax.export` artifact records: per caller input and per
/// output, `None` when unspecified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportShardings {
    /// One per input of the exported function.
    pub inputs: Vec<Option<crate::export::ExportSharding>>,
    /// One per output.
    pub outputs: Vec<Option<crate::export::ExportSharding>>,
}

/// The magic bytes that start MLIR bytecode.
const MLIR_BYTECODE_MAGIC: &[u8] = b"ML\xefR";

impl Program {
    /// A StableHLO text program; its `@main` signature is read from the text.
    ///
    /// Errors: [`Error::Signature`] if `@main` cannot be found or has a type
    /// xlayer cannot hold (dynamic dimensions, complex numbers, tuples);
    /// [`Error::ShapeTooLarge`] for a type whose size does not fit in i64.
    pub fn mlir_text(text: impl Into<String>) -> Result<Program> {
        let text = text.into();
        let signature = parse_signature(&text)?;
        let masked = mask_comments_and_strings(&text);
        let name = module_name(&masked).unwrap_or_else(|| "main".to_string());
        let devices = module_partitions(&masked);
        let mut p = Program::new(text.into_bytes(), ProgramFormat::MlirText, name, signature);
        p.device_count = devices;
        Ok(p)
    }

    /// An MLIR bytecode program. Bytecode cannot be read here, so the
    /// caller states the signature of `@main` (outputs may be left empty:
    /// the compiled executable reports them).
    ///
    /// Errors: [`Error::OutOfRange`] if `bytes` does not start with MLIR's
    /// magic; [`Error::ShapeTooLarge`] for a declared type too large to exist.
    pub fn mlir_bytecode(bytes: impl Into<Vec<u8>>, signature: Signature) -> Result<Program> {
        let code = bytes.into();
        if !code.starts_with(MLIR_BYTECODE_MAGIC) {
            return Err(Error::OutOfRange {
                function: "Program::mlir_bytecode",
                what: "the first bytes".into(),
                value: format!("{:02x?}", &code[..code.len().min(4)]),
                expected: "MLIR's magic `ML\\xefR`".into(),
            });
        }
        for (i, spec) in signature.inputs.iter().enumerate() {
            spec.check_size(|| format!("parameter {i} of the declared signature"))?;
        }
        for (i, spec) in signature.outputs.iter().enumerate() {
            spec.check_size(|| format!("result {i} of the declared signature"))?;
        }
        let mut signature = signature;
        if signature.donors.len() != signature.inputs.len() {
            signature.donors = vec![false; signature.inputs.len()];
        }
        Ok(Program::new(
            code,
            ProgramFormat::MlirBytecode,
            "main".into(),
            signature,
        ))
    }

    /// Reads a StableHLO text file (`.mlir`), as `jax.jit(f).lower(...).as_text()` writes.
    pub fn from_text_file(path: impl AsRef<Path>) -> Result<Program> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            what: "cannot read program",
            path: path.to_path_buf(),
            source,
        })?;
        Program::mlir_text(text).map_err(|e| match e {
            Error::Signature(m) => Error::Signature(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    fn new(code: Vec<u8>, format: ProgramFormat, name: String, signature: Signature) -> Program {
        let n = signature.inputs.len();
        Program {
            code,
            format,
            name,
            signature,
            input_positions: (0..n).collect(),
            caller_inputs: n,
            platforms: None,
            device_count: 1,
            export_shardings: None,
        }
    }

    pub(crate) fn with_name(mut self, name: &str) -> Program {
        if !name.is_empty() {
            self.name = name.to_string();
        }
        self
    }

    pub(crate) fn for_export(
        mut self,
        positions: Vec<usize>,
        caller_inputs: usize,
        platforms: Vec<String>,
    ) -> Program {
        self.input_positions = positions;
        self.caller_inputs = caller_inputs;
        self.platforms = Some(platforms);
        self
    }

    pub(crate) fn with_devices(
        mut self,
        n: usize,
        inputs: Vec<Option<crate::export::ExportSharding>>,
        outputs: Vec<Option<crate::export::ExportSharding>>,
    ) -> Program {
        self.device_count = n;
        self.export_shardings = Some(ExportShardings { inputs, outputs });
        self
    }

    /// How many devices the program spans: 1, or the device count a
    /// `jax.export` artifact was exported for (compile it with
    /// [`crate::CompileOptions::spmd`] of that count).
    pub fn device_count(&self) -> usize {
        self.device_count
    }

    /// The input and output shardings a `jax.export` artifact records.
    pub fn export_shardings(&self) -> Option<&ExportShardings> {
        self.export_shardings.as_ref()
    }

    /// Reads a program file, recognising its kind by content:
    /// - MLIR bytecode (starts with `ML\xefR`): its signature cannot be
    ///   read here, so this fails with [`Error::ProgramFile`]; use
    ///   [`Program::from_file_with_signature`];
    /// - StableHLO text (`.mlir`, as `jax.jit(f).lower(...).as_text()` writes);
    /// - a serialized `jax.export` artifact ([`crate::export::JaxExport`]),
    ///   whose signature and platforms come from the artifact.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Program> {
        Self::from_file_with_signature(path, None)
    }

    /// Like [`Program::from_file`], with the signature of a bytecode
    /// program given by the caller (outputs may be left empty). For text
    /// and export files, a given signature must agree with the file's inputs.
    pub fn from_file_with_signature(
        path: impl AsRef<Path>,
        signature: Option<Signature>,
    ) -> Result<Program> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            what: "cannot read program",
            path: path.to_path_buf(),
            source,
        })?;
        let file_err = |reason: String| Error::ProgramFile {
            path: path.to_path_buf(),
            reason,
        };
        let program = if bytes.starts_with(MLIR_BYTECODE_MAGIC) {
            let signature = signature.clone().ok_or_else(|| {
                file_err("is MLIR bytecode, whose @main signature xlayer cannot read; state it (Program::from_file_with_signature, or `--signature` on the command line), or use the jax.export artifact or the text form".into())
            })?;
            Program::mlir_bytecode(bytes, signature)?
        } else if let Ok(text) = std::str::from_utf8(&bytes) {
            if !text.contains("func.func") {
                return Err(file_err(
                    "is text but not a StableHLO module (no `func.func`)".into(),
                ));
            }
            Program::mlir_text(text).map_err(|e| match e {
                Error::Signature(m) => Error::Signature(format!("{}: {m}", path.display())),
                other => other,
            })?
        } else {
            let export = crate::export::JaxExport::parse(&bytes).map_err(|e| {
                file_err(format!("is neither StableHLO text, MLIR bytecode, nor a readable jax.export artifact ({e})"))
            })?;
            export.program().map_err(|e| file_err(e.to_string()))?
        };
        if let Some(sig) = signature {
            if program.format != ProgramFormat::MlirBytecode
                && sig.inputs != program.signature.inputs
            {
                return Err(file_err(format!(
                    "the given signature {sig} disagrees with the file's inputs {}",
                    Signature {
                        inputs: program.signature.inputs.clone(),
                        ..Default::default()
                    }
                )));
            }
        }
        Ok(program)
    }

    /// For each parameter of `@main`, its position among the caller's
    /// inputs: the identity, except for `jax.export` artifacts whose module
    /// dropped unused inputs.
    pub fn input_positions(&self) -> &[usize] {
        &self.input_positions
    }

    /// How many inputs the caller passes (see [`Program::input_positions`]).
    pub fn caller_input_count(&self) -> usize {
        self.caller_inputs
    }

    /// The platforms the program was lowered for, when the file says.
    pub fn platforms(&self) -> Option<&[String]> {
        self.platforms.as_deref()
    }

    /// The code bytes handed to the plugin.
    pub fn code(&self) -> &[u8] {
        &self.code
    }

    /// Text or bytecode.
    pub fn format(&self) -> ProgramFormat {
        self.format
    }

    /// The module's name (`@jit_f` gives `jit_f`), or `main`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The entry signature.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }
}

fn module_name(text: &str) -> Option<String> {
    let rest = text.trim_start().strip_prefix("module @")?;
    let end = rest
        .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.' || c == '$' || c == '-'))?;
    Some(rest[..end].to_string())
}

/// Splits `s` at top-level commas (outside `<>`, `()`, `[]`, `{}` and strings).
/// The `mhlo.num_partitions` attribute of the module (1 when absent or
/// unreadable).
fn module_partitions(text: &str) -> usize {
    let Some(at) = text.find("mhlo.num_partitions") else {
        return 1;
    };
    let rest = text[at + "mhlo.num_partitions".len()..].trim_start();
    let Some(rest) = rest.strip_prefix('=') else {
        return 1;
    };
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok().filter(|&n| n > 0).unwrap_or(1)
}

fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut in_str = false;
    let mut start = 0;
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if in_str {
            if c == b'\\' {
                i += 1;
            } else if c == b'"' {
                in_str = false;
            }
        } else {
            match c {
                b'"' => in_str = true,
                b'<' | b'(' | b'[' | b'{' => depth += 1,
                b'>' | b')' | b']' | b'}' => depth -= 1,
                b',' if depth == 0 => {
                    parts.push(s[start..i].trim());
                    start = i + 1;
                }
                _ => {}
            }
        }
        i += 1;
    }
    let last = s[start..].trim();
    if !last.is_empty() {
        parts.push(last);
    }
    parts
}

/// Finds the byte index of the bracket closing the one at `open`.
fn matching(s: &str, open: usize) -> Option<usize> {
    let bytes = s.as_bytes();
    let (o, c) = (
        bytes[open],
        match bytes[open] {
            b'(' => b')',
            b'{' => b'}',
            b'<' => b'>',
            b'[' => b']',
            _ => return None,
        },
    );
    let mut depth = 0;
    let mut in_str = false;
    let mut i = open;
    while i < bytes.len() {
        let b = bytes[i];
        if in_str {
            if b == b'\\' {
                i += 1;
            } else if b == b'"' {
                in_str = false;
            }
        } else if b == b'"' {
            in_str = true;
        } else if b == o {
            depth += 1;
        } else if b == c {
            depth -= 1;
            if depth == 0 {
                return Some(i);
            }
        }
        i += 1;
    }
    None
}

/// Parses a `tensor<AxBxT>` type.
pub(crate) fn parse_tensor_type(t: &str) -> Result<ArraySpec> {
    let t = t.trim();
    let inner = t
        .strip_prefix("tensor<")
        .and_then(|r| r.strip_suffix('>'))
        .ok_or_else(|| Error::Signature(format!("`{t}` is not a ranked tensor type")))?;
    let inner = inner.split(',').next().unwrap_or(inner).trim();
    let mut parts: Vec<&str> = inner.split('x').collect();
    let elem = parts.pop().unwrap_or_default();
    let dtype = DType::from_mlir_name(elem).ok_or_else(|| {
        Error::Signature(format!("element type `{elem}` of `{t}` is not supported"))
    })?;
    let dims = parts
        .iter()
        .map(|d| {
            d.parse::<usize>().map_err(|_| {
                Error::Signature(format!(
                    "dimension `{d}` of `{t}` is not static (dynamic shapes are not supported)"
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(ArraySpec::new(dtype, dims))
}

/// Splits an argument or result entry into its type and attribute dictionary.
fn type_and_attrs(entry: &str) -> (&str, &str) {
    let entry = entry.trim();
    let ty_start = match entry.find(':') {
        Some(i) if entry.starts_with('%') => i + 1,
        _ => 0,
    };
    let rest = entry[ty_start..].trim();
    match rest.find('{') {
        Some(i) => (rest[..i].trim(), rest[i..].trim()),
        None => (rest, ""),
    }
}

/// `text` with the contents of `//` comments and of string literals
/// replaced by spaces (byte offsets kept), so that a `func.func @main(...)`
/// inside a comment or a string is not taken for the real one.
fn mask_comments_and_strings(text: &str) -> String {
    let mut out = text.as_bytes().to_vec();
    let mut i = 0;
    while i < out.len() {
        match out[i] {
            b'"' => {
                i += 1;
                while i < out.len() && out[i] != b'"' {
                    let escaped = out[i] == b'\\';
                    out[i] = b' ';
                    i += 1;
                    if escaped && i < out.len() && out[i] != b'\n' {
                        out[i] = b' ';
                        i += 1;
                    }
                }
                i += 1;
            }
            b'/' if out.get(i + 1) == Some(&b'/') => {
                while i < out.len() && out[i] != b'\n' {
                    out[i] = b' ';
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    // Only whole characters were blanked (comments and strings end at ASCII
    // bytes), so this cannot fail; fall back to the text itself regardless.
    String::from_utf8(out).unwrap_or_else(|_| text.to_string())
}

/// Reads the signature of `func.func @main` from StableHLO text; comments
/// and string literals are ignored.
pub fn parse_signature(text: &str) -> Result<Signature> {
    let masked = mask_comments_and_strings(text);
    let text = masked.as_str();
    let at = text
        .match_indices("@main(")
        .map(|(i, _)| i)
        .find(|&i| {
            text[..i].trim_end().ends_with("func.func")
                || text[..i].trim_end().ends_with("public")
                || text[..i].trim_end().ends_with("private")
        })
        .ok_or_else(|| Error::Signature("no `func.func @main(...)` in the program".into()))?;
    let open = at + "@main".len();
    let close = matching(text, open)
        .ok_or_else(|| Error::Signature("unbalanced parameter list of @main".into()))?;
    let mut sig = Signature::default();
    for entry in split_top_level(&text[open + 1..close]) {
        let (ty, attrs) = type_and_attrs(entry);
        let spec = parse_tensor_type(ty)?;
        let index = sig.inputs.len();
        spec.check_size(|| format!("parameter {index} of @main"))?;
        sig.inputs.push(spec);
        sig.donors.push(
            attrs.contains("jax.buffer_donor = true") || attrs.contains("tf.aliasing_output"),
        );
    }
    let after = text[close + 1..].trim_start();
    let Some(results) = after.strip_prefix("->") else {
        return Ok(sig);
    };
    let results = results.trim_start();
    let offset = text.len() - results.len();
    if results.starts_with('(') {
        let rclose = matching(text, offset)
            .ok_or_else(|| Error::Signature("unbalanced result list of @main".into()))?;
        for entry in split_top_level(&text[offset + 1..rclose]) {
            let (ty, _) = type_and_attrs(entry);
            let spec = parse_tensor_type(ty)?;
            let index = sig.outputs.len();
            spec.check_size(|| format!("result {index} of @main"))?;
            sig.outputs.push(spec);
        }
    } else {
        let end = results.find('{').unwrap_or(results.len());
        let single = results[..end].trim();
        let single = single
            .strip_suffix("attributes")
            .map(str::trim)
            .unwrap_or(single);
        let spec = parse_tensor_type(single)?;
        spec.check_size(|| "result 0 of @main".into())?;
        sig.outputs.push(spec);
    }
    Ok(sig)
}

#[cfg(test)]
mod tests {
    use super::*;

    const JAX_TEXT: &str = r#"module @jit_f attributes {mhlo.num_partitions = 1 : i32, mhlo.num_replicas = 1 : i32} {
  func.func public @main(%arg0: tensor<2x3xf32> {jax.buffer_donor = true}, %arg1: tensor<3x4xf32>) -> (tensor<2x4xf32> {jax.result_info = "result[0]"}, tensor<i32>) {
    %0 = stablehlo.dot_general %arg0, %arg1, contracting_dims = [1] x [0] : (tensor<2x3xf32>, tensor<3x4xf32>) -> tensor<2x4xf32>
    return %0 : tensor<2x4xf32>
  }
}"#;

    #[test]
    fn reads_jax_style_signature() {
        let sig = parse_signature(JAX_TEXT).unwrap();
        assert_eq!(
            sig.inputs,
            vec![ArraySpec::of::<f32>([2, 3]), ArraySpec::of::<f32>([3, 4])]
        );
        assert_eq!(
            sig.outputs,
            vec![ArraySpec::of::<f32>([2, 4]), ArraySpec::of::<i32>([])]
        );
        assert_eq!(sig.donors, vec![true, false]);
        assert_eq!(module_name(JAX_TEXT).as_deref(), Some("jit_f"));
    }

    #[test]
    fn single_unparenthesised_result_and_unsigned() {
        let sig = parse_signature("func.func @main(%a: tensor<4xui8>, %b: tensor<i1>) -> tensor<4xui8> {\n return %a : tensor<4xui8>\n}").unwrap();
        assert_eq!(
            sig.inputs,
            vec![ArraySpec::of::<u8>([4]), ArraySpec::of::<bool>([])]
        );
        assert_eq!(sig.outputs, vec![ArraySpec::of::<u8>([4])]);
    }

    #[test]
    fn ignores_main_in_comments_and_strings() {
        let text = "// func.func public @main(%a: tensor<4xi32>) -> tensor<4xi32>\n\
            module @m attributes {x.doc = \"func.func public @main(%b: tensor<2xi8>)\"} {\n\
            func.func public @main(%a: tensor<4xf32> {jax.result_info = \"a // b\"}) -> tensor<4xf32> {\n\
            return %a : tensor<4xf32> // func.func @main(%c: tensor<i1>)\n}\n}";
        let sig = parse_signature(text).unwrap();
        assert_eq!(sig.inputs, vec![ArraySpec::of::<f32>([4])]);
        assert_eq!(sig.outputs, vec![ArraySpec::of::<f32>([4])]);
        let masked = mask_comments_and_strings("a \"x\\\"y\" // é\nb");
        assert_eq!(masked, "a \"    \"      \nb");
    }

    #[test]
    fn rejects_what_it_cannot_hold() {
        let e = parse_signature("func.func @main(%a: tensor<?x4xf32>) -> tensor<f32> {}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`?`") && e.contains("not static"), "{e}");
        let e = parse_signature("func.func @main(%a: tensor<4xcomplex<f32>>) -> tensor<f32> {}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not supported"), "{e}");
        let e = parse_signature("func.func @other(%a: tensor<f32>) {}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("@main"), "{e}");
    }
}
