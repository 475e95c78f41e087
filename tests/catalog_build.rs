//! Regression tests for the reliability catalog (issue 11, section 3):
//! builder inputs that used to panic, and sizes that used to overflow (a
//! debug panic, or a wrapped size handed to XLA that aborts the process).
//! Each must now be a typed `xlayer::Error` naming the culprit.
//!
//! Every case runs in a child process (this test binary, re-run with
//! `--exact NAME` and `XLAYER_CATALOG_CHILD` set): a case that still
//! panics or aborts fails alone, and cannot hide the others.

use std::process::Command;
use std::sync::OnceLock;

use xlayer::builder::{Builder, ConvAttrs, ConvDims, GatherDims, ScatterDims, ScatterMode, Value};
use xlayer::{ArraySpec, Client, DType, Error, Program};

const CHILD: &str = "XLAYER_CATALOG_CHILD";

/// Runs `body` in a child process (see the module docs); in the child,
/// runs it here.
fn isolated(name: &str, body: impl FnOnce()) {
    if std::env::var_os(CHILD).is_some() {
        body();
        println!("catalog case {name} passed");
        return;
    }
    let out = Command::new(std::env::current_exe().expect("test binary"))
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .expect("run the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains(&format!("catalog case {name} passed")),
        "case {name} failed in its child process ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
}

macro_rules! case {
    ($name:ident, $body:block) => {
        #[test]
        fn $name() {
            isolated(stringify!($name), || $body);
        }
    };
}

fn client() -> &'static Client {
    static C: OnceLock<Client> = OnceLock::new();
    C.get_or_init(|| Client::cpu().expect("CPU client"))
}

fn f32_param(b: &Builder, dims: &[usize]) -> Value {
    b.parameter(ArraySpec::of::<f32>(dims), "x").unwrap()
}

fn conv_case(edit: impl FnOnce(&mut ConvDims)) -> Error {
    let b = Builder::new();
    let img = f32_param(&b, &[1, 8, 8, 3]);
    let k = b
        .parameter(ArraySpec::of::<f32>([3, 3, 3, 4]), "k")
        .unwrap();
    let mut dims = ConvDims::nhwc(2);
    edit(&mut dims);
    img.conv_general(&k, &ConvAttrs::new(dims)).unwrap_err()
}

// ------------------------------------------------------------ builder panics

