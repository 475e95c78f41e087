//! `Model::load_weights` swaps all of a model's weights at once: calls on
//! other threads see either every old weight or every new one. Without the
//! swap lock, a call could read layer 1 of one checkpoint and layer 2 of
//! the other (the reliability catalog saw 297 torn results in 9,000 calls).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use xlayer::builder::Tree;
use xlayer::layers::{Apply, Input, Inputs, JaxLayer, Model, Out, Params, Training};
use xlayer::weights::{save_tree, NameMap};
use xlayer::{Buffer, Client, DType};

const LAYERS: usize = 8;

/// `x * w`, with a one-element `w` of value `w`.
fn scale(client: &Client, name: &str, w: f32) -> JaxLayer {
    JaxLayer::builder(|Params(p): Params, Inputs(x): Inputs| {
        let w = p.get("w").expect("param w");
        Ok(Out::from(x.into_leaf()?.mul(w)?))
    })
    .name(name)
    .params(Tree::map([(
        "w",
        Tree::leaf(client.buffer_from_host(&[w], &[1]).unwrap()),
    )]))
    .build()
    .unwrap()
}

/// A checkpoint of the model with every layer's `w` = `w`.
fn checkpoint(client: &Client, path: &std::path::Path, w: f32) {
    let tree = Tree::Map(
        (0..LAYERS)
            .map(|i| {
                let leaf: Buffer = client.buffer_from_host(&[w], &[1]).unwrap();
                (
                    format!("scale_{i}"),
                    Tree::map([("params", Tree::map([("w", Tree::leaf(leaf))]))]),
                )
            })
            .collect(),
    );
    save_tree(path, &tree, &NameMap::new()).unwrap();
}

#[test]
fn calls_never_see_a_mix_of_two_checkpoints() {
    let client = Client::cpu().unwrap();
    let input = Input::new(&client, &[1], DType::F32);
    let mut y = input.clone();
    for i in 0..LAYERS {
        y = scale(&client, &format!("scale_{i}"), 1.0)
            .apply(&y)
            .unwrap();
    }
    let model = Arc::new(Model::new(input, y).unwrap());
    let dir = std::env::temp_dir().join(format!("xlayer-swap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (a, b) = (dir.join("ones.safetensors"), dir.join("twos.safetensors"));
    checkpoint(&client, &a, 1.0);
    checkpoint(&client, &b, 2.0);
    // All ones: 1; all twos: 2^LAYERS; anything else mixes the two.
    let whole = [1.0f32, 2f32.powi(LAYERS as i32)];

    let done = Arc::new(AtomicBool::new(false));
    let loads = Arc::new(AtomicUsize::new(0));
    let loader = {
        let (model, done, loads) = (model.clone(), done.clone(), loads.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                for p in [&a, &b] {
                    model.load_weights(p).unwrap();
                    loads.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let callers: Vec<_> = (0..3)
        .map(|_| {
            let (model, client) = (model.clone(), client.clone());
            std::thread::spawn(move || {
                let x = client.buffer_from_host(&[1f32], &[1, 1]).unwrap();
                let mut torn = Vec::new();
                for _ in 0..1500 {
                    let v = model
                        .call1(&x, Training::No)
                        .unwrap()
                        .to_vec::<f32>()
                        .unwrap()[0];
                    if !whole.contains(&v) {
                        torn.push(v);
                    }
                }
                torn
            })
        })
        .collect();
    let torn: Vec<f32> = callers
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    done.store(true, Ordering::Relaxed);
    loader.join().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        loads.load(Ordering::Relaxed) >= 2,
        "the loader must have swapped during the calls"
    );
    assert!(
        torn.is_empty(),
        "{} of 4500 calls mixed the two checkpoints, e.g. {:?}",
        torn.len(),
        &torn[..torn.len().min(8)]
    );
}
