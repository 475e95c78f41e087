//! Optimizer update rules against optax, and losses against Keras's
//! formulas (tests/fixtures/gen_train.py).

use std::sync::OnceLock;

use anyhow::Result;
use xlayer::builder::{jit, Tree, Value};
use xlayer::train::{accuracy, Adam, ClipByGlobalNorm, Loss, Optimizer, RmsProp, Schedule, Sgd};
use xlayer::weights::SafetensorsFile;
use xlayer::{ArraySpec, Buffer, Client, DType};

fn client() -> Client {
    Client::default_client().expect("client")
}

fn fixture() -> &'static SafetensorsFile {
    static F: OnceLock<SafetensorsFile> = OnceLock::new();
    F.get_or_init(|| {
        SafetensorsFile::open(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/train.safetensors"
        ))
        .expect("fixture")
    })
}

fn f32s(name: &str) -> Vec<f32> {
    let b = fixture().bytes(name).unwrap_or_else(|| panic!("no {name}"));
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn upload(name: &str) -> Result<Buffer> {
    let spec = fixture().spec(name).unwrap().clone();
    Ok(client().buffer_from_bytes(
        fixture().bytes(name).unwrap(),
        &spec,
        client().default_device(),
    )?)
}

/// The largest difference in units of f32 epsilon at the parameters' scale
/// (max(|x|, 1)): a result near 0 comes from cancelling terms of size ~1,
/// so ulps of the tiny result itself would overstate a one-ulp rounding
/// difference in those terms (XLA builds may turn `a / b` into `a * (1/b)`).
fn max_ulps(a: &[f32], b: &[f32]) -> u32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| ((x - y).abs() / (f32::EPSILON * y.abs().max(1.0))).ceil() as u32)
        .max()
        .unwrap_or(0)
}

/// Runs `opt` for 4 steps on the fixture's params and grads; checks the
/// params after every step against optax within `ulps` (at scale 1).
fn check_optimizer(name: &str, opt: &dyn Optimizer, ulps: u32) -> Result<()> {
    let c = client();
    let mut specs = vec![ArraySpec::of::<f32>([3]), ArraySpec::of::<f32>([4, 3])];
    for _ in 0..4 {
        specs.push(ArraySpec::of::<f32>([3]));
        specs.push(ArraySpec::of::<f32>([4, 3]));
    }
    let exe = jit(&c, &specs, |_b, a| {
        let tree = |b: &Value, w: &Value| {
            Tree::map([("b", Tree::leaf(b.clone())), ("w", Tree::leaf(w.clone()))])
        };
        let mut params = tree(&a[0], &a[1]);
        let mut state = opt.init(&params)?;
        let mut outs = Vec::new();
        for i in 0..4 {
            let grads = tree(&a[2 + 2 * i], &a[3 + 2 * i]);
            let (p, s) = opt.update(&params, &grads, &state)?;
            outs.extend(p.leaves().into_iter().cloned());
            params = p;
            state = s;
        }
        Ok(outs)
    })?;
    let mut args = vec![upload("params.b")?, upload("params.w")?];
    for i in 0..4 {
        args.push(upload(&format!("grads.{i}.b"))?);
        args.push(upload(&format!("grads.{i}.w"))?);
    }
    let refs: Vec<&Buffer> = args.iter().collect();
    let outs = exe.execute(&refs)?;
    for i in 0..4 {
        for (j, k) in ["b", "w"].iter().enumerate() {
            let got = outs[2 * i + j].to_vec::<f32>()?;
            let want = f32s(&format!("{name}.{i}.{k}"));
            let d = max_ulps(&got, &want);
            assert!(d <= ulps, "{name} step {i} `{k}`: {d} ulps from optax (allowed {ulps})\n got {got:?}\nwant {want:?}");
        }
    }
    Ok(())
}

