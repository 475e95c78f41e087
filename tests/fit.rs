//! compile / fit / evaluate: Keras's training cases, trajectory parity with
//! JAX + optax, and scikit-learn's digits learned to ≥ 95% test accuracy
//! (fixtures from tests/fixtures/gen_fit.py).

use std::sync::OnceLock;

use anyhow::Result;
use xlayer::builder::{init, nn, Pool, Tree, Value};
use xlayer::builder::{ConvAttrs, ConvDims};
use xlayer::layers::{
    Apply, HostArray, Init, InitState, Input, Inputs, JaxLayer, Layer, Model, Out, OutState,
    Params, Rng, State, Training,
};
use xlayer::train::{Adam, FitOptions, Loss, Metric, Trainer};
use xlayer::{Buffer, Client, DType};

mod common;

use common::{f32s, leaf_bytes, open_fixture};

fn client() -> Client {
    Client::default_client().expect("client")
}

fn digits() -> &'static (HostArray, HostArray) {
    static D: OnceLock<(HostArray, HostArray)> = OnceLock::new();
    D.get_or_init(|| {
        let f = open_fixture("digits.safetensors");
        let images: Vec<f32> = f
            .bytes("images")
            .unwrap()
            .iter()
            .map(|&v| v as f32 / 16.0)
            .collect();
        let labels: Vec<i32> = f
            .bytes("labels")
            .unwrap()
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let n = labels.len();
        (
            HostArray::from_slice(&images, &[n, 8, 8, 1]).unwrap(),
            HostArray::from_slice(&labels, &[n]).unwrap(),
        )
    })
}

fn mlp_forward(p: &Tree<Value>, x: Value) -> xlayer::Result<Value> {
    let n = x.dims()[0];
    let x = x.reshape(&[n, x.element_count() / n])?;
    let h = (x.matmul(p.get("w0")?)? + p.get("b0")?)?.tanh()?;
    h.matmul(p.get("w1")?)? + p.get("b1")?
}

/// A model on 8×8×1 digit images around `layer`, compiled with Adam and
/// sparse categorical cross-entropy.
fn digits_model<L: Layer + Clone + 'static>(
    layer: &L,
    lr: f64,
    from_logits: bool,
    metrics: &[Metric],
) -> Result<Trainer> {
    let inp = Input::new(&client(), &[8, 8, 1], DType::F32);
    let model = Model::new(inp.clone(), layer.apply(&inp)?)?;
    Ok(Trainer::new(
        model,
        Adam::new(lr),
        Loss::SparseCategoricalCrossentropy { from_logits },
        metrics,
    ))
}

/// Params `(name, shape)` in order: LeCun-normal kernels (one key each, split
/// from `key` in order) and zero 1-D biases.
fn lecun_params(key: &Value, shapes: &[(&str, &[usize])]) -> xlayer::Result<Tree<Value>> {
    let kernels = shapes.iter().filter(|(_, d)| d.len() > 1).count();
    let mut keys = xlayer::builder::random::split_keys(key, kernels)?.into_iter();
    let mut m = Vec::new();
    for (name, dims) in shapes {
        let v = if dims.len() > 1 {
            init::lecun_normal().init(
                &keys.next().expect("one key per kernel"),
                dims,
                DType::F32,
            )?
        } else {
            key.builder().zeros(DType::F32, dims)?
        };
        m.push((*name, Tree::leaf(v)));
    }
    Ok(Tree::map(m))
}

#[test]
fn twenty_adam_steps_follow_jax_and_optax() -> Result<()> {
    let c = client();
    let f = open_fixture("fit.safetensors");
    let up = |k: &str| -> Result<Buffer> {
        let spec = f.spec(&format!("init.{k}")).unwrap().clone();
        Ok(c.buffer_from_host(&f32s(&f, &format!("init.{k}")), &spec.dims)?)
    };
    let params = Tree::map([
        ("b0", Tree::leaf(up("b0")?)),
        ("b1", Tree::leaf(up("b1")?)),
        ("w0", Tree::leaf(up("w0")?)),
        ("w1", Tree::leaf(up("w1")?)),
    ]);
    let layer = JaxLayer::builder(|Params(p): Params, Inputs(x): Inputs| {
        Ok(Out::from(mlp_forward(&p, x.into_leaf()?)?))
    })
    .params(params)
    .name("mlp")
    .build()?;
    let trainer = digits_model(&layer, 1e-2, true, &[])?;
    let (x, y) = digits();
    let (x, y) = (x.rows(0, 320)?, y.rows(0, 320)?);
    let want = f32s(&f, "losses");
    let mut got = Vec::new();
    // One step per call, so every step's loss is visible (no shuffling).
    for i in 0..20 {
        let opts = FitOptions {
            batch_size: 16,
            epochs: 1,
            shuffle: false,
            verbose: false,
            ..Default::default()
        };
        let h = trainer.fit(
            &x.rows(i * 16, (i + 1) * 16)?,
            &y.rows(i * 16, (i + 1) * 16)?,
            &opts,
        )?;
        got.push(h.get("loss")[0]);
    }
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 * w.abs().max(1.0),
            "step {i}: loss {g} vs JAX+optax {w}"
        );
    }
    let w0 = layer.weights()?.params.get("w0")?.to_vec::<f32>()?;
    let want_w0 = f32s(&f, "final.w0");
    let worst = w0
        .iter()
        .zip(&want_w0)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst <= 1e-5, "final w0 differs from JAX+optax by {worst}");
    Ok(())
}

