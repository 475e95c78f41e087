//! `builder::random` and `builder::init` misuse: each error names the
//! function and the shapes involved; degenerate ranges follow JAX (the
//! fixture comparisons are in tests/random.rs).

use std::sync::OnceLock;

use anyhow::Result;
use xlayer::builder::{init, jit, random, Builder, Value};
use xlayer::{Client, DType, Error};

fn client() -> &'static Client {
    static CLIENT: OnceLock<Client> = OnceLock::new();
    CLIENT.get_or_init(|| Client::cpu().expect("CPU client"))
}

fn err_text(r: xlayer::Result<Value>) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e @ Error::Op { .. }) => e.to_string(),
        Err(e) => panic!("expected Error::Op, got {e:?}"),
    }
}

#[test]
fn bad_keys_are_rejected() -> Result<()> {
    let b = Builder::new();
    let wrong_shape = b.zeros(DType::U32, &[3])?;
    let wrong_dtype = b.zeros(DType::I32, &[2])?;
    let m = err_text(random::uniform(&wrong_shape, &[2], DType::F32, 0.0, 1.0));
    assert!(m.contains("random.uniform") && m.contains("u32[3]"), "{m}");
    let m = err_text(random::split(&wrong_dtype, 2));
    assert!(m.contains("random.split") && m.contains("i32[2]"), "{m}");
    let m = err_text(random::fold_in(&wrong_shape, 1));
    assert!(m.contains("random.fold_in") && m.contains("u32[3]"), "{m}");
    let m = err_text(random::normal(&wrong_dtype, &[4], DType::F32));
    assert!(m.contains("random.normal") && m.contains("i32[2]"), "{m}");
    let m = err_text(random::randint(&wrong_shape, &[4], 0, 3, DType::I32));
    assert!(m.contains("random.randint") && m.contains("u32[3]"), "{m}");
    let m = err_text(random::bits(
        &b.zeros(DType::U32, &[2, 2])?,
        &[4],
        DType::U32,
    ));
    assert!(m.contains("random.bits") && m.contains("u32[2,2]"), "{m}");
    Ok(())
}

#[test]
fn bad_dtypes_and_arguments_are_rejected() -> Result<()> {
    let b = Builder::new();
    let k = random::key(&b, 0)?;
    let m = err_text(random::uniform(&k, &[2, 3], DType::I32, 0.0, 1.0));
    assert!(
        m.contains("random.uniform") && m.contains("i32") && m.contains("[2, 3]"),
        "{m}"
    );
    let m = err_text(random::normal(&k, &[5], DType::U8));
    assert!(m.contains("random.normal") && m.contains("u8"), "{m}");
    let m = err_text(random::truncated_normal(&k, -1.0, 1.0, &[5], DType::I64));
    assert!(
        m.contains("random.truncated_normal") && m.contains("i64"),
        "{m}"
    );
    let m = err_text(random::bits(&k, &[4], DType::I32));
    assert!(m.contains("random.bits") && m.contains("i32"), "{m}");
    let m = err_text(random::randint(&k, &[4], 0, 10, DType::F32));
    assert!(m.contains("random.randint") && m.contains("f32"), "{m}");
    let m = err_text(random::randint(&k, &[4], 0, 1 << 40, DType::I8));
    assert!(m.contains("random.randint") && m.contains("i8"), "{m}");
    let m = err_text(random::fold_in_value(&k, &b.scalar(1.5f32)?));
    assert!(m.contains("random.fold_in") && m.contains("f32[]"), "{m}");
    let m = err_text(random::fold_in_value(&k, &b.zeros(DType::U32, &[2])?));
    assert!(m.contains("random.fold_in") && m.contains("u32[2]"), "{m}");
    let m = err_text(random::bernoulli_p(&k, &b.scalar(1i32)?, &[3]));
    assert!(m.contains("random.bernoulli") && m.contains("i32[]"), "{m}");
    let p = b.zeros(DType::F32, &[4])?;
    let m = err_text(random::bernoulli_p(&k, &p, &[3]));
    assert!(
        m.contains("random.bernoulli") && m.contains("f32[4]") && m.contains("[3]"),
        "{m}"
    );
    Ok(())
}

#[test]
fn initializer_errors_name_the_shape() -> Result<()> {
    let b = Builder::new();
    let k = random::key(&b, 0)?;
    let m = err_text(init::lecun_normal().init(&k, &[8], DType::F32));
    assert!(
        m.contains("init.variance_scaling") && m.contains("[8]"),
        "{m}"
    );
    let vs = init::variance_scaling(
        1.0,
        init::Mode::FanIn,
        init::Distribution::Normal,
        &[3],
        &[-1],
    );
    let m = err_text(vs.init(&k, &[4, 5], DType::F32));
    assert!(m.contains("in_axis 3") && m.contains("[4, 5]"), "{m}");
    let m = err_text(init::glorot_uniform().init(&k, &[4, 5], DType::I32));
    assert!(
        m.contains("init.variance_scaling") && m.contains("i32"),
        "{m}"
    );
    let m = err_text(init::normal(1.0).init(&k, &[4, 5], DType::I32));
    assert!(m.contains("random.normal") && m.contains("i32"), "{m}");
    Ok(())
}

#[test]
fn degenerate_ranges_follow_jax() -> Result<()> {
    // JAX does not raise for maxval <= minval: randint returns minval,
    // uniform returns max(minval, ...) = minval.
    let exe = jit(client(), &[], |b, _| {
        let k = random::key(b, 1)?;
        Ok(vec![
            random::randint(&k, &[5], 7, 3, DType::I32)?,
            random::uniform(&k, &[5], DType::F32, 2.0, 2.0)?,
        ])
    })?;
    let out = exe.execute(&[])?;
    assert_eq!(out[0].to_vec::<i32>()?, vec![7; 5]);
    assert_eq!(out[1].to_vec::<f32>()?, vec![2.0; 5]);
    Ok(())
}