#[test]
fn optimizers_match_optax() -> Result<()> {
    check_optimizer("sgd", &Sgd::new(0.1), 0)?;
    check_optimizer("momentum", &Sgd::new(0.1).momentum(0.9, false), 1)?;
    check_optimizer("nesterov", &Sgd::new(0.1).momentum(0.9, true), 1)?;
    check_optimizer("adam", &Adam::new(1e-2), 4)?;
    check_optimizer("adamw", &Adam::adamw(1e-2, 1e-2), 4)?;
    check_optimizer("rmsprop", &RmsProp::new(1e-2), 4)?;
    check_optimizer(
        "adam_cosine",
        &Adam::new(Schedule::CosineDecay {
            init: 1e-2,
            decay_steps: 3,
            alpha: 0.1,
        }),
        4,
    )?;
    let warm = Schedule::WarmupCosine {
        init: 0.0,
        peak: 0.1,
        warmup_steps: 2,
        decay_steps: 4,
        end: 0.01,
    };
    check_optimizer("sgd_warmup", &Sgd::new(warm), 2)?;
    check_optimizer(
        "clip_sgd",
        &ClipByGlobalNorm {
            max_norm: 1.0,
            inner: Sgd::new(0.1),
        },
        2,
    )?;
    Ok(())
}

#[test]
fn losses_and_accuracy_match_reference_formulas() -> Result<()> {
    let c = client();
    let names = [
        "loss.logits",
        "loss.labels",
        "loss.onehot",
        "loss.probs",
        "loss.binary_targets",
        "loss.sigmoid",
    ];
    let specs: Vec<ArraySpec> = names
        .iter()
        .map(|n| fixture().spec(n).unwrap().clone())
        .collect();
    let exe = jit(&c, &specs, |_b, a| {
        let (logits, labels, onehot, probs, bt, sig) = (&a[0], &a[1], &a[2], &a[3], &a[4], &a[5]);
        Ok(vec![
            Loss::CategoricalCrossentropy { from_logits: true }.compute(onehot, logits)?,
            Loss::CategoricalCrossentropy { from_logits: false }.compute(onehot, probs)?,
            Loss::SparseCategoricalCrossentropy { from_logits: true }.compute(labels, logits)?,
            Loss::BinaryCrossentropy { from_logits: true }.compute(bt, logits)?,
            Loss::BinaryCrossentropy { from_logits: false }.compute(bt, sig)?,
            Loss::MeanSquaredError.compute(onehot, logits)?,
            Loss::MeanAbsoluteError.compute(onehot, logits)?,
            accuracy(labels, logits)?,
            accuracy(onehot, logits)?,
        ])
    })?;
    let args: Vec<Buffer> = names.iter().map(|n| upload(n)).collect::<Result<_>>()?;
    let refs: Vec<&Buffer> = args.iter().collect();
    let out = exe.execute(&refs)?;
    let want = [
        "cce_logits",
        "cce_probs",
        "cce_logits",
        "bce_logits",
        "bce_probs",
        "mse",
        "mae",
        "accuracy",
        "accuracy",
    ];
    for (o, w) in out.iter().zip(want) {
        let got = o.to_scalar::<f32>()?;
        let want = f32s(&format!("loss.{w}"))[0];
        assert!(
            (got - want).abs() <= 2e-6 * want.abs().max(1.0),
            "{w}: {got} vs {want}"
        );
    }
    Ok(())
}

#[test]
fn loss_misuse_names_the_loss_and_shapes() {
    let b = xlayer::builder::Builder::new();
    let p = b.parameter(ArraySpec::of::<f32>([5, 4]), "p").unwrap();
    let t = b.parameter(ArraySpec::of::<f32>([5, 3]), "t").unwrap();
    let err = Loss::MeanSquaredError
        .compute(&t, &p)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("mean_squared_error") && err.contains("f32[5,3]") && err.contains("f32[5,4]"),
        "{err}"
    );
    let labels = b.parameter(ArraySpec::of::<f32>([5]), "l").unwrap();
    let err = Loss::SparseCategoricalCrossentropy { from_logits: true }
        .compute(&labels, &p)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("integer class ids") && err.contains("f32[5]"),
        "{err}"
    );
    let _ = DType::F32;
}
