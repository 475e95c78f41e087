//! Regression tests for the reliability catalog (issue 11, section 3):
//! builder inputs that used to panic, and sizes that used to overflow (a
//! debug panic, or a wrapped size handed to XLA that aborts the process).
//! Each must now be a typed `xlayer::Error` naming the culprit. Every case
//! runs in a child process (see `tests/isolated`).

#[macro_use]
mod isolated;

use std::sync::OnceLock;

use xlayer::builder::{Builder, ConvAttrs, ConvDims, GatherDims, ScatterDims, ScatterMode, Value};
use xlayer::{ArraySpec, Client, DType, Error, Program};

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
    // past i64: would be emitted as -1
    let attrs = ConvAttrs::new(ConvDims::nhwc(2)).lhs_dilation(&[usize::MAX, 1]);
    let e = img.conv_general(&k, &attrs).unwrap_err();
    assert!(
        matches!(
            e,
            Error::AttributeTooLarge {
                op: "convolution",
                what: "lhs_dilation",
                value: usize::MAX,
                ..
            }
        ),
        "{e:?}"
    );
    let attrs = ConvAttrs::new(ConvDims::nhwc(2)).lhs_dilation(&[i64::MAX as usize, 1]);
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
            Error::AxisOutOfRange {
                op: "transpose",
                axis: 3,
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
            Error::AxisOutOfRange {
                op: "max",
                axis: 4,
                rank: 3,
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
        matches!(
            e,
            Error::AxisOutOfRange {
                op: "squeeze",
                axis: 5,
                rank: 3,
                ..
            }
        ),
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
    assert!(
        matches!(
            e,
            Error::AttributeTooLarge {
                op: "pad",
                what: "interior",
                ..
            }
        ),
        "{e:?}"
    );
    let e = x
        .pad(
            &x.scalar_like(0.0).unwrap(),
            &[0],
            &[0],
            &[i64::MAX as usize],
        )
        .unwrap_err();
    assert!(matches!(e, Error::ShapeOverflow { op: "pad", .. }), "{e:?}");
    // a stride past i64 on a dimension of 1 passes the shape arithmetic
    let one = f32_param(&b, &[1]);
    let e = one.slice(&[0], &[1], &[usize::MAX]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::AttributeTooLarge {
                op: "slice",
                what: "strides",
                ..
            }
        ),
        "{e:?}"
    );
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

case!(initializers_of_huge_shapes_are_errors_not_panics, {
    use xlayer::builder::init::{variance_scaling, Distribution, Initializer, Mode};
    let vs = variance_scaling(1.0, Mode::FanIn, Distribution::Normal, &[0, 1], &[2]);
    let Initializer::VarianceScaling(v) = &vs else {
        unreachable!()
    };
    // the fans of a shape whose element count overflows: computed in f64
    let (fan_in, fan_out) = v.fans(&[1 << 40, 1 << 40, 1 << 40]).unwrap();
    assert_eq!((fan_in, fan_out), (2f64.powi(80), 2f64.powi(40)));
    // the array itself cannot exist
    let b = Builder::new();
    let key = xlayer::builder::random::key(&b, 0).unwrap();
    let e = vs
        .init(&key, &[1 << 40, 1 << 40, 1 << 40], DType::F32)
        .unwrap_err();
    assert!(matches!(e, Error::ShapeTooLarge { .. }), "{e:?}");
});

case!(flax_dense_general_with_huge_features_or_bad_batch_dims, {
    use std::collections::BTreeMap;
    use xlayer::builder::Tree;
    use xlayer::flax::{init_traced, DenseGeneral, Method, CALL};
    let run = |m: DenseGeneral| {
        let b = Builder::new();
        let x = f32_param(&b, &[2, 3]);
        let mut rngs = BTreeMap::new();
        rngs.insert(
            "params".to_string(),
            xlayer::builder::random::key(&b, 0).unwrap(),
        );
        init_traced(&b, &m, &Method::named(CALL), rngs, &Tree::leaf(x), None).unwrap_err()
    };
    // a kernel of 3 x 2^40 x 2^40 f32: its flattened size used to overflow
    let e = run(DenseGeneral::new(&[1 << 40, 1 << 40]));
    assert!(
        matches!(e, Error::ShapeTooLarge { ref spec, .. } if spec.dims == [3, 1 << 40, 1 << 40]),
        "{e:?}"
    );
    assert!(e.to_string().contains("kernel"), "{e}");
    // batch dimensions past the input's rank used to index out of bounds
    let e = run(DenseGeneral {
        batch_dims: vec![0, 1, 2],
        ..DenseGeneral::new(&[4])
    });
    assert!(matches!(e, Error::Flax { .. }), "{e:?}");
    assert!(e.to_string().contains("batch_dims [0, 1, 2]"), "{e}");
});
