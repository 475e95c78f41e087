//! The speed suite's MLP (784-512-512-10, relu) and its train-entry
//! initializers, shared by `benches/suite.rs` and `benches/dp_train.rs`.

use xlayer::builder::{init, nn, random, Tree, Value};
use xlayer::layers::{Init, Inputs, JaxLayer, Out, Params, Rng};
use xlayer::DType;

/// Layer widths of the suite's MLP.
pub const MLP_SIZES: [usize; 4] = [784, 512, 512, 10];

/// The MLP's logits on `x` (rows first, flattened to 784 features).
pub fn mlp_logits(p: &Tree<Value>, x: &Value) -> xlayer::Result<Value> {
    let n = x.dims()[0];
    let mut h = x.reshape(&[n, x.element_count() / n])?;
    for i in 0..3 {
        h = (h.matmul(p.get(format!("w{i}"))?)? + p.get(format!("b{i}"))?)?;
        if i < 2 {
            h = nn::relu(&h)?;
        }
    }
    Ok(h)
}

fn mlp_train(Params(p): Params, Inputs(x): Inputs) -> xlayer::Result<Out> {
    Ok(Out::from(mlp_logits(&p, &x.into_leaf()?)?))
}

/// The MLP's params: `(name, shape)` in order.
pub fn mlp_shapes() -> Vec<(&'static str, Vec<usize>)> {
    let names = [("w0", "b0"), ("w1", "b1"), ("w2", "b2")];
    let mut v = Vec::new();
    for (i, (w, b)) in names.into_iter().enumerate() {
        v.push((w, vec![MLP_SIZES[i], MLP_SIZES[i + 1]]));
        v.push((b, vec![MLP_SIZES[i + 1]]));
    }
    v
}

/// Initializers of the train entries (glorot-uniform kernels, zero biases),
/// drawn in the program as Keras does.
pub fn init_from(shapes: Vec<(&'static str, Vec<usize>)>, key: &Value) -> xlayer::Result<Init> {
    let keys = random::split_keys(key, shapes.len())?;
    let b = key.builder();
    let mut m = Vec::new();
    for (i, (name, dims)) in shapes.into_iter().enumerate() {
        let leaf = if dims.len() == 1 {
            b.zeros(DType::F32, &dims)?
        } else {
            init::glorot_uniform().init(&keys[i], &dims, DType::F32)?
        };
        m.push((name.to_string(), Tree::leaf(leaf)));
    }
    Ok(Init(Tree::map(m)))
}

/// The suite's `train_mlp` layer: the MLP's logits, initialized in the
/// program from seed 0.
pub fn mlp_train_layer() -> xlayer::Result<JaxLayer> {
    JaxLayer::builder(mlp_train)
        .init_fn(|Rng(k): Rng, Inputs(_x): Inputs| init_from(mlp_shapes(), &k))
        .seed(0)
        .build()
}
