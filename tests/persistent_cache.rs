//! Every compile path goes through the persistent compilation cache: each
//! case runs in a child process twice with the same fresh
//! `XLAYER_CACHE_DIR`; the first compiles and writes entries, the second
//! compiles nothing (`xlayer::compile_count()` counts the plugin's
//! compiles in the process) and loads every program from disk.

use std::ffi::OsStr;
use std::path::PathBuf;

use xlayer::builder::{jit, jit_sharded, Tree};
use xlayer::flax::{self, ApplyOptions, InitOptions, Rngs};
use xlayer::layers::{Apply, Dense, HostArray, Input, Model, Training};
use xlayer::models::minilm::MiniLm;
use xlayer::sharding::{Array, Mesh, NamedSharding};
use xlayer::train::{Adam, FitOptions, Loss, Trainer};
use xlayer::{compile_count, ArraySpec, Client, DType, P};

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
fn data_parallel_fit_hits_the_cache_in_a_second_process() {
    twice(
        "data_parallel_fit_hits_the_cache_in_a_second_process",
        || {
            let mesh = Mesh::new(&Client::cpu_devices(2).unwrap(), &[2], &["data"]).unwrap();
            let trainer = Trainer::new(
                dense_model(&client()),
                Adam::new(0.01),
                Loss::SparseCategoricalCrossentropy { from_logits: true },
                &[],
            )
            .data_parallel(&mesh, "data")
            .unwrap();
            let x = HostArray::from_slice(&[0.5f32; 32], &[8, 4]).unwrap();
            let y = HostArray::from_slice(&[0i32, 1, 2, 0, 1, 2, 0, 1], &[8]).unwrap();
            let options = FitOptions {
                batch_size: 4,
                verbose: false,
                ..FitOptions::default()
            };
            let h = trainer.fit(&x, &y, &options).unwrap();
            assert!(h.get("loss")[0].is_finite());
            assert_eq!(trainer.compiled_steps()[0].devices().len(), 2);
        },
    );
}

/// `jit_sharded` of a row-sum over `mesh` (rows split over `data`).
fn row_sum(mesh: &Mesh) -> (xlayer::builder::ShardedJit, NamedSharding) {
    let rows = NamedSharding::new(mesh, P!["data"]);
    let f = jit_sharded(
        &[ArraySpec::of::<f32>([8, 2])],
        std::slice::from_ref(&rows),
        &[NamedSharding::replicated(mesh)],
        |_b, x| Ok(vec![x[0].sin()?.sum(&[0], false)?]),
    )
    .unwrap();
    (f, rows)
}

#[test]
fn jit_sharded_hits_the_cache_in_a_second_call_and_process() {
    twice(
        "jit_sharded_hits_the_cache_in_a_second_call_and_process",
        || {
            let c = Client::cpu_devices(4).unwrap();
            let mesh = Mesh::new(&c, &[4], &["data"]).unwrap();
            let host: Vec<f32> = (0..16).map(|i| i as f32 * 0.25).collect();
            let want: Vec<f32> = (0..2)
                .map(|j| (0..8).map(|i| host[i * 2 + j].sin()).sum())
                .collect();
            let run = |mesh: &Mesh| {
                let start = compile_count();
                let (f, rows) = row_sum(mesh);
                let compiled = compile_count() - start;
                let x = Array::from_host(&host, &[8, 2], &rows).unwrap();
                let y = f.call(&[&x]).unwrap()[0].to_vec::<f32>().unwrap();
                for (a, b) in y.iter().zip(&want) {
                    assert!((a - b).abs() <= 1e-5, "{y:?} vs {want:?}");
                }
                assert_eq!(f.executable().devices(), mesh.devices());
                compiled
            };
            let first = run(&mesh);
            assert_eq!(run(&mesh), 0, "the second call compiles nothing");
            // The same program over the devices in another order: its own
            // entry (compiled with the first, loaded with it in a second
            // process), running on those devices.
            let mut devices = c.devices().to_vec();
            devices.reverse();
            let reversed = Mesh::from_devices(&c, &devices, &[4], &["data"]).unwrap();
            assert_eq!(run(&reversed), first, "another device assignment");
        },
    );
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