case!(conv_input_spatial_beyond_rank, {
    let e = conv_case(|d| d.input_spatial = vec![1, 7]);
    assert!(
        matches!(
            e,
            Error::DimensionOutOfRange {
                op: "convolution",
                what: "input_spatial",
                dim: 7,
                rank: 4,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .contains("dimension 7 in input_spatial is out of range"),
        "{e}"
    );
});

case!(conv_kernel_and_output_dims_beyond_rank, {
    let e = conv_case(|d| d.kernel_spatial = vec![0, 9]);
    assert!(
        matches!(e, Error::DimensionOutOfRange { what: "kernel_spatial", dim: 9, target: "kernel", ref operand, .. } if operand.dims == [3, 3, 3, 4]),
        "{e:?}"
    );
    let e = conv_case(|d| d.output_spatial = vec![1, 5]);
    assert!(
        matches!(
            e,
            Error::DimensionOutOfRange {
                what: "output_spatial",
                dim: 5,
                ..
            }
        ),
        "{e:?}"
    );
    let e = conv_case(|d| d.input_feature = 11);
    assert!(
        matches!(
            e,
            Error::DimensionOutOfRange {
                what: "input_feature",
                dim: 11,
                ..
            }
        ),
        "{e:?}"
    );
    let e = conv_case(|d| d.kernel_output_feature = usize::MAX);
    assert!(
        matches!(
            e,
            Error::DimensionOutOfRange {
                what: "kernel_output_feature",
                ..
            }
        ),
        "{e:?}"
    );
});

case!(conv_duplicate_dimension_numbers_rejected_in_rust, {
    // Used to pass the builder and reach the plugin's parser.
    let e = conv_case(|d| d.input_spatial = vec![1, 1]);
    assert!(
        matches!(
            e,
            Error::DuplicateDimension {
                op: "convolution",
                what: "input dimension numbers",
                dim: 1,
                ..
            }
        ),
        "{e:?}"
    );
    let e = conv_case(|d| d.kernel_input_feature = d.kernel_output_feature);
    assert!(
        matches!(
            e,
            Error::DuplicateDimension {
                what: "kernel dimension numbers",
                ..
            }
        ),
        "{e:?}"
    );
    let e = conv_case(|d| d.output_batch = d.output_feature);
    assert!(
        matches!(
            e,
            Error::DuplicateDimension {
                what: "output dimension numbers",
                ..
            }
        ),
        "{e:?}"
    );
});

case!(conv_dilation_overflow, {
    let b = Builder::new();
    let img = f32_param(&b, &[1, 8, 8, 3]);
    let k = b
        .parameter(ArraySpec::of::<f32>([3, 3, 3, 4]), "k")
        .unwrap();
    let attrs = ConvAttrs::new(ConvDims::nhwc(2)).lhs_dilation(&[usize::MAX, 1]);
    let e = img.conv_general(&k, &attrs).unwrap_err();
    assert!(
        matches!(
            e,
            Error::ShapeOverflow {
                op: "convolution",
                ..
            }
        ),
        "{e:?}"
    );
    let attrs = ConvAttrs::new(ConvDims::nhwc(2)).padding(&[(i64::MAX, i64::MAX), (0, 0)]);
    let e = img.conv_general(&k, &attrs).unwrap_err();
    assert!(
        matches!(e, Error::ShapeOverflow { .. } | Error::ShapeTooLarge { .. }),
        "{e:?}"
    );
});

case!(gather_duplicate_offset_dims, {
    let b = Builder::new();
    let x = f32_param(&b, &[5, 3, 2]);
    let idx = b.parameter(ArraySpec::of::<i32>([4, 1]), "idx").unwrap();
    let dims = GatherDims {
        offset_dims: vec![1, 1],
        collapsed_slice_dims: vec![0],
        start_index_map: vec![0],
        index_vector_dim: 1,
    };
    let e = x.gather(&idx, &dims, &[1, 3, 2]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::DuplicateDimension {
                op: "gather",
                what: "offset_dims",
                dim: 1,
                ..
            }
        ),
        "{e:?}"
    );
    let dims = GatherDims {
        offset_dims: vec![1, 2],
        collapsed_slice_dims: vec![0, 0],
        start_index_map: vec![0],
        index_vector_dim: 1,
    };
    let e = x.gather(&idx, &dims, &[1, 3, 2]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::DuplicateDimension {
                what: "collapsed_slice_dims",
                ..
            }
        ),
        "{e:?}"
    );
    let dims = GatherDims {
        offset_dims: vec![1, 2],
        collapsed_slice_dims: vec![7],
        start_index_map: vec![0],
        index_vector_dim: 1,
    };
    let e = x.gather(&idx, &dims, &[1, 3, 2]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::DimensionOutOfRange {
                what: "collapsed_slice_dims",
                dim: 7,
                rank: 3,
                ..
            }
        ),
        "{e:?}"
    );
});

case!(scatter_bad_dimension_numbers, {
    let b = Builder::new();
    let x = f32_param(&b, &[5, 3]);
    let idx = b.parameter(ArraySpec::of::<i32>([4, 1]), "idx").unwrap();
    let u = b.zeros(DType::F32, &[4, 3]).unwrap();
    let mut dims = ScatterDims {
        update_window_dims: vec![1],
        inserted_window_dims: vec![9],
        scatter_dims_to_operand_dims: vec![0],
        index_vector_dim: 1,
    };
    let e = x.scatter(&idx, &u, &dims, ScatterMode::Add).unwrap_err();
    assert!(
        matches!(
            e,
            Error::DimensionOutOfRange {
                op: "scatter",
                what: "inserted_window_dims",
                dim: 9,
                ..
            }
        ),
        "{e:?}"
    );
    dims.inserted_window_dims = vec![0];
    dims.update_window_dims = vec![1, 1];
    let e = x.scatter(&idx, &u, &dims, ScatterMode::Add).unwrap_err();
    assert!(
        matches!(
            e,
            Error::DuplicateDimension {
                what: "update_window_dims",
                ..
            }
        ),
        "{e:?}"
    );
});

