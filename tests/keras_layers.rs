//! Keras's built-in layers against Keras 3 itself (JAX backend): outputs on
//! the same inputs and weights, set by Keras's weight names
//! (`tests/fixtures/gen_keras_layers.py` writes the fixture), plus Keras's
//! defaults, training behaviour and errors.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use xlayer::builder::{Padding, Tree};
use xlayer::layers::{
    Activation, BatchNormalization, Conv2D, Dense, Dropout, Embedding, Layer, LayerNormalization,
    Training, Weights,
};
use xlayer::weights::SafetensorsFile;
use xlayer::{Buffer, Client, Result};

mod common;
use common::open_fixture;

fn client() -> Client {
    Client::cpu().expect("cpu client")
}

fn fixture() -> &'static SafetensorsFile {
    static F: OnceLock<SafetensorsFile> = OnceLock::new();
    F.get_or_init(|| open_fixture("keras_layers.safetensors"))
}

fn upload(name: &str) -> Result<Buffer> {
    let f = fixture();
    let spec = f.spec(name).unwrap_or_else(|| panic!("no {name}")).clone();
    let c = client();
    c.buffer_from_bytes(f.bytes(name).unwrap(), &spec, c.default_device())
}

fn f32s(name: &str) -> Vec<f32> {
    common::f32s(fixture(), name)
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 + 1e-5 * w.abs(),
            "{what}[{i}]: {g} vs Keras {w}"
        );
    }
}

/// Builds `layer` for the case's input and sets the case's weights by
/// Keras's names (`moving_*` are state, the rest params): a layout that
/// differs from Keras's (names, shapes) fails here.
fn with_keras_weights(layer: &dyn Layer, case: &str) -> Result<Buffer> {
    let x = upload(&format!("{case}.x"))?;
    layer.build(&client(), &Tree::leaf(x.spec().clone()))?;
    let prefix = format!("{case}.w.");
    let (mut params, mut state) = (BTreeMap::new(), BTreeMap::new());
    for name in fixture().names() {
        if let Some(w) = name.strip_prefix(&prefix) {
            let leaf = Tree::leaf(upload(name)?);
            if w.starts_with("moving_") {
                state.insert(w.to_string(), leaf);
            } else {
                params.insert(w.to_string(), leaf);
            }
        }
    }
    let tree = |m: BTreeMap<String, Tree<Buffer>>| {
        if m.is_empty() {
            Tree::Empty
        } else {
            Tree::Map(m)
        }
    };
    layer.set_weights(Weights {
        params: tree(params).into_arcs(),
        state: tree(state).into_arcs(),
    })?;
    Ok(x)
}

fn check(layer: &dyn Layer, case: &str, training: Training) -> Result<()> {
    let x = with_keras_weights(layer, case)?;
    let y = layer.call1(&x, training)?;
    assert_eq!(
        y.dims(),
        fixture().spec(&format!("{case}.y")).unwrap().dims,
        "{case}: shape"
    );
    assert_close(&y.to_vec::<f32>()?, &f32s(&format!("{case}.y")), case);
    Ok(())
}

#[test]
fn dense_matches_keras() -> Result<()> {
    check(&Dense::new(5)?, "dense", Training::No)?;
    let relu = Dense::config(4).activation(Activation::Relu).build()?;
    check(&relu, "dense_relu_3d", Training::No)?;
    let tanh = Dense::config(3)
        .use_bias(false)
        .activation(Activation::Tanh)
        .build()?;
    check(&tanh, "dense_nobias_tanh", Training::No)
}

#[test]
fn conv2d_matches_keras() -> Result<()> {
    check(&Conv2D::new(4, [3, 3])?, "conv_valid", Training::No)?;
    let same = Conv2D::config(6, [3, 2])
        .strides([2, 2])
        .padding(Padding::Same)
        .activation(Activation::Relu)
        .build()?;
    check(&same, "conv_same_strided", Training::No)?;
    let grouped = Conv2D::config(4, [2, 2])
        .dilation_rate([2, 1])
        .groups(2)
        .build()?;
    check(&grouped, "conv_dilated_groups", Training::No)
}

#[test]
fn embedding_and_layer_normalization_match_keras() -> Result<()> {
    check(&Embedding::new(10, 4)?, "embedding", Training::No)?;
    check(&LayerNormalization::new()?, "layer_norm", Training::No)?;
    let axis1 = LayerNormalization::config().axis(1).epsilon(1e-5).build()?;
    check(&axis1, "layer_norm_axis1", Training::No)
}

#[test]
fn batch_normalization_matches_keras_in_both_modes() -> Result<()> {
    check(
        &BatchNormalization::new()?,
        "batch_norm_infer",
        Training::No,
    )?;
    let bn = BatchNormalization::config().momentum(0.9).build()?;
    check(&bn, "batch_norm_train", Training::Yes)?;
    let state = bn.weights()?.state;
    for stat in ["moving_mean", "moving_variance"] {
        let got = state.get(stat).expect("moving statistic").to_vec::<f32>()?;
        assert_close(&got, &f32s(&format!("batch_norm_train.{stat}")), stat);
    }
    // Inference leaves the statistics alone.
    let before = state.get("moving_mean").unwrap().to_vec::<f32>()?;
    bn.call1(&upload("batch_norm_train.x")?, Training::No)?;
    let after = bn.weights()?.state;
    assert_eq!(after.get("moving_mean").unwrap().to_vec::<f32>()?, before);
    Ok(())
}

