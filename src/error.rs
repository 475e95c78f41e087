//! The crate's one error type.
//!
//! Every variant names what is at fault: the plugin file, the PJRT function,
//! the argument index, the op, the tensor path, with the shapes and dtypes
//! involved. Errors reported by the plugin keep its code and message.

use std::fmt;
use std::path::PathBuf;

use crate::builder::Path;
use crate::dtype::{ArraySpec, DType};

/// A PJRT error code (the absl status codes the C API reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The operation was cancelled.
    Cancelled,
    /// Unknown error.
    Unknown,
    /// The caller passed something invalid.
    InvalidArgument,
    /// A deadline expired.
    DeadlineExceeded,
    /// Something was not found.
    NotFound,
    /// Something already exists.
    AlreadyExists,
    /// Permission denied.
    PermissionDenied,
    /// Out of memory or another resource.
    ResourceExhausted,
    /// The system is not in a state the operation needs.
    FailedPrecondition,
    /// The operation was aborted.
    Aborted,
    /// Out of range.
    OutOfRange,
    /// Not implemented by this plugin.
    Unimplemented,
    /// Internal error of the plugin.
    Internal,
    /// Unavailable.
    Unavailable,
    /// Data loss.
    DataLoss,
    /// Unauthenticated.
    Unauthenticated,
    /// A code this version of xlayer does not know.
    Other(u32),
}

impl ErrorCode {
    /// Maps the C API's numeric code.
    pub fn from_raw(code: u32) -> ErrorCode {
        use ErrorCode::*;
        match code {
            1 => Cancelled,
            2 => Unknown,
            3 => InvalidArgument,
            4 => DeadlineExceeded,
            5 => NotFound,
            6 => AlreadyExists,
            7 => PermissionDenied,
            8 => ResourceExhausted,
            9 => FailedPrecondition,
            10 => Aborted,
            11 => OutOfRange,
            12 => Unimplemented,
            13 => Internal,
            14 => Unavailable,
            15 => DataLoss,
            16 => Unauthenticated,
            other => Other(other),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorCode::Other(c) => write!(f, "code {c}"),
            other => write!(f, "{other:?}"),
        }
    }
}