fn counting_call(
    Params(p): Params,
    State(s): State,
    Inputs(x): Inputs,
    t: Training,
) -> xlayer::Result<OutState> {
    let out = nn::softmax(&mlp_forward(&p, x.into_leaf()?)?, 1)?;
    let count = s.into_leaf()?;
    let next = if t.is_yes() { (&count + 1.0)? } else { count };
    Ok(OutState(out.into(), next.into()))
}

fn counting_init(Rng(key): Rng, Inputs(x): Inputs) -> xlayer::Result<InitState> {
    let x = x.into_leaf()?;
    let n = x.element_count() / x.dims()[0];
    let keys = xlayer::builder::random::split_keys(&key, 2)?;
    let b = key.builder();
    let params = Tree::map([
        (
            "w0",
            Tree::leaf(init::glorot_uniform().init(&keys[0], &[n, 32], DType::F32)?),
        ),
        ("b0", Tree::leaf(b.zeros(DType::F32, &[32])?)),
        (
            "w1",
            Tree::leaf(init::glorot_uniform().init(&keys[1], &[32, 10], DType::F32)?),
        ),
        ("b1", Tree::leaf(b.zeros(DType::F32, &[10])?)),
    ]);
    Ok(InitState(params, Tree::leaf(b.scalar(0f32)?)))
}

#[test]
fn one_epoch_of_ten_steps_changes_every_weight_and_predict_does_not() -> Result<()> {
    let layer = JaxLayer::builder(counting_call)
        .init_fn(counting_init)
        .seed(11)
        .name("counting_mlp")
        .build()?;
    let trainer = digits_model(&layer, 1e-3, false, &[Metric::Accuracy])?;
    let before: Vec<Vec<u8>> = leaf_bytes(&layer.weights()?.params)?;
    let (x, y) = digits();
    let h = trainer.fit(
        &x.rows(0, 320)?,
        &y.rows(0, 320)?,
        &FitOptions {
            batch_size: 32,
            verbose: false,
            ..Default::default()
        },
    )?;
    assert_eq!(h.epochs.len(), 1);
    assert!(h.epochs[0].contains_key("loss") && h.epochs[0].contains_key("accuracy"));
    let w = layer.weights()?;
    let after: Vec<Vec<u8>> = leaf_bytes(&w.params)?;
    for (i, (a, b)) in before.iter().zip(&after).enumerate() {
        assert_ne!(a, b, "trainable weight {i} did not change");
    }
    assert_eq!(
        w.state.leaves()[0].to_scalar::<f32>()?,
        10.0,
        "the state counts the 10 training steps"
    );
    // predict changes nothing.
    trainer.model().predict(&x.rows(0, 64)?, 32)?;
    let again: Vec<Vec<u8>> = leaf_bytes(&layer.weights()?.params)?;
    assert_eq!(after, again);
    assert_eq!(layer.weights()?.state.leaves()[0].to_scalar::<f32>()?, 10.0);
    Ok(())
}

/// A shuffled 80/20 split (fixed seed), as `train_test_split` would make.
fn split_digits() -> Result<(HostArray, HostArray, HostArray, HostArray)> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let (x, y) = digits();
    let n = y.spec.dims[0];
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(42));
    let gather = |a: &HostArray, idx: &[usize]| -> Result<HostArray> {
        let mut out: Option<HostArray> = None;
        for &i in idx {
            let r = a.rows(i, i + 1)?;
            out = Some(match out {
                None => r,
                Some(acc) => acc.concat_rows(&r)?,
            });
        }
        Ok(out.expect("rows"))
    };
    let cut = n * 4 / 5;
    let (train, test) = order.split_at(cut);
    Ok((
        gather(x, train)?,
        gather(y, train)?,
        gather(x, test)?,
        gather(y, test)?,
    ))
}