case!(shape_ops_reject_repeated_or_out_of_range_dims, {
    let b = Builder::new();
    let x = f32_param(&b, &[2, 3, 1]);
    let e = x.transpose(&[0, 0, 1]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::DuplicateDimension {
                op: "transpose",
                dim: 0,
                ..
            }
        ),
        "{e:?}"
    );
    let e = x.transpose(&[0, 1, 3]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::DimensionOutOfRange {
                op: "transpose",
                dim: 3,
                rank: 3,
                ..
            }
        ),
        "{e:?}"
    );
    let e = x.sum(&[1, 1], false).unwrap_err();
    assert!(
        matches!(
            e,
            Error::DuplicateDimension {
                what: "axes",
                dim: 1,
                ..
            }
        ),
        "{e:?}"
    );
    let e = x.max(&[4], true).unwrap_err();
    assert!(
        matches!(
            e,
            Error::DimensionOutOfRange {
                what: "axes",
                dim: 4,
                ..
            }
        ),
        "{e:?}"
    );
    let e = x.broadcast_in_dim(&[2, 3, 4], &[0, 1, 3]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::DimensionOutOfRange {
                op: "broadcast_in_dim",
                target: "output",
                dim: 3,
                ..
            }
        ),
        "{e:?}"
    );
    let e = x.broadcast_in_dim(&[2, 3, 4], &[0, 1, 1]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::DuplicateDimension {
                op: "broadcast_in_dim",
                ..
            }
        ),
        "{e:?}"
    );
    let e = x.reverse(&[2, 2]).unwrap_err();
    assert!(
        matches!(e, Error::DuplicateDimension { op: "reverse", .. }),
        "{e:?}"
    );
    let e = x.squeeze(&[5]).unwrap_err();
    assert!(
        matches!(e, Error::DimensionOutOfRange { op: "squeeze", .. }),
        "{e:?}"
    );
});

// ------------------------------------------------------------ unchecked sizes

fn assert_too_large(e: Error, dims: &[usize]) {
    assert!(
        matches!(e, Error::ShapeTooLarge { ref spec, .. } if spec.dims == dims),
        "{e:?}"
    );
    assert!(e.to_string().contains("too large"), "{e}");
}

case!(parameter_dims_whose_product_overflows, {
    let b = Builder::new();
    let dims = [1usize << 32, 1 << 32];
    let e = b.parameter(ArraySpec::of::<f32>(dims), "big").unwrap_err();
    assert!(e.to_string().contains("parameter `big`"), "{e}");
    assert_too_large(e, &dims);
    // a usize::MAX dimension would reach the plugin as -1
    let e = b
        .parameter(ArraySpec::of::<u8>([usize::MAX]), "m")
        .unwrap_err();
    assert_too_large(e, &[usize::MAX]);
});

case!(op_outputs_whose_size_overflows, {
    let b = Builder::new();
    let x = f32_param(&b, &[4]);
    let e = x
        .broadcast_in_dim(&[1 << 40, 1 << 40, 4], &[2])
        .unwrap_err();
    assert!(e.to_string().contains("output of broadcast_in_dim"), "{e}");
    assert_too_large(e, &[1 << 40, 1 << 40, 4]);
    let e = b.zeros(DType::F64, &[1 << 61]).unwrap_err();
    assert_too_large(e, &[1 << 61]);
    let e = b.iota(DType::I32, &[usize::MAX, 2], 0).unwrap_err();
    assert_too_large(e, &[usize::MAX, 2]);
    let e = x
        .pad(&x.scalar_like(0.0).unwrap(), &[i64::MAX], &[0], &[0])
        .unwrap_err();
    assert!(matches!(e, Error::ShapeTooLarge { .. }), "{e:?}");
    let e = x
        .pad(&x.scalar_like(0.0).unwrap(), &[0], &[0], &[usize::MAX])
        .unwrap_err();
    assert!(matches!(e, Error::ShapeOverflow { op: "pad", .. }), "{e:?}");
    let e = b.constant::<f32>(&[], &[1 << 32, 1 << 32]).unwrap_err();
    assert_too_large(e, &[1 << 32, 1 << 32]);
});

case!(concatenate_sizes_that_overflow, {
    let b = Builder::new();
    let x = b.parameter(ArraySpec::of::<u8>([1 << 62]), "x").unwrap();
    let e = Value::concatenate(&[x.clone(), x.clone()], 0).unwrap_err();
    assert_too_large(e, &[1 << 63]);
    let e = Value::concatenate(&vec![x; 5], 0).unwrap_err();
    assert!(
        matches!(
            e,
            Error::ShapeOverflow {
                op: "concatenate",
                ..
            }
        ),
        "{e:?}"
    );
});