#[test]
fn dropout_is_the_identity_in_inference_and_drops_in_training() -> Result<()> {
    check(&Dropout::new(0.5)?, "dropout_infer", Training::No)?;
    let c = client();
    let drop = Dropout::config(0.25).seed(7).build()?;
    let x = c.buffer_from_host(&vec![2f32; 4000], &[40, 100])?;
    let masks: Vec<Vec<f32>> = (0..2)
        .map(|_| drop.call1(&x, Training::Yes)?.to_vec::<f32>())
        .collect::<Result<_>>()?;
    for m in &masks {
        assert!(
            m.iter().all(|&v| v == 0.0 || v == 2.0 / 0.75),
            "kept x / (1 - rate)"
        );
        let dropped = m.iter().filter(|&&v| v == 0.0).count() as f64 / 4000.0;
        assert!((dropped - 0.25).abs() < 0.03, "dropped {dropped}");
    }
    assert_ne!(masks[0], masks[1], "a fresh key per training call");
    assert_eq!(drop.weights()?.params.len(), 0, "no weights");
    Ok(())
}

#[test]
fn keras_defaults_names_and_weight_names() -> Result<()> {
    let c = client();
    let x = c.buffer_from_host(&[0.5f32; 12], &[4, 3])?;
    let dense = Dense::new(5)?;
    dense.call1(&x, Training::No)?;
    assert!(dense.name().starts_with("dense"), "{}", dense.name());
    assert_eq!(dense.kind(), "Dense");
    let w = dense.weights()?;
    assert_eq!(w.params.paths(), vec!["bias", "kernel"]);
    assert_eq!(w.params.get("kernel").unwrap().dims(), &[3, 5]);
    assert!(w
        .params
        .get("bias")
        .unwrap()
        .to_vec::<f32>()?
        .iter()
        .all(|&b| b == 0.0));
    // glorot_uniform: within sqrt(6 / (fan_in + fan_out)).
    let limit = (6.0f32 / 8.0).sqrt();
    let k = w.params.get("kernel").unwrap().to_vec::<f32>()?;
    assert!(k.iter().all(|v| v.abs() <= limit) && k.iter().any(|&v| v != 0.0));

    let emb = Embedding::new(7, 2)?;
    emb.call1(&c.buffer_from_host(&[0i32, 6], &[2])?, Training::No)?;
    let table = emb
        .weights()?
        .params
        .get("embeddings")
        .unwrap()
        .to_vec::<f32>()?;
    assert_eq!(table.len(), 14);
    assert!(table.iter().all(|v| (-0.05..0.05).contains(v)));

    let bn = BatchNormalization::new()?;
    bn.call1(&x, Training::No)?;
    let w = bn.weights()?;
    assert_eq!(w.params.paths(), vec!["beta", "gamma"]);
    assert_eq!(w.state.paths(), vec!["moving_mean", "moving_variance"]);
    assert_eq!(
        w.state.get("moving_variance").unwrap().to_vec::<f32>()?,
        vec![1.0; 3]
    );
    let ln = LayerNormalization::new()?;
    ln.call1(&x, Training::No)?;
    assert_eq!(ln.weights()?.params.paths(), vec!["beta", "gamma"]);
    Ok(())
}

#[test]
fn bad_configs_and_inputs_are_clear_errors() -> Result<()> {
    let c = client();
    let err = |r: Result<()>| r.unwrap_err().to_string();
    assert!(err(Dense::new(0).map(drop)).contains("units"));
    assert!(err(Dropout::new(1.0).map(drop)).contains("[0, 1)"));
    assert!(err(Conv2D::config(3, [3, 3]).groups(2).build().map(drop)).contains("groups"));
    assert!(err(BatchNormalization::config().momentum(1.5).build().map(drop)).contains("momentum"));
    let conv = Conv2D::config(4, [3, 3]).groups(2).build()?;
    let x = c.buffer_from_host(&[0f32; 2 * 5 * 5 * 3], &[2, 5, 5, 3])?;
    assert!(err(conv.call1(&x, Training::No).map(drop)).contains("3 input channels"));
    let flat = c.buffer_from_host(&[0f32; 6], &[2, 3])?;
    let conv = Conv2D::new(2, [1, 1])?;
    assert!(
        err(conv.call1(&flat, Training::No).map(drop)).contains("(batch, height, width, channels)")
    );
    let emb = Embedding::new(4, 2)?;
    assert!(err(emb.call1(&flat, Training::No).map(drop)).contains("integer indices"));
    let ln = LayerNormalization::config().axis(3).build()?;
    assert!(err(ln.call1(&flat, Training::No).map(drop)).contains("axis 3"));
    Ok(())
}
