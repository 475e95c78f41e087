//! Helpers shared by the integration tests (`mod common;`): the JAX
//! fixtures of tests/ops.rs and tests/grads.rs (case tensors, ulp
//! comparison, one program per op family), and the safetensors fixtures
//! and weight snapshots of tests/fit.rs and tests/layers.rs. Not every test
//! binary uses every helper.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock};

use xlayer::builder::{Builder, Tree, Value};
use xlayer::weights::SafetensorsFile;
use xlayer::{ArraySpec, Buffer, Client, DType, Executable, Result};

// ------------------------------------------------------------------ JAX case fixtures

/// One tensor of a case fixture.
pub struct Tensor {
    pub spec: ArraySpec,
    pub bytes: Vec<u8>,
}

/// A case fixture: tensors `CASE.inN` / `CASE.outN` and the case names.
pub struct Fixture {
    pub tensors: BTreeMap<String, Tensor>,
    pub cases: BTreeSet<String>,
}

impl Fixture {
    /// Reads `tests/fixtures/{file}`.
    pub fn load(file: &str) -> Fixture {
        let path = format!("{}/tests/fixtures/{file}", env!("CARGO_MANIFEST_DIR"));
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("read {file}: {e}"));
        let st = safetensors::SafeTensors::deserialize(&data)
            .unwrap_or_else(|e| panic!("parse {file}: {e}"));
        let mut tensors = BTreeMap::new();
        let mut cases = BTreeSet::new();
        for (name, view) in st.iter() {
            let dtype = DType::from_safetensors(view.dtype())
                .unwrap_or_else(|e| panic!("{file}: tensor {name}: {e}"));
            let (case, _) = name.rsplit_once('.').expect("NAME.inN / NAME.outN");
            cases.insert(case.to_string());
            tensors.insert(
                name.to_string(),
                Tensor {
                    spec: ArraySpec::new(dtype, view.shape().to_vec()),
                    bytes: view.data().to_vec(),
                },
            );
        }
        Fixture { tensors, cases }
    }

    /// `{case}.{kind}0`, `{case}.{kind}1`, … while they exist.
    pub fn tensors_of(&self, case: &str, kind: &str) -> Vec<&Tensor> {
        (0..)
            .map_while(|i| self.tensors.get(&format!("{case}.{kind}{i}")))
            .collect()
    }

    /// Case names under any of `prefixes`.
    pub fn cases_under(&self, prefixes: &[&str]) -> Vec<String> {
        self.cases
            .iter()
            .filter(|c| prefixes.iter().any(|p| c.starts_with(p)))
            .cloned()
            .collect()
    }

    /// Asserts that every case is under one of `families`.
    pub fn assert_no_orphans(&self, families: &[&str]) {
        let orphans: Vec<&String> = self
            .cases
            .iter()
            .filter(|c| !families.iter().any(|f| c.starts_with(f)))
            .collect();
        assert!(
            orphans.is_empty(),
            "fixture cases no test runs: {orphans:?}"
        );
    }
}

/// The CPU client, shared by the tests of one binary.
pub fn cpu_client() -> &'static Client {
    static C: OnceLock<Client> = OnceLock::new();
    C.get_or_init(|| Client::cpu().expect("CPU plugin"))
}

// ------------------------------------------------------------------ comparison

/// How closely an output must match JAX's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Tol {
    /// Same bits (NaNs match any NaN).
    Exact,
    /// At most this many units in the last place apart.
    Ulps(u64),
    /// Within `ulps`, or within `abs` absolutely (for results near 0 of a
    /// cancelling sum, where ulps are meaningless).
    UlpsOrAbs(u64, f64),
}

/// Float bits → an integer whose order is the float order (±0 adjacent).
fn ordered(bits: u64, width: u32) -> i128 {
    let sign = 1u64 << (width - 1);
    if bits & sign != 0 {
        -((bits & !sign) as i128)
    } else {
        bits as i128
    }
}

fn float_at(dt: DType, b: &[u8], i: usize) -> (u64, f64, bool) {
    match dt {
        DType::F32 => {
            let u = u32::from_le_bytes(b[4 * i..4 * i + 4].try_into().unwrap());
            let f = f32::from_bits(u);
            (u as u64, f as f64, f.is_nan())
        }
        DType::F64 => {
            let u = u64::from_le_bytes(b[8 * i..8 * i + 8].try_into().unwrap());
            let f = f64::from_bits(u);
            (u, f, f.is_nan())
        }
        DType::F16 => {
            let u = u16::from_le_bytes(b[2 * i..2 * i + 2].try_into().unwrap());
            let f = xlayer::f16::from_bits(u).to_f64();
            (u as u64, f, f.is_nan())
        }
        DType::BF16 => {
            let u = u16::from_le_bytes(b[2 * i..2 * i + 2].try_into().unwrap());
            let f = xlayer::bf16::from_bits(u).to_f64();
            (u as u64, f, f.is_nan())
        }
        other => panic!("not a float: {other}"),
    }
}