#[test]
fn digits_mlp_reaches_95_percent() -> Result<()> {
    let layer = JaxLayer::builder(|Params(p): Params, Inputs(x): Inputs| {
        Ok(Out::from(mlp_forward(&p, x.into_leaf()?)?))
    })
    .init_fn(|Rng(key): Rng, Inputs(_x): Inputs| {
        let shapes: [(&str, &[usize]); 4] = [
            ("w0", &[64, 64]),
            ("b0", &[64]),
            ("w1", &[64, 10]),
            ("b1", &[10]),
        ];
        Ok(Init(lecun_params(&key, &shapes)?))
    })
    .seed(0)
    .build()?;
    let trainer = digits_model(&layer, 1e-2, true, &[Metric::Accuracy])?;
    let (xt, yt, xv, yv) = split_digits()?;
    let opts = FitOptions {
        batch_size: 32,
        epochs: 20,
        seed: 1,
        verbose: false,
        validation_data: Some((xv.clone(), yv.clone())),
        ..Default::default()
    };
    let h = trainer.fit(&xt, &yt, &opts)?;
    let loss = h.get("loss");
    assert!(loss.last().unwrap() < &loss[0], "loss decreases: {loss:?}");
    let acc = trainer.evaluate(&xv, &yv, 128)?["accuracy"];
    assert!(acc >= 0.95, "test accuracy {acc}");
    let val = *h.get("val_accuracy").last().unwrap();
    assert!(
        (val - acc).abs() < 1e-5,
        "validation accuracy {val} vs evaluate {acc}"
    );
    Ok(())
}

#[test]
fn digits_cnn_reaches_95_percent() -> Result<()> {
    let layer = JaxLayer::builder(|Params(p): Params, Inputs(x): Inputs| {
        let x = x.into_leaf()?;
        let attrs = ConvAttrs::new(ConvDims::nhwc(2)).padding(&[(1, 1), (1, 1)]);
        let h = nn::relu(&(x.conv_general(p.get("k")?, &attrs)? + p.get("c")?)?)?;
        let h = h.max_pool(&Pool::new(&[1, 2, 2, 1]))?;
        let n = h.dims()[0];
        let h = h.reshape(&[n, 4 * 4 * 16])?;
        Ok(Out::from((h.matmul(p.get("w")?)? + p.get("b")?)?))
    })
    .init_fn(|Rng(key): Rng, Inputs(_x): Inputs| {
        let shapes: [(&str, &[usize]); 4] = [
            ("k", &[3, 3, 1, 16]),
            ("c", &[16]),
            ("w", &[256, 10]),
            ("b", &[10]),
        ];
        Ok(Init(lecun_params(&key, &shapes)?))
    })
    .seed(0)
    .build()?;
    let trainer = digits_model(&layer, 1e-2, true, &[Metric::Accuracy])?;
    let (xt, yt, xv, yv) = split_digits()?;
    trainer.fit(
        &xt,
        &yt,
        &FitOptions {
            batch_size: 32,
            epochs: 10,
            seed: 2,
            verbose: false,
            ..Default::default()
        },
    )?;
    let acc = trainer.evaluate(&xv, &yv, 128)?["accuracy"];
    assert!(acc >= 0.95, "test accuracy {acc}");
    Ok(())
}

