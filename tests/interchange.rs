//! Programs made by JAX (tests/fixtures/gen_interchange.py), run by xlayer:
//! StableHLO text, MLIR bytecode and serialized `jax.export` artifacts,
//! checked against JAX's own outputs.

use std::path::PathBuf;

use xlayer::export::JaxExport;
use xlayer::io::{bind_inputs, read_safetensors, upload};
use xlayer::HostArray;
use xlayer::{ArraySpec, Client, DType, Error, Program, Signature};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/interchange")
        .join(name)
}

fn as_f64(t: &HostArray) -> Vec<f64> {
    let w = t.spec.dtype.size_in_bytes();
    t.bytes
        .chunks(w)
        .map(|c| match t.spec.dtype {
            DType::F32 => f32::from_le_bytes(c.try_into().unwrap()) as f64,
            DType::I32 => i32::from_le_bytes(c.try_into().unwrap()) as f64,
            DType::Bool => c[0] as f64,
            other => panic!("unexpected dtype {other}"),
        })
        .collect()
}

/// Runs `program` on NAME.in.safetensors and compares with NAME.out.safetensors.
fn run_and_compare(client: &Client, program: &Program, name: &str) {
    let inputs = read_safetensors(fixture(&format!("{name}.in.safetensors"))).unwrap();
    let mut expected = read_safetensors(fixture(&format!("{name}.out.safetensors"))).unwrap();
    expected.sort_by(|a, b| a.name.cmp(&b.name)); // out0, out1, ...
    let bound = bind_inputs(program, &inputs).unwrap();
    let buffers = upload(client, &bound).unwrap();
    let exe = client.compile(program).unwrap();
    let outs = exe.execute(&buffers.iter().collect::<Vec<_>>()).unwrap();
    assert_eq!(outs.len(), expected.len());
    for (o, e) in outs.iter().zip(&expected) {
        assert_eq!(o.spec(), &e.array.spec, "{name}: {}", e.name);
        let got = HostArray {
            spec: o.spec().clone(),
            bytes: o.to_bytes().unwrap(),
        };
        for (g, w) in as_f64(&got).iter().zip(as_f64(&e.array)) {
            assert!(
                (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                "{name} {}: got {g}, JAX {w}",
                e.name
            );
        }
    }
}

#[test]
fn text_programs_match_jax() {
    let client = Client::cpu().unwrap();
    for name in ["mlp", "mixed"] {
        let p = Program::from_file(fixture(&format!("{name}.mlir"))).unwrap();
        run_and_compare(&client, &p, name);
    }
}

#[test]
fn export_artifacts_match_jax() {
    let client = Client::cpu().unwrap();
    for name in ["mlp", "mixed", "unused"] {
        let p = Program::from_file(fixture(&format!("{name}.jaxexport"))).unwrap();
        run_and_compare(&client, &p, name);
    }
}

#[test]
fn export_metadata_is_read() {
    let e = JaxExport::parse(&std::fs::read(fixture("unused.jaxexport")).unwrap()).unwrap();
    assert_eq!(e.function_name, "unused");
    assert_eq!(e.platforms, vec!["cpu".to_string()]);
    assert!(xlayer::export::CALLING_CONVENTIONS.contains(&e.calling_convention_version));
    assert_eq!(
        e.inputs,
        vec![
            ArraySpec::of::<f32>([4]),
            ArraySpec::of::<f32>([2, 2]),
            ArraySpec::of::<f32>([4])
        ]
    );
    assert_eq!(e.outputs, vec![ArraySpec::of::<f32>([4])]);
    assert_eq!(e.kept_inputs, vec![0, 2]);
    assert!(e.mlir_module.starts_with(b"ML\xefR"));
    let p = e.program().unwrap();
    assert_eq!(p.input_positions(), &[0, 2]);
    assert_eq!(p.caller_input_count(), 3);
}

#[test]
fn bytecode_needs_and_checks_a_signature() {
    let client = Client::cpu().unwrap();
    let path = fixture("mlp.mlirbc");
    let e = Program::from_file(&path).unwrap_err();
    assert!(
        matches!(e, Error::ProgramFile { .. }) && e.to_string().contains("signature"),
        "{e}"
    );
    let inputs = vec![
        ArraySpec::of::<f32>([2, 3]),
        ArraySpec::of::<f32>([3, 4]),
        ArraySpec::of::<f32>([4]),
    ];
    let sig = Signature {
        inputs: inputs.clone(),
        ..Default::default()
    };
    let p = Program::from_file_with_signature(&path, Some(sig)).unwrap();
    run_and_compare(&client, &p, "mlp");
    // A wrong declared signature is caught at compile, before any execution.
    let wrong = Signature {
        inputs: vec![
            ArraySpec::of::<f32>([3, 2]),
            inputs[1].clone(),
            inputs[2].clone(),
        ],
        ..Default::default()
    };
    let p = Program::from_file_with_signature(&path, Some(wrong)).unwrap();
    let e = client.compile(&p).unwrap_err();
    assert!(
        matches!(e, Error::SignatureMismatch { part: "parameters", ref compiled, .. } if compiled[0] == inputs[0])
            && e.to_string().contains("f32[2,3]"),
        "{e}"
    );
}

#[test]
fn refuses_what_it_cannot_honour() {
    let client = Client::cpu().unwrap();
    let p = Program::from_file(fixture("cuda_only.jaxexport")).unwrap();
    let e = client.compile(&p).unwrap_err();
    assert!(
        matches!(e, Error::Export(_))
            && e.to_string().contains("[cuda]")
            && e.to_string().contains("`cpu`"),
        "{e}"
    );
    let e = Program::from_file(fixture("multi_platform.jaxexport"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("several platforms"), "{e}");
    let e = Program::from_file(fixture("symbolic.jaxexport"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("symbolic dimension `batch`"), "{e}");
    // Garbage and truncated artifacts are errors, not panics.
    let bytes = std::fs::read(fixture("mlp.jaxexport")).unwrap();
    for cut in [0, 3, 9, 100, bytes.len() / 2] {
        assert!(JaxExport::parse(&bytes[..cut]).is_err(), "cut {cut}");
    }
    for cut in (0..bytes.len()).step_by(7) {
        let _ = JaxExport::parse(&bytes[..cut]); // must not panic
    }
    let mut flipped = bytes.clone();
    for b in flipped.iter_mut().take(64) {
        *b ^= 0xa5;
    }
    let _ = JaxExport::parse(&flipped); // must not panic
}

/// `jnp.linalg.solve` exported for CPU calls jaxlib's `lapack_sgetrf_ffi`,
/// which no plugin provides (tests/fixtures/gen_jaxlib_kernels.py): the
/// compile error names that kernel, in JAX 0.12's own serialization (where
/// the plugin's parser fails first) and in one for StableHLO 1.13.3
/// (where the plugin finds no handler).
#[test]
fn linalg_artifacts_name_jaxlibs_kernel() {
    let client = Client::cpu().unwrap();
    for file in ["linalg_solve.jaxexport", "linalg_solve_1_13_3.jaxexport"] {
        let p = Program::from_file(fixture(file)).unwrap();
        let e = match client.compile(&p) {
            Err(e) => e,
            Ok(_) => panic!("{file} compiled"),
        };
        let Error::JaxlibKernel {
            targets, message, ..
        } = &e
        else {
            panic!("{file}: {e:?}");
        };
        assert!(
            targets.contains(&"lapack_sgetrf_ffi".to_string()),
            "{file}: {targets:?}"
        );
        assert!(!message.is_empty(), "{file}: the plugin's message is kept");
        // The message names the program, the kernel and whose it is.
        let text = e.to_string();
        for part in [
            "`solve`",
            "`lapack_sgetrf_ffi`",
            "jaxlib",
            "jax.numpy.linalg",
        ] {
            assert!(text.contains(part), "{file}: no {part} in: {text}");
        }
    }
}

#[test]
fn input_binding_errors_name_the_tensor() {
    let p = Program::from_file(fixture("unused.mlir")).unwrap();
    let mut inputs = read_safetensors(fixture("unused.in.safetensors")).unwrap();
    let e = bind_inputs(&p, &inputs).unwrap_err().to_string();
    assert!(
        e.contains("`arg2` names input 2") && e.contains("takes 2 input(s)"),
        "{e}"
    );
    inputs.retain(|t| t.name != "arg2");
    // jax.jit dropped the unused `y` from the text's @main, so arg1 is f32[2,2] where f32[4] is expected.
    let e = bind_inputs(&p, &inputs).unwrap_err().to_string();
    assert!(
        e.contains("`arg1`") && e.contains("f32[2,2]") && e.contains("f32[4]"),
        "{e}"
    );
    let p = Program::from_file(fixture("mlp.mlir")).unwrap();
    let mut inputs = read_safetensors(fixture("mlp.in.safetensors")).unwrap();
    inputs.retain(|t| t.name != "arg2");
    let e = bind_inputs(&p, &inputs).unwrap_err().to_string();
    assert!(e.contains("missing input 2") && e.contains("f32[4]"), "{e}");
    let e = read_safetensors(fixture("mlp.mlir")).unwrap_err();
    assert!(matches!(e, Error::Safetensors { .. }), "{e}");
}
