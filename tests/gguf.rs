//! The GGUF reader against the `gguf` Python package: a tiny file written by
//! its GGUFWriter with one tensor per supported type, and the values its
//! `dequantize` gives (tests/fixtures/gen_gguf.py). Then corrupted copies:
//! each is refused with an [`Error::Gguf`] naming the file, the tensor and
//! the problem.

use std::fs;
use std::path::{Path, PathBuf};

use xlayer::gguf::{GgmlType, GgufFile, GgufProblem, MetaValue};
use xlayer::Error;

fn fixture_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf/quants.gguf")
}

fn expected() -> serde_json::Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf/quants.json");
    serde_json::from_str(&fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn metadata_and_tensor_infos() {
    let f = GgufFile::open(fixture_path()).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), 32);
    assert_eq!(f.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(f.get_usize("xlayer.answer").unwrap(), 42);
    assert_eq!(f.get_f64("xlayer.theta").unwrap(), 1e5);
    assert_eq!(f.get_str_array("xlayer.words").unwrap(), ["a", "bb", "ccc"]);
    assert!(matches!(
        f.get("xlayer.fixture").unwrap(),
        MetaValue::String(s) if s == "quants"
    ));
    let err = f.get_usize("xlayer.fixture").unwrap_err();
    assert!(
        matches!(&err, Error::Gguf { problem: GgufProblem::KeyType { key, .. }, .. } if key == "xlayer.fixture"),
        "{err}"
    );
    let err = f.get_str("nope").unwrap_err();
    assert!(
        err.to_string().contains("metadata `nope` is missing"),
        "{err}"
    );
    let names: Vec<&str> = f.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        ["f32", "f16", "bf16", "q4_0", "q4_1", "q8_0", "q4_k", "q5_k", "q6_k"]
    );
    let t = f.tensor("q4_1").unwrap();
    assert_eq!(
        (t.shape.clone(), t.ty, t.size),
        (vec![2, 256], GgmlType::Q4_1, 320)
    );
    assert_eq!(f.bytes("q6_k").unwrap().len(), 420);
    let err = f.tensor("missing").unwrap_err();
    assert!(
        matches!(&err, Error::Weights { tensor, .. } if tensor == "missing"),
        "{err}"
    );
}

