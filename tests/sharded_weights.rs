//! Weights from a memory-mapped safetensors file straight into shards
//! (`Array::from_safetensors`): each device's buffer holds its slice only.

use anyhow::Result;
use std::path::PathBuf;
use xlayer::sharding::{Array, Mesh, NamedSharding};
use xlayer::weights::SafetensorsFile;
use xlayer::{Client, Error, P};

/// Writes a safetensors file holding `w` ([8, 6] f32, w[i][j] = 10 i + j)
/// and `b` ([6] f32), by the format's layout (u64 header size, JSON, data),
/// into a file of its own per test (`test`): tests run in parallel threads,
/// and one rewriting a file that another has mapped would truncate it.
fn fixture(test: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("xlayer-sharded-weights-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{test}.safetensors"));
    let w: Vec<f32> = (0..8)
        .flat_map(|i| (0..6).map(move |j| (10 * i + j) as f32))
        .collect();
    let b: Vec<f32> = (0..6).map(|j| j as f32 * 0.5).collect();
    let header = r#"{"b":{"dtype":"F32","shape":[6],"data_offsets":[0,24]},"w":{"dtype":"F32","shape":[8,6],"data_offsets":[24,216]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    for v in b.iter().chain(&w) {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(&path, bytes)?;
    Ok(path)
}

#[test]
fn each_device_receives_its_slice_of_a_mapped_tensor() -> Result<()> {
    let file = SafetensorsFile::open(fixture("slices")?)?;
    let mesh = Mesh::new(&Client::cpu_devices(4)?, &[4], &["model"])?;
    // Rows over 'model': 4 buffers of [2, 6].
    let a = Array::from_safetensors(&file, "w", &NamedSharding::new(&mesh, P!["model", None]))?;
    assert_eq!(a.dims(), &[8, 6]);
    assert_eq!(a.shards().len(), 4);
    for (d, shard) in a.shards().iter().enumerate() {
        assert_eq!(shard.dims(), &[2, 6]);
        assert_eq!(shard.device(), &mesh.devices()[d]);
        let want: Vec<f32> = (2 * d..2 * d + 2)
            .flat_map(|i| (0..6).map(move |j| (10 * i + j) as f32))
            .collect();
        assert_eq!(shard.to_vec::<f32>()?, want, "shard {d}");
    }
    // Columns over a 2-device 'model' axis of a 2x2 mesh, replicated over 'data'.
    let mesh22 = Mesh::new(&Client::cpu_devices(4)?, &[2, 2], &["data", "model"])?;
    let c = Array::from_safetensors(&file, "w", &NamedSharding::new(&mesh22, P![None, "model"]))?;
    for (d, shard) in c.shards().iter().enumerate() {
        assert_eq!(shard.dims(), &[8, 3]);
        let j0 = 3 * (d % 2);
        let want: Vec<f32> = (0..8)
            .flat_map(|i| (j0..j0 + 3).map(move |j| (10 * i + j) as f32))
            .collect();
        assert_eq!(shard.to_vec::<f32>()?, want, "shard {d}");
    }
    // Replicated: every device holds the whole tensor; gather round-trips.
    let r = Array::from_safetensors(&file, "b", &NamedSharding::new(&mesh, P![]))?;
    assert!(r.shards().iter().all(|s| s.dims() == [6]));
    assert_eq!(r.to_vec::<f32>()?, vec![0.0, 0.5, 1.0, 1.5, 2.0, 2.5]);
    Ok(())
}

#[test]
fn sharded_loading_errors_name_the_tensor_and_file() -> Result<()> {
    let path = fixture("errors")?;
    let file = SafetensorsFile::open(&path)?;
    let mesh = Mesh::new(&Client::cpu_devices(4)?, &[4], &["model"])?;
    // 6 columns over 4 devices.
    let e = Array::from_safetensors(&file, "w", &NamedSharding::new(&mesh, P![None, "model"]))
        .unwrap_err();
    assert!(
        matches!(&e, Error::IndivisibleDimension { tensor, size: 6, .. } if tensor == "w"),
        "{e}"
    );
    let e = Array::from_safetensors(&file, "nope", &NamedSharding::new(&mesh, P![])).unwrap_err();
    assert!(
        matches!(&e, Error::TensorNotInFile { path: p, tensor } if tensor == "nope" && *p == path),
        "{e}"
    );
    assert!(e.to_string().contains("errors.safetensors"), "{e}");
    Ok(())
}
