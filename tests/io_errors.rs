//! Bad weights files get a typed error naming the culprit: a directory, a
//! file cut short (naming the first tensor whose data is missing), a header
//! that lists a tensor twice, bool tensors holding bytes other than 0 and 1.

use std::path::PathBuf;
use std::sync::OnceLock;

use xlayer::builder::Tree;
use xlayer::io::{read_safetensors, write_host_safetensors};
use xlayer::weights::{load_tree, save_tree, NameMap, SafetensorsFile};
use xlayer::{ArraySpec, Client, DType, Error, NamedArray};

fn client() -> &'static Client {
    static C: OnceLock<Client> = OnceLock::new();
    C.get_or_init(|| Client::cpu().expect("CPU client"))
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xlayer-io-errors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// A safetensors file from a header and a data section, written by hand.
fn raw_file(name: &str, header: &str, data: &[u8]) -> PathBuf {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(data);
    let path = temp(name);
    std::fs::write(&path, b).unwrap();
    path
}

#[test]
fn a_directory_is_named_as_a_directory() {
    let dir = temp("a-folder.safetensors");
    std::fs::create_dir_all(&dir).unwrap();
    for err in [
        SafetensorsFile::open(&dir).unwrap_err(),
        read_safetensors(&dir).unwrap_err(),
    ] {
        let msg = err.to_string();
        assert!(msg.contains("is a directory"), "{msg}");
        assert!(!msg.contains("No such device"), "{msg}");
        match err {
            Error::IsADirectory { path, .. } => assert_eq!(path, dir),
            other => panic!("expected Error::IsADirectory, got {other:?}"),
        }
    }
}

#[test]
fn bool_bytes_error_names_tensor_and_file() {
    let path = temp("flags.safetensors");
    let spec = ArraySpec::new(DType::Bool, vec![4]);
    write_host_safetensors(
        &path,
        &[
            NamedArray::new("ok", spec.clone(), vec![0, 1, 1, 0]),
            NamedArray::new("flags", spec.clone(), vec![0, 1, 2, 0]),
        ],
    )
    .unwrap();
    let file = SafetensorsFile::open(&path).unwrap();
    let wanted = Tree::map([
        ("ok", Tree::leaf(spec.clone())),
        ("flags", Tree::leaf(spec.clone())),
    ]);
    let err = load_tree(client(), &file, &wanted, &NameMap::new()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("flags.safetensors") && msg.contains("`flags`"),
        "{msg}"
    );
    match err {
        Error::Weights {
            file: f,
            tensor,
            reason,
            more,
        } => {
            assert_eq!(f, path);
            assert_eq!(tensor, "flags");
            assert!(reason.contains("byte 2 at element 2"), "{reason}");
            assert!(more.is_empty(), "{more:?}");
        }
        other => panic!("expected Error::Weights, got {other:?}"),
    }
}

#[test]
fn duplicate_keys_are_reported_as_such() {
    let header = r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
    let path = raw_file("dup.safetensors", header, &[0; 8]);
    for err in [
        SafetensorsFile::open(&path).unwrap_err(),
        read_safetensors(&path).unwrap_err(),
    ] {
        let msg = err.to_string();
        assert!(!msg.contains("invalid offset"), "{msg}");
        match err {
            Error::DuplicateTensor { path: p, tensor } => {
                assert_eq!(p, path);
                assert_eq!(tensor, "w");
            }
            other => panic!("expected Error::DuplicateTensor, got {other:?}"),
        }
    }
}

/// A file truncated before it is opened is refused, naming the file and
/// the first tensor whose data is cut off. (A file truncated *while* mapped
/// is a SIGBUS that no code can catch; see `SafetensorsFile`'s docs.)
#[test]
fn an_already_truncated_file_names_file_and_tensor() {
    let client = client();
    let tree = Tree::map([
        (
            "a",
            Tree::leaf(client.buffer_from_host(&[1f32; 64], &[64]).unwrap()),
        ),
        (
            "b",
            Tree::leaf(client.buffer_from_host(&[2f32; 64], &[64]).unwrap()),
        ),
        (
            "c",
            Tree::leaf(client.buffer_from_host(&[3f32; 64], &[64]).unwrap()),
        ),
    ]);
    let good = temp("whole.safetensors");
    save_tree(&good, &tree, &NameMap::new()).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    // The tensor holding data byte 300 (of 768) is the first one cut there.
    let cut_at = 300;
    let victim = ["a", "b", "c"]
        .into_iter()
        .find(|k| {
            let o = &header[*k]["data_offsets"];
            o[0].as_u64().unwrap() <= cut_at && cut_at < o[1].as_u64().unwrap()
        })
        .unwrap();
    let path = temp("cut.safetensors");
    std::fs::write(&path, &bytes[..8 + n + cut_at as usize]).unwrap();
    for err in [
        SafetensorsFile::open(&path).unwrap_err(),
        read_safetensors(&path).unwrap_err(),
    ] {
        let msg = err.to_string();
        assert!(
            msg.contains("cut.safetensors") && msg.contains("truncated"),
            "{msg}"
        );
        match err {
            Error::Truncated {
                path: p,
                tensor,
                needed,
                actual,
            } => {
                assert_eq!(p, path);
                assert_eq!(tensor, victim);
                assert_eq!(actual as usize, 8 + n + 300);
                assert!(needed > actual);
            }
            other => panic!("expected Error::Truncated, got {other:?}"),
        }
    }
}

/// A dtype xlayer does not hold (fp8) is named, with its file and tensor,
/// by both readers; every xlayer dtype round-trips through safetensors.
#[test]
fn an_unsupported_dtype_names_dtype_file_and_tensor() {
    let path = raw_file(
        "fp8.safetensors",
        r#"{"ok":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w8":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[4,6]}}"#,
        &[0, 0, 128, 63, 1, 2],
    );
    for err in [
        SafetensorsFile::open(&path).unwrap_err(),
        read_safetensors(&path).unwrap_err(),
    ] {
        match &err {
            Error::SafetensorsDtype {
                dtype,
                file,
                tensor,
            } => {
                assert_eq!(dtype, "F8_E4M3");
                assert_eq!(file.as_deref(), Some(path.as_path()));
                assert_eq!(tensor.as_deref(), Some("w8"));
            }
            other => panic!("expected SafetensorsDtype, got {other:?}"),
        }
        assert!(err.to_string().contains("`w8`"), "{err}");
    }
    for d in DType::ALL {
        assert_eq!(DType::from_safetensors(d.to_safetensors()).unwrap(), d);
    }
    assert!(matches!(
        DType::from_safetensors(safetensors::Dtype::C64),
        Err(Error::SafetensorsDtype {
            file: None,
            tensor: None,
            ..
        })
    ));
}

/// `read_safetensors` (over the mapped reader) keeps the file's data order,
/// which positional input binding relies on, not name order.
#[test]
fn read_safetensors_keeps_file_order() {
    let path = raw_file(
        "order.safetensors",
        r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]},"z":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#,
        &[7, 9],
    );
    let file = SafetensorsFile::open(&path).unwrap();
    assert_eq!(file.names_in_file_order(), vec!["z", "a"]);
    let got = read_safetensors(&path).unwrap();
    let names: Vec<&str> = got.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, vec!["z", "a"]);
    assert_eq!(
        (got[0].array.bytes.clone(), got[1].array.bytes.clone()),
        (vec![7], vec![9])
    );
    assert_eq!(got[1].array.spec, ArraySpec::new(DType::U8, vec![1]));
}