case!(uploads_whose_size_overflows, {
    let c = client();
    let e = c
        .buffer_from_host::<f32>(&[], &[1 << 32, 1 << 32])
        .unwrap_err();
    assert_too_large(e, &[1 << 32, 1 << 32]);
    let spec = ArraySpec::of::<u8>([usize::MAX]);
    let e = c
        .buffer_from_bytes(&[], &spec, c.default_device())
        .unwrap_err();
    assert_too_large(e, &[usize::MAX]);
    // the same with a plausible byte count: 2^62 f32 needs 2^64 bytes
    let spec = ArraySpec::of::<f32>([1 << 62]);
    let e = c
        .buffer_from_bytes(&[0; 16], &spec, c.default_device())
        .unwrap_err();
    assert_too_large(e, &[1 << 62]);
});

case!(text_program_with_overflowing_tensor_type, {
    let text = "func.func public @main(%a: tensor<4294967296x4294967296xf32>) -> tensor<4294967296x4294967296xf32> {\n  return %a : tensor<4294967296x4294967296xf32>\n}";
    let e = Program::mlir_text(text).unwrap_err();
    assert_too_large(e, &[1 << 32, 1 << 32]);
    // a dimension past i64 that still parses as usize
    let text = "func.func public @main(%a: tensor<18446744073709551615xi8>) -> tensor<i8> {\n  %0 = stablehlo.constant dense<0> : tensor<i8>\n  return %0 : tensor<i8>\n}";
    let e = Program::mlir_text(text).unwrap_err();
    assert_too_large(e, &[usize::MAX]);
});

// ------------------------------------------------------------ command line

