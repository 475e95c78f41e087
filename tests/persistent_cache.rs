//! Every compile path goes through the persistent compilation cache: each
//! case runs in a child process twice with the same fresh
//! `XLAYER_CACHE_DIR`; the first compiles and writes entries, the second
//! compiles nothing (`xlayer::compile_count()` counts the plugin's
//! compiles in the process) and loads every program from disk.

use std::ffi::OsStr;
use std::path::PathBuf;

use xlayer::builder::{jit, Tree};
use xlayer::flax::{self, ApplyOptions, InitOptions, Rngs};
use xlayer::layers::{Apply, Dense, HostArray, Input, Model, Training};
use xlayer::models::minilm::MiniLm;
use xlayer::train::{Adam, FitOptions, Loss, Trainer};
use xlayer::{ArraySpec, Client, DType};

mod isolated;

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("xlayer-pcache-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// The compile count a child printed.
fn compiles(stdout: &str) -> u64 {
    stdout
        .lines()
        // libtest may print the test's name on the same line first.
        .find_map(|l| l.split("compiles: ").nth(1))
        .and_then(|n| n.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no compile count in the child's output:\n{stdout}"))
}

/// Runs `body` in two child processes sharing a fresh cache folder; the
/// first must compile, the second must not.
fn twice(name: &str, body: impl Fn()) {
    let in_child = std::env::var_os(isolated::CHILD).is_some();
    if in_child {
        isolated::isolated_env(name, &[], || {
            body();
            println!("compiles: {}", xlayer::compile_count());
        });
        return;
    }
    let dir = temp_dir(name);
    let env = [("XLAYER_CACHE_DIR", dir.as_os_str())];
    let first = compiles(&isolated::isolated_env(name, &env, || {}));
    let entries = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.path().extension() == Some(OsStr::new("xlexe")))
                .count()
        })
        .unwrap_or(0);
    assert!(
        first > 0 && entries > 0,
        "{name}: first run: {first} compiles, {entries} entries"
    );
    let second = compiles(&isolated::isolated_env(name, &env, || {}));
    assert_eq!(
        second, 0,
        "{name}: the second process compiled ({first} the first time)"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

fn client() -> Client {
    Client::cpu().unwrap()
}

#[test]
fn jit_hits_the_cache_in_a_second_process() {
    twice("jit_hits_the_cache_in_a_second_process", || {
        let c = client();
        let exe = jit(&c, &[ArraySpec::of::<f32>([3])], |_b, x| {
            Ok(vec![x[0].exp()?])
        })
        .unwrap();
        let x = c.buffer_from_host(&[0f32, 1.0, 2.0], &[3]).unwrap();
        let y = exe.execute(&[&x]).unwrap()[0].to_vec::<f32>().unwrap();
        assert!((y[1] - std::f32::consts::E).abs() < 1e-6);
    });
}

/// A Keras `Dense` in a functional model: its weight init and its forward.
fn dense_model(c: &Client) -> Model {
    let inp = Input::new(c, &[4], DType::F32);
    let out = Dense::new(3).unwrap().apply(&inp).unwrap();
    Model::new(inp, out).unwrap()
}

#[test]
fn layers_hit_the_cache_in_a_second_process() {
    twice("layers_hit_the_cache_in_a_second_process", || {
        let c = client();
        let model = dense_model(&c);
        let x = c.buffer_from_host(&[1f32; 8], &[2, 4]).unwrap();
        let y = model.call1(&x, Training::No).unwrap();
        assert_eq!(y.dims(), [2, 3]);
    });
}

#[test]
fn flax_init_and_apply_hit_the_cache_in_a_second_process() {
    twice(
        "flax_init_and_apply_hit_the_cache_in_a_second_process",
        || {
            let c = client();
            let x = c.buffer_from_host(&[1f32, 2.0, 3.0], &[1, 3]).unwrap();
            let dense = flax::Dense::new(4);
            let vars =
                flax::init(&dense, &Rngs::seed(0), &Tree::leaf(&x), &InitOptions::new()).unwrap();
            let refs = vars.structure().unflatten(vars.leaves()).unwrap();
            let (y, _) =
                flax::apply(&dense, &refs, &Tree::leaf(&x), &ApplyOptions::default()).unwrap();
            assert_eq!(y.leaves()[0].dims(), [1, 4]);
        },
    );
}

#[test]
fn fit_hits_the_cache_in_a_second_process() {
    twice("fit_hits_the_cache_in_a_second_process", || {
        let c = client();
        let trainer = Trainer::new(
            dense_model(&c),
            Adam::new(0.01),
            Loss::SparseCategoricalCrossentropy { from_logits: true },
            &[],
        );
        let x = HostArray::from_slice(&[0.5f32; 32], &[8, 4]).unwrap();
        let y = HostArray::from_slice(&[0i32, 1, 2, 0, 1, 2, 0, 1], &[8]).unwrap();
        let options = FitOptions {
            batch_size: 4,
            verbose: false,
            ..FitOptions::default()
        };
        let h = trainer.fit(&x, &y, &options).unwrap();
        assert!(h.get("loss")[0].is_finite());
    });
}

#[test]
fn minilm_hits_the_cache_in_a_second_process() {
    twice("minilm_hits_the_cache_in_a_second_process", || {
        let model = MiniLm::load(&client()).unwrap();
        let e = model
            .embed(&[
                "A short sentence.",
                "Another one, a little longer than that.",
            ])
            .unwrap();
        assert_eq!(e.len(), 2);
    });
}