/// Everything that can go wrong in xlayer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Finding or downloading a plugin failed.
    #[error(transparent)]
    Provision(#[from] xla_build::Error),

    /// `dlopen` refused the file.
    #[error("cannot load PJRT plugin {}: {reason}", path.display())]
    PluginLoad {
        /// The file.
        path: PathBuf,
        /// What the loader said.
        reason: String,
    },

    /// The file loads but is not a PJRT plugin.
    #[error("{} is not a PJRT plugin: {reason}", path.display())]
    NotAPlugin {
        /// The file.
        path: PathBuf,
        /// Why not.
        reason: String,
    },

    /// The plugin speaks a C API version xlayer cannot use.
    #[error("PJRT plugin {} implements C API {major}.{minor}; xlayer needs {need_major}.{need_minor} or a later minor version", path.display())]
    ApiVersion {
        /// The file.
        path: PathBuf,
        /// The plugin's major version.
        major: i32,
        /// The plugin's minor version.
        minor: i32,
        /// The major version xlayer was built for.
        need_major: i32,
        /// The oldest minor version xlayer accepts.
        need_minor: i32,
    },

    /// The plugin does not provide a C API function xlayer needs for this call.
    #[error("the PJRT plugin does not implement {function}")]
    Unsupported {
        /// The C API function.
        function: &'static str,
    },

    /// A PJRT call returned an error.
    #[error("{function} failed ({code}): {message}")]
    Pjrt {
        /// The C API function that failed.
        function: &'static str,
        /// The plugin's error code.
        code: ErrorCode,
        /// The plugin's message.
        message: String,
    },

    /// A program's entry signature could not be read.
    #[error("cannot read the signature of the program's @main function: {0}")]
    Signature(String),

    /// An executable got the wrong number of arguments.
    #[error("executable `{program}` takes {expected} argument(s), got {actual}")]
    ArgumentCount {
        /// The executable's name.
        program: String,
        /// Parameters of `@main`.
        expected: usize,
        /// Buffers passed.
        actual: usize,
    },

    /// An argument's dtype or shape differs from the parameter.
    #[error("argument {index} of `{program}`: expected {expected}, got {actual}")]
    ArgumentType {
        /// The executable's name.
        program: String,
        /// Position of the argument.
        index: usize,
        /// The parameter's type.
        expected: ArraySpec,
        /// The buffer's type.
        actual: ArraySpec,
    },

    /// An argument lives on another device than the executable.
    #[error("argument {index} of `{program}` is on device {actual}, but the executable runs on device {expected}; copy it with Buffer::copy_to_device")]
    ArgumentDevice {
        /// The executable's name.
        program: String,
        /// Position of the argument.
        index: usize,
        /// The executable's device.
        expected: String,
        /// The buffer's device.
        actual: String,
    },

    /// A buffer or device from one client was passed to another client.
    #[error("{what} belongs to another PJRT client ({other}) than the one used here ({this})")]
    ForeignClient {
        /// What was passed, e.g. "argument 1 of `main`".
        what: String,
        /// The client it belongs to.
        other: String,
        /// The client used.
        this: String,
    },

    /// Host data does not fit the shape it was given.
    #[error("host data for {spec} needs {expected} elements, got {actual}")]
    HostDataSize {
        /// The intended array type.
        spec: ArraySpec,
        /// Elements the shape needs.
        expected: usize,
        /// Elements provided.
        actual: usize,
    },

    /// A buffer was read as the wrong element type.
    #[error("{context}: buffer holds {actual}, not {expected}")]
    DType {
        /// What was being done.
        context: String,
        /// The type asked for.
        expected: DType,
        /// The buffer's type.
        actual: DType,
    },

    /// A device index or id that does not exist.
    #[error("no addressable device {index} (the client has {count})")]
    NoSuchDevice {
        /// The index asked for.
        index: usize,
        /// How many there are.
        count: usize,
    },

    /// The plugin returned something xlayer cannot represent.
    #[error("unsupported by xlayer: {0}")]
    NotSupported(String),

    /// A Flax-style module error (`crate::flax`): a parameter whose shape
    /// differs from what the module asks for, a missing rng stream or
    /// variable, a collection that is not mutable, an unknown method. `path`
    /// is the scope path (`/Dense_0`) or the module's name.
    #[error("flax `{path}`: {message}")]
    Flax {
        /// The scope path or module at fault.
        path: String,
        /// What went wrong.
        message: String,
    },

    /// A builder op was misused (wrong rank, dtype, dimensions...).
    #[error("{op}: {message}")]
    Op {
        /// The op, e.g. `dot_general`.
        op: &'static str,
        /// What is wrong, with the shapes involved.
        message: String,
    },

    /// A program file could not be used (not text, bytecode or an export
    /// artifact; bytecode without a signature).
    #[error("program file {}: {reason}", path.display())]
    ProgramFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A safetensors file is invalid or holds what xlayer cannot use.
    #[error("safetensors file {}: {reason}", path.display())]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A tokenizer file could not be loaded or used.
    #[error("tokenizer {}: {reason}", path.display())]
    Tokenizer {
        /// The `tokenizer.json` file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },

    /// Checkpoint tensors are missing, unexpected, or of the wrong shape or
    /// dtype. Every wanted tensor is checked before anything is uploaded:
    /// `tensor` and `reason` are the first problem found, `more` the others
    /// (one line each in the message); nothing was uploaded.
    #[error("weights {}: tensor `{tensor}`: {reason}{}", file.display(), more_problems(more))]
    Weights {
        /// The checkpoint file.
        file: PathBuf,
        /// The tensor's key in the file.
        tensor: String,
        /// What is wrong.
        reason: String,
        /// Further problems of the same load, as `(tensor, reason)`.
        more: Vec<(String, String)>,
    },

    /// Host inputs do not fit a program: missing, extra, or of the wrong
    /// dtype or shape (the message names the tensor and both types).
    #[error("inputs: {0}")]
    Input(String),

    /// A `jax.export` artifact is malformed or asks for what xlayer cannot
    /// honour (platform, calling convention, symbolic shapes, effects).
    #[error("jax.export artifact: {0}")]
    Export(String),

    /// A file could not be read or written.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },

    // --- api-names ---
    /// No leaf of a tree (or weight of a [`crate::builder::VarBuilder`])
    /// lives at `path`.
    #[error("no value at path `{path}`")]
    UnknownPath {
        /// The full path that was asked for.
        path: Path,
    },

    /// A weight exists at `path` but with another shape or dtype than the
    /// code using it asks for.
    #[error("weight `{path}` is {found}, expected {expected}")]
    SpecMismatch {
        /// The weight's full path.
        path: Path,
        /// What the code asks for.
        expected: ArraySpec,
        /// What the weight is.
        found: ArraySpec,
    },

    /// The operands of an elementwise op have shapes that do not broadcast
    /// together (numpy's rules: trailing dimensions equal, or one of them 1).
    #[error("{op}: shapes {lhs} and {rhs} are not broadcast-compatible")]
    ShapeMismatch {
        /// The op, e.g. `add`.
        op: &'static str,
        /// The left operand's type.
        lhs: ArraySpec,
        /// The right operand's type.
        rhs: ArraySpec,
    },

    /// The operands of an op must share a dtype and do not.
    #[error("{op}: dtype mismatch: {lhs} vs {rhs} (convert one with .convert(), see builder::promote_types)")]
    DTypeMismatch {
        /// The op, e.g. `add`.
        op: &'static str,
        /// The left operand's type.
        lhs: ArraySpec,
        /// The right operand's type.
        rhs: ArraySpec,
    },

    /// A tree has another structure than the one expected (`what` names the
    /// trees, e.g. `adam: params and grads`); both lists of leaf paths.
    #[error("{what}: tree structures differ: expected paths {expected:?}, got {found:?}")]
    StructureMismatch {
        /// The trees compared.
        what: String,
        /// The expected leaf paths.
        expected: Vec<String>,
        /// The leaf paths found.
        found: Vec<String>,
    },

    /// A tree was rebuilt from a number of leaves other than its own.
    #[error("tree has {expected} leaves, got {found} values")]
    LeafCount {
        /// The tree's leaves.
        expected: usize,
        /// The values given.
        found: usize,
    },

    /// A single array was expected where a tree of several (or none) came.
    #[error("{what}: expected a single array, got a tree with paths {paths:?}")]
    NotALeaf {
        /// What returned or was given the tree.
        what: String,
        /// The tree's leaf paths.
        paths: Vec<String>,
    },

    /// A layer's weights or state were used before it was built (called
    /// once on inputs, or given its weights).
    #[error("layer `{layer}` is not built yet")]
    NotBuilt {
        /// The layer's name.
        layer: String,
    },

    /// `fit`/`evaluate` on a model that was not compiled with an optimizer
    /// and a loss.
    #[error("model `{model}`: call compile(optimizer, loss, metrics) before fit/evaluate")]
    NotCompiled {
        /// The model's name.
        model: String,
    },

    /// An argument is out of the range a function accepts (`what` names it,
    /// `expected` says what is accepted).
    #[error("{function}: {what} = {value}: expected {expected}")]
    OutOfRange {
        /// The function, e.g. `bench`.
        function: &'static str,
        /// The argument, e.g. `iters`.
        what: String,
        /// The value given, as written.
        value: String,
        /// What is accepted, e.g. `at least 1`.
        expected: String,
    },

    /// A program or executable returned fewer results than its caller needs.
    #[error("{what}: the program returned {found} result(s), {expected} needed")]
    MissingOutput {
        /// The program or its caller.
        what: String,
        /// Results needed.
        expected: usize,
        /// Results returned.
        found: usize,
    },

    /// Building a tree from paths found `path` twice, or both as a leaf and
    /// as the prefix of another path (`a` and `a/b`).
    #[error("path `{path}` is given twice, or both as a leaf and as a map")]
    PathConflict {
        /// The path at fault.
        path: Path,
    },

    // --- harden-build ---
    /// A dimension number given to an op is not below the rank it indexes
    /// (`what` names the list or field, e.g. `kernel_spatial`, `offset_dims`).
    #[error(
        "{op}: dimension {dim} in {what} is out of range for the {target}, which has rank {rank} (operand {operand})"
    )]
    DimensionOutOfRange {
        /// The op, e.g. `convolution`.
        op: &'static str,
        /// The dimension list or field at fault.
        what: &'static str,
        /// The dimension number given.
        dim: usize,
        /// What the number indexes (`input`, `kernel`, `output`, `operand`).
        target: &'static str,
        /// The rank it must be below.
        rank: usize,
        /// The op's (first) operand.
        operand: ArraySpec,
    },

    /// A dimension number is given twice where each must appear once
    /// (`dims` is the whole list, with the lists it shares a space with).
    #[error("{op}: dimension {dim} appears twice in {what} {dims:?} (operand {operand})")]
    DuplicateDimension {
        /// The op.
        op: &'static str,
        /// The dimension list(s) at fault.
        what: &'static str,
        /// The repeated dimension.
        dim: usize,
        /// The list as given.
        dims: Vec<usize>,
        /// The op's (first) operand.
        operand: ArraySpec,
    },

    /// An array type too large to describe: a dimension above `i64::MAX`,
    /// or an element count or byte size above `i64::MAX` (what XLA and the
    /// C API can hold). `what` names the array (an op's output, a program
    /// parameter, an upload).
    #[error("{what}: array type {spec} is too large (each dimension, the element count and the size in bytes must fit in i64)")]
    ShapeTooLarge {
        /// The array, e.g. `output of broadcast_in_dim` or `parameter 0 of @main`.
        what: String,
        /// Its type.
        spec: ArraySpec,
    },

    /// The shape arithmetic of an op (windows, padding, dilation, sums of
    /// sizes) overflows.
    #[error(
        "{op}: the output shape overflows for operands [{}] ({detail})",
        list_specs(operands)
    )]
    ShapeOverflow {
        /// The op.
        op: &'static str,
        /// Its operands' types.
        operands: Vec<ArraySpec>,
        /// The computation that overflowed.
        detail: String,
    },

    /// An op's integer attribute (a stride, dilation, window size, group
    /// count, interior padding) does not fit in the i64 that StableHLO
    /// stores it in.
    #[error("{op}: {what} {value} is larger than i64::MAX (operand {operand})")]
    AttributeTooLarge {
        /// The op.
        op: &'static str,
        /// The attribute, e.g. `strides`.
        what: &'static str,
        /// The value given.
        value: usize,
        /// The op's (first) operand.
        operand: ArraySpec,
    },

    /// Host memory for an array was refused before allocating: it needs
    /// more than `limit` bytes (the memory available, or a fixed limit).
    #[error(
        "{what}: {spec} needs {bytes} bytes of host memory, more than the {limit} bytes available"
    )]
    HostMemory {
        /// What the memory is for, e.g. `random input 0`.
        what: String,
        /// The array's type.
        spec: ArraySpec,
        /// Bytes it needs.
        bytes: u64,
        /// Bytes that may be used.
        limit: u64,
    },

    /// A program's declared signature differs from the compiled or
    /// deserialized executable's own parameter or result types.
    #[error(
        "executable `{program}`: its {part} are ({}), but the signature declares ({})",
        list_specs(compiled),
        list_specs(declared)
    )]
    SignatureMismatch {
        /// The executable's name.
        program: String,
        /// `parameters` or `results`.
        part: &'static str,
        /// The types the signature declares.
        declared: Vec<ArraySpec>,
        /// The executable's own types.
        compiled: Vec<ArraySpec>,
    },

    // --- harden-io ---
    /// A path that must name a file names a directory.
    #[error("{what} {}: is a directory, not a file", path.display())]
    IsADirectory {
        /// What the file was wanted for, e.g. "safetensors file".
        what: &'static str,
        /// The directory.
        path: PathBuf,
    },

    /// A safetensors header lists the same tensor name more than once.
    #[error("safetensors file {}: the header lists tensor `{tensor}` more than once", path.display())]
    DuplicateTensor {
        /// The file.
        path: PathBuf,
        /// The repeated name.
        tensor: String,
    },

    /// A safetensors file is shorter than its header says: `tensor` is the
    /// first tensor whose data lies (partly) past the end of the file.
    #[error("safetensors file {}: truncated: tensor `{tensor}` ends at byte {needed} but the file has {actual} bytes", path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// The first tensor whose data is cut off.
        tensor: String,
        /// The file size its data needs (header included).
        needed: u64,
        /// The file's size.
        actual: u64,
    },

    /// A model's `config.json` holds a value that is missing, out of
    /// bounds, or contradicted by the checkpoint (checked before anything
    /// is allocated for it).
    #[error("model config {}: `{field}` = {value}: {reason}", file.display())]
    ModelConfig {
        /// The `config.json` file.
        file: PathBuf,
        /// The field at fault, e.g. `num_hidden_layers`.
        field: &'static str,
        /// Its value as written (`missing` when absent).
        value: String,
        /// What is wrong with it.
        reason: String,
    },

    // --- cache-key ---
    /// The compilation cache folder can be written by its group or by
    /// others. Whoever can write it can plant an executable there that this
    /// process would load and run, so it is refused.
    #[error("the compilation cache folder {} has mode {mode:03o}, so its group or others can write it; \
             whoever can write it can make this process load their code. \
             Run `chmod go-w {}`, or set XLAYER_CACHE_DIR to a private folder (or `off`)",
            path.display(), path.display())]
    CacheDirWritableByOthers {
        /// The folder.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },

    /// The compilation cache folder belongs to another user (who can write
    /// it, and so make this process load their code), so it is refused.
    #[error("the compilation cache folder {} belongs to user {owner}, not to this process's user {uid}; \
             whoever can write it can make this process load their code. \
             Set XLAYER_CACHE_DIR to a folder of your own (or `off`)", path.display())]
    CacheDirNotOwned {
        /// The folder.
        path: PathBuf,
        /// Its owner's user id.
        owner: u32,
        /// This process's effective user id.
        uid: u32,
    },

    /// The compilation cache path exists and is not a folder.
    #[error("the compilation cache path {} is not a folder; set XLAYER_CACHE_DIR to a folder (or `off`)", path.display())]
    CacheDirNotAFolder {
        /// The path.
        path: PathBuf,
    },

    /// The plugin's file on disk is no longer the one that was loaded
    /// (replaced, rewritten or touched since), so its content cannot
    /// identify the running build; the compilation cache is not used for it.
    #[error("the PJRT plugin file {} changed on disk since it was loaded; the compilation cache cannot identify the running build", path.display())]
    PluginFileChanged {
        /// The plugin file.
        path: PathBuf,
    },

    // --- llm ---
    /// A GGUF file is truncated, corrupt, or holds what xlayer cannot use
    /// (see [`crate::gguf::GgufProblem`]); `tensor` names the tensor at
    /// fault, when one is.
    #[error("GGUF file {}: {}{problem}", path.display(), tensor_prefix(tensor))]
    Gguf {
        /// The file.
        path: PathBuf,
        /// The tensor at fault, if any.
        tensor: Option<String>,
        /// What is wrong.
        problem: crate::gguf::GgufProblem,
    },

    /// An isolated compile ([`crate::CompileOptions::isolated`]) killed its
    /// child process: the plugin crashed (or aborted) on this program. The
    /// calling process is unaffected.
    #[error("the PJRT plugin crashed compiling `{program}` in an isolated child process ({}); this process is unaffected{}", crate::pjrt::isolate::describe_exit(*signal, *exit_code), stderr_tail(stderr))]
    PluginCrashed {
        /// The program's name.
        program: String,
        /// The signal that killed the child (11 = SIGSEGV, 6 = SIGABRT,
        /// 8 = SIGFPE...), if one did.
        signal: Option<i32>,
        /// The child's exit code, when it exited without a signal.
        exit_code: Option<i32>,
        /// The last lines the child wrote to stderr.
        stderr: String,
    },

    /// An isolated compile could not be run: the child program was not
    /// found, could not be started, or did not answer as an `xlayer`
    /// binary does.
    #[error("isolated compile with child {}: {reason}", child.display())]
    Isolation {
        /// The child program (the `xlayer` binary).
        child: PathBuf,
        /// What went wrong.
        reason: String,
    },

    /// A text program nests types or attributes deeper than the plugin's
    /// recursive parser can take without overflowing its stack.
    #[error("program `{program}`: line {line} nests {depth} levels deep; more than {limit} is refused (the plugin's parser would overflow its stack)")]
    ProgramTooDeep {
        /// The program's name.
        program: String,
        /// The 1-based line where the limit is passed.
        line: usize,
        /// The depth reached there.
        depth: usize,
        /// The deepest nesting accepted.
        limit: usize,
    },

    /// A text program divides integer constants by a constant zero, which
    /// crashes XLA's constant folding (SIGFPE) instead of giving XLA's
    /// defined result.
    #[error("program `{program}`: line {line}: `{op}` of integer constants by the constant zero (XLA's constant folding crashes on it)")]
    ConstantDivisionByZero {
        /// The program's name.
        program: String,
        /// The 1-based line of the division.
        line: usize,
        /// The op, e.g. `stablehlo.remainder`.
        op: String,
    },
    /// The plugin could not compile a program that calls one of jaxlib's
    /// own CPU kernels: its LAPACK wrappers, what `jax.numpy.linalg` and
    /// `jax.scipy.linalg` lower to on CPU inside a `jax.export` artifact.
    /// They live in jaxlib, not in XLA, so no PJRT plugin provides them.
    #[error("program `{program}` calls {}, jaxlib's own CPU LAPACK kernels (what jax.numpy.linalg lowers to on CPU); they are part of jaxlib, not of XLA, so no PJRT plugin provides them: compute that part outside the program and pass its result in as an input (the plugin said: {message})", quoted_list(targets))]
    JaxlibKernel {
        /// The program's name.
        program: String,
        /// The custom calls' targets, e.g. `lapack_sgetrf_ffi`.
        targets: Vec<String>,
        /// The plugin's own message.
        message: String,
    },
    // --- typed-errors ---
    /// A setting of a layer, model or function (`what`) has a value it does
    /// not accept: `field` is the setting, `value` its value as written,
    /// `reason` what is accepted or what it contradicts.
    #[error("{what}: `{field}` = {value}: {reason}")]
    InvalidSetting {
        /// The layer, model or function, e.g. `BatchNormalization`.
        what: String,
        /// The setting, e.g. `momentum`.
        field: &'static str,
        /// Its value as written.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A value given for `path` of `what` (a layer's state, weights, an
    /// input) has another type than the one it replaces or must match.
    #[error("{what}: `{path}` is {found}, expected {expected}")]
    ValueSpecMismatch {
        /// The layer, model or function, e.g. `layer `dense``.
        what: String,
        /// The path (or name) of the value.
        path: String,
        /// The type expected (boxed to keep `Error` small).
        expected: Box<ArraySpec>,
        /// The type given.
        found: Box<ArraySpec>,
    },

    /// A tree given to `what` lacks paths, or has paths it does not know.
    #[error("{what}: the tree's structure differs (missing paths {missing:?}, unexpected paths {unexpected:?}; expected paths {expected:?})")]
    TreePaths {
        /// What the tree was given to, e.g. `layer `bn`: new state`.
        what: String,
        /// Expected paths that are missing.
        missing: Vec<String>,
        /// Paths given that are not expected.
        unexpected: Vec<String>,
        /// All expected paths.
        expected: Vec<String>,
    },

    /// A function needs a random key, but none is available (inference mode).
    #[error("{function} takes `rng`, but none is available in inference mode; call it in training mode or use `Option<Rng>`")]
    MissingRng {
        /// The function or layer.
        function: String,
    },

    /// Something that must not be empty is (`what` names it, `reason` what
    /// is needed).
    #[error("{what}: {reason}")]
    Empty {
        /// The function or value, e.g. `predict`.
        what: String,
        /// What is needed, e.g. `at least one row`.
        reason: &'static str,
    },

    /// Training or prediction data that does not fit the model's inputs.
    #[error("{what} is {found}, but {expected}")]
    DataMismatch {
        /// The data, e.g. `x`.
        what: &'static str,
        /// Its type.
        found: ArraySpec,
        /// What the model takes, e.g. `the model takes f32 rows of [4]`.
        expected: String,
    },

    /// A name (a layer, a state variable, a method, a module input) that is
    /// not known where it is used.
    #[error("{what}: no {kind} `{name}`{}", known_list(known))]
    UnknownName {
        /// Where it was looked up, e.g. `model `mlp``.
        what: String,
        /// What kind of name, e.g. `layer`.
        kind: &'static str,
        /// The name.
        name: String,
        /// The names that exist (empty when not listed).
        known: Vec<String>,
    },

    /// A name given twice where each must be unique.
    #[error("{what}: two different {kind}s are named `{name}`")]
    DuplicateName {
        /// Where, e.g. `Model`.
        what: String,
        /// What kind of name, e.g. `layer`.
        kind: &'static str,
        /// The name.
        name: String,
    },

    /// A model output depends on an `Input` that is not among the model's
    /// inputs.
    #[error("an output depends on an Input {input} that is not among the model's inputs")]
    ForeignInput {
        /// The input's shape, e.g. `(None, 4) f32`.
        input: String,
    },

    /// An axis out of range for the rank of an input: not in
    /// `-rank..rank` (see [`crate::builder::normalize_axis`]).
    #[error("{op}: axis {axis} is out of range for rank {rank}{}", input.as_ref().map(|i| format!(" (input {i})")).unwrap_or_default())]
    AxisOutOfRange {
        /// The op or function, e.g. `softmax`.
        op: &'static str,
        /// The axis as given (negative from the end).
        axis: i64,
        /// The number of axes it may address.
        rank: usize,
        /// The input's type, when there is one.
        input: Option<ArraySpec>,
    },

    /// A range of rows outside an array's first dimension (or an array
    /// without rows).
    #[error("rows {start}..{end} out of range for {spec}")]
    RowsOutOfRange {
        /// The array's type.
        spec: ArraySpec,
        /// First row asked for.
        start: usize,
        /// End of the rows asked for.
        end: usize,
    },

    /// A tree that must be a map (of collections, of layers) is not.
    #[error("{what}: expected a map, got a tree with paths {paths:?}")]
    NotAMap {
        /// What the tree is.
        what: String,
        /// The tree's leaf paths.
        paths: Vec<String>,
    },

    /// A tree that must be a tuple is not.
    #[error("{what}: expected a tuple, got a tree with paths {paths:?}")]
    NotATuple {
        /// What the tree is.
        what: String,
        /// The tree's leaf paths.
        paths: Vec<String>,
    },

    /// A function was used in a way or state that it does not support
    /// (`what` names it, `reason` what is wrong).
    #[error("{what}: {reason}")]
    Misuse {
        /// The function, layer or model.
        what: String,
        /// What is wrong.
        reason: &'static str,
    },

    // --- shard-collectives ---
    /// A collective (`psum`, `axis_index`...) recorded outside every
    /// manual region (`shard_map` body).
    #[error("{op}: collectives name mesh axes and run only inside a shard_map body")]
    NotInManualRegion {
        /// The op.
        op: &'static str,
    },

    /// A collective's operand dimension does not fit the axis size.
    #[error("{op} over {axes:?} (size {axis_size}): dimension {dim} of {operand} {}", if *exact { "must equal the axis size (tiled=false)" } else { "is not divisible by the axis size" })]
    CollectiveShape {
        /// The op.
        op: &'static str,
        /// The mesh axes.
        axes: Vec<String>,
        /// Devices along them.
        axis_size: usize,
        /// The dimension.
        dim: usize,
        /// The operand.
        operand: ArraySpec,
        /// Whether the dimension must equal the axis size (untiled)
        /// rather than be divisible by it.
        exact: bool,
    },

    /// A `ppermute` permutation that is not one.
    #[error("{op} over `{axis}` (size {axis_size}): pairs {pairs:?}: {reason}")]
    InvalidPermutation {
        /// The op.
        op: &'static str,
        /// The axis.
        axis: String,
        /// Devices along it.
        axis_size: usize,
        /// The `(source, target)` pairs given.
        pairs: Vec<(usize, usize)>,
        /// What is wrong.
        reason: &'static str,
    },

    // --- shard-core ---
    /// A single-device call (`execute`, `execute_args`) on an executable
    /// that spans several devices.
    #[error("executable `{program}` runs on {devices} devices: call execute_sharded with one argument list per device")]
    MultiDeviceExecutable {
        /// The executable's name.
        program: String,
        /// How many devices it spans.
        devices: usize,
    },

    /// A multi-device run got another number of per-device argument lists
    /// than the executable's devices.
    #[error("executable `{program}` runs on {expected} device(s) and takes one argument list per device, got {actual}")]
    DeviceListCount {
        /// The executable's name.
        program: String,
        /// Its device count.
        expected: usize,
        /// Lists passed.
        actual: usize,
    },

    /// The argument list of one device has the wrong length.
    #[error("executable `{program}`, device {device}: takes {expected} argument(s), got {actual}")]
    ShardArgumentCount {
        /// The executable's name.
        program: String,
        /// Position of the device among the executable's devices.
        device: usize,
        /// Parameters of `@main`.
        expected: usize,
        /// Buffers passed.
        actual: usize,
    },

    /// One device's argument has another dtype or shard shape than the
    /// compiled program's per-device parameter.
    #[error("argument {index} for device {device} of `{program}`: expected the shard {expected}, got {actual}")]
    ShardArgumentType {
        /// The executable's name.
        program: String,
        /// Position of the device among the executable's devices.
        device: usize,
        /// Position of the argument.
        index: usize,
        /// The per-device parameter type.
        expected: ArraySpec,
        /// The buffer's type.
        actual: ArraySpec,
    },

    /// One device's argument lives on another device.
    #[error("argument {index} for device {device} of `{program}` is on device {actual}, but that list runs on device {expected}")]
    ShardArgumentDevice {
        /// The executable's name.
        program: String,
        /// Position of the device among the executable's devices.
        device: usize,
        /// Position of the argument.
        index: usize,
        /// The device the list runs on.
        expected: String,
        /// The buffer's device.
        actual: String,
    },

    /// More (or other) devices are needed than there are: a device
    /// assignment of the wrong length, a mesh larger than the client's
    /// device count.
    #[error("{what} needs {expected} device(s), but {actual} are given or available")]
    DeviceCount {
        /// What needs the devices.
        what: String,
        /// Devices needed.
        expected: usize,
        /// Devices given or available.
        actual: usize,
    },

    /// A device listed twice where each must appear once (a device
    /// assignment, a mesh).
    #[error("{what}: device {device} appears twice")]
    DuplicateDevice {
        /// The list, e.g. `mesh ('data', 'model')`.
        what: String,
        /// The device.
        device: String,
    },

    /// A mesh shape that cannot be: names and sizes of different counts,
    /// no axis, an axis of size 0, a bad axis name.
    #[error("mesh of shape {shape:?} over axes {axis_names:?}: {reason}")]
    MeshShape {
        /// The sizes given.
        shape: Vec<usize>,
        /// The names given.
        axis_names: Vec<String>,
        /// What is wrong.
        reason: &'static str,
    },

    /// A partition spec names more dimensions than the array has.
    #[error("`{tensor}`: partition spec {spec} names more dimensions than its rank {rank}")]
    SpecRank {
        /// The array.
        tensor: String,
        /// The spec, as JAX writes it.
        spec: String,
        /// The array's rank.
        rank: usize,
    },

    /// A partition spec names an axis the mesh lacks.
    #[error("`{tensor}`: no mesh axis `{axis}` (the mesh has {mesh_axes:?})")]
    UnknownMeshAxis {
        /// The array.
        tensor: String,
        /// The axis named.
        axis: String,
        /// The mesh's axes.
        mesh_axes: Vec<String>,
    },

    /// A partition spec uses one mesh axis for two dimensions (or twice
    /// for one).
    #[error("`{tensor}`: mesh axis `{axis}` is used twice in {spec}")]
    MeshAxisReused {
        /// The array.
        tensor: String,
        /// The axis.
        axis: String,
        /// The spec, as JAX writes it.
        spec: String,
    },

    /// A dimension its mesh axes cannot split evenly.
    #[error("`{tensor}`: dimension {dim} of size {size} is not divisible by {shards} (mesh axes {axes:?})")]
    IndivisibleDimension {
        /// The array.
        tensor: String,
        /// The dimension.
        dim: usize,
        /// Its size.
        size: usize,
        /// The axes splitting it.
        axes: Vec<String>,
        /// The product of their sizes.
        shards: usize,
    },

    // --- speed-suite ---
    /// A per-compile XLA flag the plugin does not know (its compiler has no
    /// such debug option; names differ between plugin builds).
    #[error("the PJRT plugin {} has no XLA flag `{name}` (set through CompileOptions::xla_flag)", plugin.display())]
    UnknownXlaFlag {
        /// The flag's name.
        name: String,
        /// The plugin file.
        plugin: PathBuf,
    },

    /// A per-compile XLA flag the plugin knows, given a value it refuses.
    #[error("the PJRT plugin {} refuses XLA flag `{name}` = {value}: {message}", plugin.display())]
    InvalidXlaFlag {
        /// The flag's name.
        name: String,
        /// The value given.
        value: crate::pjrt::compile_options::XlaFlag,
        /// The plugin file.
        plugin: PathBuf,
        /// The plugin's reason.
        message: String,
    },

    // --- tp-minilm ---
    /// A tensor asked of a safetensors file is not in it.
    #[error("safetensors file {}: no tensor named `{tensor}`", path.display())]
    TensorNotInFile {
        /// The file.
        path: PathBuf,
        /// The missing tensor's name.
        tensor: String,
    },

    // --- one-of-each ---
    /// A safetensors tensor has a dtype xlayer does not hold.
    #[error("{}{}dtype {dtype} is not supported by xlayer (supported: BOOL, I8..I64, U8..U64, F16, BF16, F32, F64)", file.as_ref().map(|f| format!("safetensors file {}: ", f.display())).unwrap_or_default(), tensor.as_ref().map(|t| format!("tensor `{t}` has ")).unwrap_or_default())]
    SafetensorsDtype {
        /// The safetensors dtype's name (`F8_E4M3`, `C64`, ...).
        dtype: String,
        /// The file, when known.
        file: Option<PathBuf>,
        /// The tensor, when known.
        tensor: Option<String>,
    },

    // --- multiproc ---
    /// No process put `key` into the key-value store of a distributed run
    /// within the time a get waited.
    #[error("key-value store {}: no value for key `{key}` within {timeout_ms} ms (did every node start, with the same store?)", store.display())]
    KvTimeout {
        /// The key waited for.
        key: String,
        /// The store (its folder, for a `FileKvStore`).
        store: PathBuf,
        /// How long the get waited.
        timeout_ms: u64,
    },

    /// A non-waiting get found no value for `key` (reported to the plugin
    /// as `NOT_FOUND`).
    #[error("key-value store: no value for key `{key}`")]
    KvNotFound {
        /// The key asked for.
        key: String,
    },

    /// A client made for a multi-process run came up seeing only its own
    /// devices: the plugin has no cross-process runtime (the pinned CPU
    /// plugin ignores `node_id` / `num_nodes` and has only in-process
    /// collectives).
    #[error("the {platform} plugin {} did not join a {num_nodes}-process run: it sees {global_devices} device(s) in all, {local_devices} of them its own, and called the key-value store {store_calls} time(s); it has no cross-process runtime (docs/sharding.md, \"More than one process\")", plugin.display())]
    DistributedUnsupported {
        /// The client's platform name.
        platform: String,
        /// The plugin file.
        plugin: PathBuf,
        /// The node count asked for.
        num_nodes: usize,
        /// Devices of the whole run, as the client reports them.
        global_devices: usize,
        /// The client's own (addressable) devices.
        local_devices: usize,
        /// How many times the plugin called the store.
        store_calls: usize,
    },
}

impl Error {
    /// Whether the plugin lacks the operation: the C API function is absent
    /// ([`Error::Unsupported`]) or answers `Unimplemented` (e.g. the cost
    /// analysis of the default CPU build). Callers fall back or report the
    /// result unknown instead of failing.
    pub fn is_unimplemented(&self) -> bool {
        matches!(
            self,
            Error::Unsupported { .. }
                | Error::Pjrt {
                    code: ErrorCode::Unimplemented,
                    ..
                }
        )
    }
}

/// `; known: a, b` for [`Error::UnknownName`] messages.
fn known_list(known: &[String]) -> String {
    if known.is_empty() {
        String::new()
    } else {
        format!(" (known: {})", known.join(", "))
    }
}

/// The tail of an [`Error::PluginCrashed`] message: the child's last
/// stderr lines, if any.
fn stderr_tail(stderr: &str) -> String {
    if stderr.trim().is_empty() {
        String::new()
    } else {
        format!("; its stderr ends with:\n{}", stderr.trim_end())
    }
}

/// `tensor `name`: ` for [`Error::Gguf`] messages about one tensor.
fn tensor_prefix(tensor: &Option<String>) -> String {
    tensor
        .as_ref()
        .map(|t| format!("tensor `{t}`: "))
        .unwrap_or_default()
}

/// `f32[2], i32[]`: a list of array types for messages.
fn list_specs(specs: &[ArraySpec]) -> String {
    specs
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `` `a`, `b` ``: names in backquotes, for [`Error::JaxlibKernel`].
fn quoted_list(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The tail of an [`Error::Weights`] message: one line per further problem.
fn more_problems(more: &[(String, String)]) -> String {
    if more.is_empty() {
        return String::new();
    }
    let mut s = format!(" (and {} more)", more.len());
    for (tensor, reason) in more {
        s.push_str(&format!("\n  tensor `{tensor}`: {reason}"));
    }
    s
}

/// The result type of xlayer.
pub type Result<T> = std::result::Result<T, Error>;