/// Compares; returns the max ulp distance seen or a description of the failure.
pub fn compare(
    what: &str,
    got: &ArraySpec,
    got_bytes: &[u8],
    want: &Tensor,
    tol: Tol,
) -> std::result::Result<u64, String> {
    if got != &want.spec {
        return Err(format!("{what}: got {got}, JAX has {}", want.spec));
    }
    let dt = got.dtype;
    if !dt.is_float() {
        if got_bytes != want.bytes {
            return Err(format!("{what}: integer/bool data differ"));
        }
        return Ok(0);
    }
    let width = dt.bit_width() as u32;
    let mut worst = 0u64;
    let mut bad = Vec::new();
    for i in 0..got.element_count() {
        let (gb, gf, gn) = float_at(dt, got_bytes, i);
        let (wb, wf, wn) = float_at(dt, &want.bytes, i);
        if gn || wn {
            if gn != wn {
                bad.push(format!("[{i}] got {gf}, JAX {wf}"));
            }
            continue;
        }
        let ulps = (ordered(gb, width) - ordered(wb, width)).unsigned_abs() as u64;
        worst = worst.max(ulps);
        let ok = match tol {
            Tol::Exact => ulps == 0,
            Tol::Ulps(n) => ulps <= n,
            Tol::UlpsOrAbs(n, a) => ulps <= n || (gf - wf).abs() <= a,
        };
        if !ok && bad.len() < 5 {
            bad.push(format!("[{i}] got {gf:e}, JAX {wf:e} ({ulps} ulps)"));
        }
    }
    if bad.is_empty() {
        Ok(worst)
    } else {
        Err(format!(
            "{what} ({tol:?}, max {worst} ulps): {}",
            bad.join(", ")
        ))
    }
}

// ------------------------------------------------------------------ running a family

/// One fixture case: its name, tolerance, and how to build it from its
/// inputs (`T`: what the build gives, one value or several).
pub struct Case<T> {
    pub name: String,
    pub tol: Tol,
    pub build: Build<T>,
}

/// How a case builds its outputs from its inputs.
pub type Build<T> = Box<dyn Fn(&Builder, &[Value]) -> Result<T>>;

pub fn case<T>(
    name: impl Into<String>,
    tol: Tol,
    build: impl Fn(&Builder, &[Value]) -> Result<T> + 'static,
) -> Case<T> {
    Case {
        name: name.into(),
        tol,
        build: Box::new(build),
    }
}

/// Builds all `cases` of `fixture` into one program (`emit` gives a case's
/// outputs from its inputs), runs it and compares every output with the
/// fixture's `CASE.outN` within the case's tolerance; the cases must be
/// exactly the fixture's cases under `prefixes`.
pub fn run_family<T>(
    fixture: &Fixture,
    prefixes: &[&str],
    cases: &[Case<T>],
    emit: impl Fn(&Builder, &Case<T>, &[Value]) -> Result<Vec<Value>>,
) {
    let have: BTreeSet<String> = cases.iter().map(|c| c.name.clone()).collect();
    let want: BTreeSet<String> = fixture.cases_under(prefixes).into_iter().collect();
    assert_eq!(have, want, "test cases vs fixture cases under {prefixes:?}");

    let inputs: Vec<Vec<&Tensor>> = cases
        .iter()
        .map(|c| fixture.tensors_of(&c.name, "in"))
        .collect();
    let expected: Vec<Vec<&Tensor>> = cases
        .iter()
        .map(|c| fixture.tensors_of(&c.name, "out"))
        .collect();
    let specs: Vec<ArraySpec> = inputs.iter().flatten().map(|t| t.spec.clone()).collect();
    let client = cpu_client();
    let exe: Executable = xlayer::builder::jit(client, &specs, |b, xs| {
        let mut outs = Vec::new();
        let mut at = 0;
        for (c, ins) in cases.iter().zip(&inputs) {
            let o = emit(b, c, &xs[at..at + ins.len()])
                .unwrap_or_else(|e| panic!("{}: building failed: {e}", c.name));
            at += ins.len();
            outs.extend(o);
        }
        Ok(outs)
    })
    .unwrap_or_else(|e| panic!("{prefixes:?}: compile failed: {e}"));

    let dev = client.default_device();
    let bufs: Vec<Buffer> = inputs
        .iter()
        .flatten()
        .map(|t| client.buffer_from_bytes(&t.bytes, &t.spec, dev).unwrap())
        .collect();
    let refs: Vec<&Buffer> = bufs.iter().collect();
    let outs = exe.execute(&refs).expect("execute");
    assert_eq!(
        outs.len(),
        expected.iter().map(Vec::len).sum::<usize>(),
        "output count"
    );

    let report = std::env::var_os("XLAYER_OPS_REPORT").is_some();
    let mut failures = Vec::new();
    let mut k = 0;
    for (c, want) in cases.iter().zip(&expected) {
        for (j, w) in want.iter().enumerate() {
            let got = &outs[k];
            k += 1;
            let bytes = got.to_bytes().expect("download");
            match compare(&format!("{}.out{j}", c.name), got.spec(), &bytes, w, c.tol) {
                Ok(ulps) if report => eprintln!("ULPS {} out{j} {ulps} ({:?})", c.name, c.tol),
                Ok(_) => {}
                Err(e) => failures.push(e),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ------------------------------------------------------------------ safetensors fixtures

/// Opens `tests/fixtures/{name}`.
pub fn open_fixture(name: &str) -> SafetensorsFile {
    SafetensorsFile::open(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture")
}

/// Tensor `name` of `f` (f32 or f16) as f32s.
pub fn f32s(f: &SafetensorsFile, name: &str) -> Vec<f32> {
    let bytes = f
        .bytes(name)
        .unwrap_or_else(|| panic!("fixture has no {name}"));
    match f.spec(name).unwrap().dtype {
        DType::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        DType::F16 => bytes
            .chunks_exact(2)
            .map(|c| xlayer::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        d => panic!("{name}: unexpected dtype {d}"),
    }
}

/// The bytes of every leaf of a weight tree, in leaf order.
pub fn leaf_bytes(t: &Tree<Arc<Buffer>>) -> Result<Vec<Vec<u8>>> {
    t.leaves().iter().map(|b| b.to_bytes()).collect()
}