#[test]
fn fit_errors_are_clear() -> Result<()> {
    let c = client();
    let layer = JaxLayer::new(|Inputs(x): Inputs| Ok(Out::from(x.into_leaf()?)))?;
    let inp = Input::new(&c, &[3], DType::F32);
    let model = Model::new(inp.clone(), layer.apply(&inp)?)?;
    let x = HostArray::from_slice(&[0f32; 6], &[2, 3])?;
    let y = HostArray::from_slice(&[0i32; 2], &[2])?;
    // (fit before compile cannot be written: only a `Trainer` fits.)
    let trainer = Trainer::new(model, Adam::new(1e-3), Loss::MeanSquaredError, &[]);
    let err = trainer
        .fit(
            &x,
            &y,
            &FitOptions {
                batch_size: 0,
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("batch_size"), "{err}");
    let bad = HostArray::from_slice(&[0f32; 8], &[2, 4])?;
    let err = trainer
        .fit(&bad, &y, &FitOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("f32[2,4]") && err.contains("[3]"), "{err}");
    let err = trainer
        .fit(
            &x,
            &HostArray::from_slice(&[0i32; 3], &[3])?,
            &FitOptions::default(),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("2 rows") && err.contains("i32[3]"), "{err}");
    Ok(())
}

/// Keras's Flax case with state: BatchNorm (use_scale=False) + dropout, no
/// method. After one epoch of 10 steps every trainable weight and every
/// batch_stats leaf has changed.
#[test]
fn flax_layer_batchnorm_dropout_trains() -> Result<()> {
    use xlayer::flax::{BatchNorm, Conv, Dense, Dropout, FlaxLayer, FnModule};
    let module = FnModule::new("BNDigits").call_training(|s, x, training| {
        let training = training.unwrap_or(false);
        let bn = || BatchNorm {
            use_scale: false,
            ..BatchNorm::new()
        };
        let x = x.clone().into_leaf()?;
        let x = Conv {
            use_bias: false,
            ..Conv::new(8, &[3, 3])
        }
        .apply(s, &x)?;
        let x = nn::relu(&bn().apply(s, &x, Some(!training))?)?;
        let n = x.dims()[0];
        let x = x.reshape(&[n, x.element_count() / n])?;
        let x = bn().apply(s, &Dense::new(32).apply(s, &x)?, Some(!training))?;
        let x = Dropout::new(0.3).apply(s, &nn::relu(&x)?, Some(!training))?;
        Ok(Tree::leaf(Dense::new(10).apply(s, &x)?))
    });
    let layer = FlaxLayer::builder(module).seed(5).build()?;
    let trainer = digits_model(&layer, 1e-2, true, &[Metric::Accuracy])?;
    let w0 = layer.weights()?;
    let bytes = leaf_bytes;
    let (p0, s0) = (bytes(&w0.params)?, bytes(&w0.state)?);
    assert!(!s0.is_empty(), "the module has batch_stats");
    let (x, y) = digits();
    trainer.fit(
        &x.rows(0, 320)?,
        &y.rows(0, 320)?,
        &FitOptions {
            batch_size: 32,
            verbose: false,
            ..Default::default()
        },
    )?;
    let w1 = layer.weights()?;
    for (i, (a, b)) in p0.iter().zip(bytes(&w1.params)?).enumerate() {
        assert_ne!(a, &b, "param {} did not change", w1.params.paths()[i]);
    }
    for (i, (a, b)) in s0.iter().zip(bytes(&w1.state)?).enumerate() {
        assert_ne!(a, &b, "state {} did not change", w1.state.paths()[i]);
    }
    Ok(())
}

/// A train step returns each layer's new weights to that layer, whatever
/// the order of the layers' names: `z_first` sorts after `a_second` (as
/// Keras's automatic `dense_10` sorts before `dense_9`), and with a zero
/// learning rate every weight must come back to its own layer unchanged.
/// (It used to come back in name order: the layers swapped weights, an
/// error where their shapes differ and silently wrong where they agree.)
#[test]
fn each_layer_gets_its_own_weights_back_whatever_their_names_sort_to() -> Result<()> {
    use xlayer::layers::{Activation, Dense};
    use xlayer::train::Sgd;
    let client = client();
    let x = Input::new(&client, &[6], DType::F32);
    let first = Dense::config(6)
        .activation(Activation::Tanh)
        .name("z_first")
        .seed(1)
        .build()?;
    let second = Dense::config(6).name("a_second").seed(2).build()?;
    let y = second.apply(&first.apply(&x)?)?;
    let model = Model::new(x, y)?;
    let before = (
        leaf_bytes(&first.weights()?.params)?,
        leaf_bytes(&second.weights()?.params)?,
    );
    assert_ne!(before.0, before.1, "differently seeded");
    let trainer = Trainer::new(model, Sgd::new(0.0), Loss::MeanSquaredError, &[]);
    // Three steps: an odd number, so that swapped weights stay swapped.
    let rows: Vec<f32> = (0..48 * 6).map(|i| (i % 7) as f32 / 7.0).collect();
    let data = HostArray::from_slice(&rows, &[48, 6])?;
    trainer.fit(
        &data,
        &data,
        &FitOptions {
            batch_size: 16,
            epochs: 1,
            verbose: false,
            ..Default::default()
        },
    )?;
    let after = (
        leaf_bytes(&first.weights()?.params)?,
        leaf_bytes(&second.weights()?.params)?,
    );
    assert_eq!(before, after);
    Ok(())
}
