//! Weights I/O: save/load round trips, name mapping, transposes, dtype
//! conversion, and every mismatch named in its error.

use std::path::PathBuf;
use std::sync::OnceLock;

use anyhow::Result;
use xlayer::builder::Tree;
use xlayer::weights::{load_tree, save_tree, NameMap, SafetensorsFile};
use xlayer::{bf16, ArraySpec, Buffer, Client, Error};

fn client() -> &'static Client {
    static C: OnceLock<Client> = OnceLock::new();
    C.get_or_init(|| Client::cpu().expect("CPU client"))
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xlayer-weights-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn params() -> Result<Tree<Buffer>> {
    let c = client();
    Ok(Tree::map([
        (
            "Dense_0",
            Tree::map([
                (
                    "kernel",
                    Tree::leaf(c.buffer_from_host(&[1f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3])?),
                ),
                (
                    "bias",
                    Tree::leaf(c.buffer_from_host(&[0.5f32, -0.5, 0.25], &[3])?),
                ),
            ]),
        ),
        ("step", Tree::leaf(c.buffer_from_host(&[7i32], &[])?)),
    ]))
}

fn specs(t: &Tree<Buffer>) -> Tree<ArraySpec> {
    t.map_leaves(&mut |b| b.spec().clone())
}

/// The specs of `t`, with `with` in place of each spec that `pick` picks.
fn specs_with(
    t: &Tree<Buffer>,
    pick: impl Fn(&ArraySpec) -> bool,
    with: ArraySpec,
) -> Tree<ArraySpec> {
    specs(t).map_leaves(&mut |s| if pick(s) { with.clone() } else { s.clone() })
}

/// The message of loading `wanted` from `file` with the default name map,
/// which must fail.
fn load_error(file: &SafetensorsFile, wanted: &Tree<ArraySpec>) -> String {
    load_tree(client(), file, wanted, &NameMap::new())
        .unwrap_err()
        .to_string()
}

#[test]
fn round_trip_with_prefix_and_separator() -> Result<()> {
    let p = params()?;
    let path = temp("round_trip.safetensors");
    let map = NameMap::new().separator(".").prefix("params");
    save_tree(&path, &p, &map)?;
    let file = SafetensorsFile::open(&path)?;
    assert_eq!(
        file.names(),
        vec![
            "params.Dense_0.bias",
            "params.Dense_0.kernel",
            "params.step"
        ]
    );
    let (back, report) = load_tree(client(), &file, &specs(&p), &map)?;
    assert_eq!(report.loaded.len(), 3);
    for ((pa, a), (pb, b)) in p.entries().into_iter().zip(back.entries()) {
        assert_eq!(pa, pb);
        assert_eq!(a.to_bytes()?, b.to_bytes()?, "{pa}");
    }
    Ok(())
}

#[test]
fn transposed_and_converted_tensors() -> Result<()> {
    // A PyTorch-style checkpoint: Linear weight (out=3, in=2) in bf16.
    let c = client();
    let w: Vec<bf16> = [1f32, 4.0, 2.0, 5.0, 3.0, 6.0].map(bf16::from_f32).to_vec();
    let torch = Tree::map([(
        "dense",
        Tree::map([("kernel", Tree::leaf(c.buffer_from_host(&w, &[3, 2])?))]),
    )]);
    let path = temp("torch.safetensors");
    save_tree(
        &path,
        &torch,
        &NameMap::new().separator(".").rename("kernel", "weight"),
    )?;
    let file = SafetensorsFile::open(&path)?;
    let wanted = Tree::map([(
        "dense",
        Tree::map([("kernel", Tree::leaf(ArraySpec::of::<f32>([2, 3])))]),
    )]);
    let map = NameMap::new()
        .separator(".")
        .rename("kernel", "weight")
        .transposed("kernel")
        .convert_dtypes(true);
    let (back, _) = load_tree(c, &file, &wanted, &map)?;
    assert_eq!(
        back.get("dense/kernel")?.to_vec::<f32>()?,
        vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    );
    // Without conversion allowed, the dtype mismatch is named.
    let strict = NameMap::new()
        .separator(".")
        .rename("kernel", "weight")
        .transposed("kernel");
    let err = load_tree(c, &file, &wanted, &strict)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("dense.weight") && err.contains("bf16") && err.contains("f32[2,3]"),
        "{err}"
    );
    Ok(())
}