/// A fresh directory for one case's files.
fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("xlayer-catalog-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs the `xlayer` binary; returns (exit code, stderr). A signal (abort)
/// or a Rust panic fails the test.
fn xlayer(args: &[&std::ffi::OsStr]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_xlayer"))
        .args(args)
        .output()
        .expect("run xlayer");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.code().is_some(),
        "xlayer {args:?} was killed: {}\n{err}",
        out.status
    );
    assert!(
        !err.contains("panicked"),
        "xlayer {args:?} panicked:\n{err}"
    );
    (out.status.code(), err)
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

case!(cli_bench_random_checks_the_size_before_allocating, {
    // 1e11 f32 = 400 GB: used to be allocated first (abort on failure).
    let dir = scratch("bench-random");
    let big = dir.join("big.mlir");
    std::fs::write(
        &big,
        "func.func public @main(%a: tensor<100000000000xf32>) -> tensor<100000000000xf32> {\n  return %a : tensor<100000000000xf32>\n}\n",
    )
    .unwrap();
    let (code, err) = xlayer(&[os("bench"), os("--random"), big.as_os_str()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("random input 0: f32[100000000000] needs 800000000000 bytes of host memory"),
        "{err}"
    );
    // a type whose size overflows: refused when the program is read
    let huge = dir.join("huge.mlir");
    std::fs::write(
        &huge,
        "func.func public @main(%a: tensor<4294967296x4294967296xf32>) -> tensor<4294967296x4294967296xf32> {\n  return %a : tensor<4294967296x4294967296xf32>\n}\n",
    )
    .unwrap();
    let (code, err) = xlayer(&[os("bench"), os("--random"), huge.as_os_str()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("parameter 0 of @main: array type f32[4294967296,4294967296] is too large"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).ok();
});

case!(cli_non_utf8_arguments_are_clear_errors, {
    use std::os::unix::ffi::OsStrExt;
    let bad = std::ffi::OsStr::from_bytes(b"prog-\xff\xfe.mlir");
    let (code, err) = xlayer(&[os("run"), bad]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("cannot read program") && err.contains("prog-"),
        "{err}"
    );
    let (code, err) = xlayer(&[
        os("hlo"),
        os("p.mlir"),
        os("--signature"),
        std::ffi::OsStr::from_bytes(b"f32[\xff]"),
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("UTF-8"), "{err}");
    let (code, err) = xlayer(&[
        os("inspect"),
        std::ffi::OsStr::from_bytes(b"\xff.safetensors"),
    ]);
    assert_eq!(code, Some(1), "{err}");
});

/// The `minilm` example's binary, built by `cargo test` next to the test
/// binaries (`target/<profile>/examples`), or built here when absent.
fn minilm_example() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let path = profile_dir.join("examples").join("minilm");
    if !path.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--example", "minilm", "--manifest-path"])
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
            .status()
            .expect("run cargo");
        assert!(status.success(), "cargo build --example minilm failed");
    }
    path
}

case!(example_non_utf8_argument_is_a_clear_error, {
    use std::os::unix::ffi::OsStrExt;
    let out = Command::new(minilm_example())
        .arg(std::ffi::OsStr::from_bytes(b"caf\xe9"))
        .output()
        .expect("run the minilm example");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.contains("argument `caf\u{fffd}` is not valid UTF-8"),
        "{err}"
    );
});

// ------------------------------------------------------------ wrong results

const ADD_ONE: &str = "// func.func public @main(%a: tensor<4xi32>) -> tensor<4xi32>\n\
module @add_one {\n\
  func.func public @main(%a: tensor<4xf32>) -> tensor<4xf32> {\n\
    %one = stablehlo.constant dense<1.0> : tensor<4xf32>\n\
    %0 = stablehlo.add %a, %one : tensor<4xf32>\n\
    return %0 : tensor<4xf32>\n\
  }\n\
}\n";

case!(main_signature_in_a_comment_does_not_fool_the_parser, {
    let c = client();
    let p = Program::mlir_text(ADD_ONE).unwrap();
    assert_eq!(p.signature().to_string(), "(f32[4]) -> (f32[4])");
    assert_eq!(p.name(), "add_one");
    let exe = c.compile(&p).unwrap();
    // an i32 buffer used to run and silently give [0, 0, 0, 0]
    let i = c.buffer_from_host(&[1i32, 2, 3, 4], &[4]).unwrap();
    let e = exe.execute(&[&i]).unwrap_err();
    assert!(
        matches!(e, Error::ArgumentType { index: 0, ref expected, ref actual, .. }
            if *expected == ArraySpec::of::<f32>([4]) && *actual == ArraySpec::of::<i32>([4])),
        "{e:?}"
    );
    let f = c.buffer_from_host(&[1f32, 2.0, 3.0, 4.0], &[4]).unwrap();
    assert_eq!(
        exe.execute(&[&f]).unwrap()[0].to_vec::<f32>().unwrap(),
        [2.0, 3.0, 4.0, 5.0]
    );
});

case!(executable_types_come_from_the_compiled_module, {
    let c = client();
    let exe = c.compile(&Program::mlir_text(ADD_ONE).unwrap()).unwrap();
    let bytes = exe.serialize().unwrap();
    let sig = |inputs: Vec<ArraySpec>, outputs: Vec<ArraySpec>| xlayer::Signature {
        donors: vec![false; inputs.len()],
        inputs,
        outputs,
    };
    let f4 = ArraySpec::of::<f32>([4]);
    let i4 = ArraySpec::of::<i32>([4]);
    // deserialize_executable used to accept any signature
    let e = c
        .deserialize_executable(&bytes, "add_one", sig(vec![i4.clone()], vec![f4.clone()]))
        .unwrap_err();
    assert!(
        matches!(e, Error::SignatureMismatch { part: "parameters", ref declared, ref compiled, .. }
            if *declared == [i4.clone()] && *compiled == [f4.clone()]),
        "{e:?}"
    );
    assert!(e.to_string().contains("add_one"), "{e}");
    let e = c
        .deserialize_executable(
            &bytes,
            "add_one",
            sig(vec![f4.clone(), f4.clone()], vec![f4.clone()]),
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::SignatureMismatch {
                part: "parameters",
                ..
            }
        ),
        "{e:?}"
    );
    let e = c
        .deserialize_executable(&bytes, "add_one", sig(vec![f4.clone()], vec![i4.clone()]))
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::SignatureMismatch {
                part: "results",
                ..
            }
        ),
        "{e:?}"
    );
    // outputs left empty are taken from the executable
    let back = c
        .deserialize_executable(&bytes, "add_one", sig(vec![f4.clone()], vec![]))
        .unwrap();
    assert_eq!(back.signature().outputs, [f4.clone()]);
    let f = c.buffer_from_host(&[0f32; 4], &[4]).unwrap();
    assert_eq!(
        back.execute(&[&f]).unwrap()[0].to_vec::<f32>().unwrap(),
        [1.0; 4]
    );
});