#[test]
fn dequantize_matches_gguf_py() {
    let f = GgufFile::open(fixture_path()).unwrap();
    let want = expected();
    let mut checked = 0;
    for t in f.tensors() {
        let e = &want[&t.name];
        assert_eq!(e["type"].as_str().unwrap(), t.ty.name());
        let ev: Vec<f32> = e["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        let got = f.dequantize(&t.name).unwrap();
        assert_eq!(got.len(), ev.len());
        // Same f32 operations in the same order as gguf-py: bit-identical.
        for (i, (g, w)) in got.iter().zip(&ev).enumerate() {
            assert_eq!(
                g.to_bits(),
                w.to_bits(),
                "{} element {i}: {g} vs {w}",
                t.name
            );
        }
        assert!(ev.iter().any(|&v| v != 0.0));
        checked += 1;
    }
    assert_eq!(checked, 9);
}

/// A copy of the fixture with `edit` applied, written to a fresh temp file.
fn corrupted(tag: &str, edit: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut b = fs::read(fixture_path()).unwrap();
    edit(&mut b);
    let dir = std::env::temp_dir().join(format!("xlayer-gguf-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!("{tag}.gguf"));
    fs::write(&p, b).unwrap();
    p
}

/// Byte position of tensor `name`'s info: its (length-prefixed) name.
fn info_at(b: &[u8], name: &str) -> usize {
    let mut pat = (name.len() as u64).to_le_bytes().to_vec();
    pat.extend(name.as_bytes());
    b.windows(pat.len()).position(|w| w == pat).unwrap() + pat.len()
}

/// Offsets within a 2-D tensor's info (after the name): type and offset.
const TYPE_AT: usize = 4 + 16;
const OFFSET_AT: usize = TYPE_AT + 4;

fn open_err(p: &Path) -> (Option<String>, GgufProblem, String) {
    match GgufFile::open(p) {
        Err(e @ Error::Gguf { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(&p.display().to_string()), "{msg}");
            let Error::Gguf {
                tensor, problem, ..
            } = e
            else {
                unreachable!()
            };
            (tensor, problem, msg)
        }
        other => panic!("expected a GGUF error, got {other:?}"),
    }
}

#[test]
fn corrupt_files_are_refused_with_the_culprit_named() {
    // Truncated: in the header, in the tensor infos, in the last tensor's
    // data (the file ends with up to 31 bytes of alignment padding).
    let len = fs::read(fixture_path()).unwrap().len();
    for cut in [2, 500, len - 100] {
        let p = corrupted(&format!("cut{cut}"), |b| b.truncate(cut));
        let (tensor, problem, msg) = open_err(&p);
        match cut {
            2 => assert!(matches!(
                problem,
                GgufProblem::Truncated { what: "magic", .. }
            )),
            500 => assert!(matches!(problem, GgufProblem::Truncated { .. }), "{msg}"),
            _ => {
                assert_eq!(tensor.as_deref(), Some("q6_k"), "{msg}");
                assert!(matches!(problem, GgufProblem::OutOfBounds { .. }), "{msg}");
            }
        }
    }
    let p = corrupted("magic", |b| b[0] = b'X');
    assert!(matches!(open_err(&p).1, GgufProblem::Magic { .. }));
    let p = corrupted("version", |b| b[4] = 9);
    assert_eq!(open_err(&p).1, GgufProblem::Version { version: 9 });
    // A tensor count that would need more bytes than the file has.
    let p = corrupted("count", |b| {
        b[8..16].copy_from_slice(&u64::MAX.to_le_bytes())
    });
    assert!(matches!(
        open_err(&p).1,
        GgufProblem::Count {
            what: "tensor count",
            ..
        }
    ));
    // Unknown and unsupported quantization types.
    let p = corrupted("type", |b| {
        let at = info_at(b, "q4_1") + TYPE_AT;
        b[at..at + 4].copy_from_slice(&77u32.to_le_bytes());
    });
    let (tensor, problem, msg) = open_err(&p);
    assert_eq!(tensor.as_deref(), Some("q4_1"));
    assert_eq!(problem, GgufProblem::UnknownType { type_id: 77 });
    assert!(
        msg.contains("tensor `q4_1`: unknown tensor type id 77"),
        "{msg}"
    );
    let p = corrupted("q5_0", |b| {
        let at = info_at(b, "q8_0") + TYPE_AT;
        b[at..at + 4].copy_from_slice(&6u32.to_le_bytes());
    });
    assert!(matches!(
        open_err(&p).1,
        GgufProblem::UnsupportedType { name: "Q5_0", .. }
    ));
    // Misaligned, overlapping, and out-of-file offsets.
    let set_offset = |b: &mut Vec<u8>, name: &str, off: u64| {
        let at = info_at(b, name) + OFFSET_AT;
        b[at..at + 8].copy_from_slice(&off.to_le_bytes());
    };
    let p = corrupted("misaligned", |b| set_offset(b, "q8_0", 4 + 32 * 40));
    let (tensor, problem, _) = open_err(&p);
    assert_eq!(tensor.as_deref(), Some("q8_0"));
    assert!(matches!(
        problem,
        GgufProblem::Misaligned { alignment: 32, .. }
    ));
    let p = corrupted("overlap", |b| set_offset(b, "q4_0", 0));
    let (tensor, problem, msg) = open_err(&p);
    assert!(
        matches!(&problem, GgufProblem::Overlap { other, .. } if other == "f32" || other == "q4_0"),
        "{msg}"
    );
    assert!(tensor.is_some());
    let p = corrupted("far", |b| set_offset(b, "f16", u64::MAX - 31));
    let (tensor, problem, _) = open_err(&p);
    assert_eq!(tensor.as_deref(), Some("f16"));
    assert!(matches!(problem, GgufProblem::OutOfBounds { .. }));
    // A row that is not whole blocks (ne[0] = 255 for a Q4_K tensor).
    let p = corrupted("partial", |b| {
        let at = info_at(b, "q4_k") + 4;
        b[at..at + 8].copy_from_slice(&255u64.to_le_bytes());
    });
    assert!(matches!(
        open_err(&p).1,
        GgufProblem::PartialBlock { row: 255, .. }
    ));
    // Not a file at all.
    let err = GgufFile::open("/nonexistent/x.gguf").unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
}

/// The pinned SmolLM2 file (fetched on first use, like the MiniLM model)
/// opens and validates: 272 tensors, Q4_1 weights, a Q8_0 embedding.
#[test]
fn smollm2_file_validates() {
    let dir = xla_build::ensure_asset(&xla_build::SMOLLM2)
        .expect("the SmolLM2 model (cargo run -p xla-build -- fetch smollm2)");
    let f = GgufFile::open(dir.join(xla_build::SMOLLM2_GGUF)).unwrap();
    assert_eq!(f.file_size(), 98_362_432);
    assert_eq!(f.tensors().len(), 272);
    assert_eq!(f.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(f.get_usize("llama.block_count").unwrap(), 30);
    let e = f.tensor("token_embd.weight").unwrap();
    assert_eq!((e.ty, e.shape.clone()), (GgmlType::Q8_0, vec![49152, 576]));
    let q = f.tensor("blk.0.attn_k.weight").unwrap();
    assert_eq!((q.ty, q.shape.clone()), (GgmlType::Q4_1, vec![192, 576]));
    let norm = f.dequantize("output_norm.weight").unwrap();
    assert_eq!(norm.len(), 576);
    assert!(norm.iter().all(|x| x.is_finite()) && norm.iter().any(|&x| x != 1.0));
}

#[test]
fn llama_loader_names_missing_and_misshaped_tensors() {
    use xlayer::models::llama::LlamaConfig;
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf/bad_llama.gguf");
    let f = GgufFile::open(&p).unwrap();
    let err = LlamaConfig::from_gguf(&f).unwrap_err();
    let Error::Weights { tensor, more, .. } = &err else {
        panic!("expected a weights error, got {err}")
    };
    assert_eq!(tensor, "blk.0.attn_q.weight", "{err}");
    assert_eq!(more.len(), 1, "{err}");
    assert_eq!(more[0].0, "blk.0.ffn_down.weight");
    assert!(
        err.to_string().contains("[32, 64]") && err.to_string().contains("missing"),
        "{err}"
    );
    // Another architecture.
    let p = corrupted("mamba", |b| {
        let mut pat = 5u64.to_le_bytes().to_vec();
        pat.extend(b"llama");
        let at = b.windows(pat.len()).position(|w| w == pat).unwrap() + 8;
        b[at..at + 5].copy_from_slice(b"mamba");
    });
    let err = LlamaConfig::from_gguf(&GgufFile::open(&p).unwrap()).unwrap_err();
    assert!(
        matches!(&err, Error::Gguf { problem: GgufProblem::Architecture { found, .. }, .. } if found == "mamba"),
        "{err}"
    );
}