#[test]
fn every_mismatch_names_the_tensor() -> Result<()> {
    let p = params()?;
    let path = temp("mismatch.safetensors");
    save_tree(&path, &p, &NameMap::new())?;
    let file = SafetensorsFile::open(&path)?;
    let c = client();

    // Missing tensor.
    let mut wanted = specs(&p);
    if let Tree::Map(m) = &mut wanted {
        m.insert("extra".into(), Tree::leaf(ArraySpec::of::<f32>([1])));
    }
    let err = load_tree(c, &file, &wanted, &NameMap::new()).unwrap_err();
    assert!(
        matches!(err, Error::Weights { ref tensor, .. } if tensor == "extra"),
        "{err}"
    );
    assert!(
        err.to_string().contains("missing") && err.to_string().contains("mismatch.safetensors"),
        "{err}"
    );

    // Wrong shape.
    let wanted = specs_with(&p, |s| s.dims == vec![2, 3], ArraySpec::of::<f32>([3, 2]));
    let err = load_error(&file, &wanted);
    assert!(
        err.contains("Dense_0/kernel") && err.contains("[2, 3]") && err.contains("f32[3,2]"),
        "{err}"
    );

    // Wrong dtype.
    let wanted = specs_with(&p, |s| s.dims.is_empty(), ArraySpec::of::<i64>([]));
    let err = load_error(&file, &wanted);
    assert!(
        err.contains("`step`") && err.contains("i32") && err.contains("i64[]"),
        "{err}"
    );

    // Unexpected tensor (strict by default), accepted and reported when allowed.
    let mut wanted = specs(&p);
    if let Tree::Map(m) = &mut wanted {
        m.remove("step");
    }
    let err = load_error(&file, &wanted);
    assert!(err.contains("unexpected") && err.contains("step"), "{err}");
    let (_, report) = load_tree(c, &file, &wanted, &NameMap::new().allow_unused(true))?;
    assert_eq!(report.unused, vec!["step".to_string()]);
    Ok(())
}

#[test]
fn corrupt_files_are_rejected_with_the_file_named() -> Result<()> {
    let p = params()?;
    let good = temp("good.safetensors");
    save_tree(&good, &p, &NameMap::new())?;
    let bytes = std::fs::read(&good)?;

    let truncated = temp("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() - 5])?;
    let err = SafetensorsFile::open(&truncated).unwrap_err().to_string();
    assert!(err.contains("truncated.safetensors"), "{err}");

    let garbage = temp("garbage.safetensors");
    let mut bad = bytes.clone();
    bad[8] = b'#'; // breaks the JSON header
    std::fs::write(&garbage, &bad)?;
    let err = SafetensorsFile::open(&garbage).unwrap_err().to_string();
    assert!(
        err.contains("garbage.safetensors") && err.contains("not a valid safetensors"),
        "{err}"
    );

    let missing = temp("does-not-exist.safetensors");
    let err = SafetensorsFile::open(&missing).unwrap_err().to_string();
    assert!(err.contains("does-not-exist.safetensors"), "{err}");
    Ok(())
}

#[test]
fn every_problem_is_listed_in_one_error() -> Result<()> {
    let p = params()?;
    let path = temp("problems.safetensors");
    save_tree(&path, &p, &NameMap::new())?;
    let file = SafetensorsFile::open(&path)?;
    // `Dense_0/kernel` of the wrong shape, `extra` missing, `step` unused.
    let wanted = Tree::map([
        (
            "Dense_0",
            Tree::map([
                ("kernel", Tree::leaf(ArraySpec::of::<f32>([3, 2]))),
                ("bias", Tree::leaf(ArraySpec::of::<f32>([3]))),
            ]),
        ),
        ("extra", Tree::leaf(ArraySpec::of::<f32>([1]))),
    ]);
    let err = load_tree(client(), &file, &wanted, &NameMap::new()).unwrap_err();
    let msg = err.to_string();
    let Error::Weights {
        file: f,
        tensor,
        more,
        ..
    } = err
    else {
        panic!("expected Error::Weights, got {err:?}");
    };
    assert_eq!(f, path);
    assert_eq!(tensor, "Dense_0/kernel");
    let others: Vec<&str> = more.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(others, ["extra", "step"]);
    assert!(
        msg.contains("(and 2 more)") && msg.contains("missing") && msg.contains("unexpected"),
        "{msg}"
    );
    Ok(())
}
