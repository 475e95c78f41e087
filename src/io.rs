//! Host tensors in safetensors files: reading them, binding them to a
//! program's inputs, and writing outputs.
//!
//! Binding rules ([`bind_inputs`]): tensors named `argK` or `K` go to the
//! function's input `K` (its position in the Python call); otherwise, when
//! no tensor is so named, tensors are taken in file order (the order of
//! their data in the file). Every bound tensor's dtype and shape is checked
//! against the program's signature before anything is uploaded.

use std::path::Path;

use crate::error::{Error, Result};
use crate::host_array::NamedArray;
use crate::pjrt::buffer::Buffer;
use crate::pjrt::client::Client;
use crate::program::Program;
use crate::weights::SafetensorsFile;

/// Reads every tensor of a safetensors file, in file order (the order of
/// their data in the file), copied out of [`SafetensorsFile`]'s map.
///
/// Errors: as [`SafetensorsFile::open`] (which validates the whole header
/// before anything is read).
pub fn read_safetensors(path: impl AsRef<Path>) -> Result<Vec<NamedArray>> {
    let file = SafetensorsFile::open(path)?;
    Ok(file
        .names_in_file_order()
        .into_iter()
        .filter_map(|name| {
            Some(NamedArray::new(
                name,
                file.spec(name)?.clone(),
                file.bytes(name)?.to_vec(),
            ))
        })
        .collect())
}

/// Writes named tensors to a safetensors file (buffers are copied to the
/// host), as [`SafetensorsFile::write`] does.
///
/// Errors: [`Error`]s of [`Buffer::to_bytes`], then as [`SafetensorsFile::write`].
pub fn write_safetensors(path: impl AsRef<Path>, tensors: &[(String, &Buffer)]) -> Result<()> {
    let path = path.as_ref();
    let mut host = Vec::with_capacity(tensors.len());
    for (name, b) in tensors {
        host.push(NamedArray::new(
            name.clone(),
            b.spec().clone(),
            b.to_bytes()?,
        ));
    }
    write_host_safetensors(path, &host)
}

/// Writes named host arrays to a safetensors file, as
/// [`SafetensorsFile::write`] does (atomically, by rename).
///
/// Errors: as [`SafetensorsFile::write`].
pub fn write_host_safetensors(path: &Path, tensors: &[NamedArray]) -> Result<()> {
    SafetensorsFile::write(path, tensors)
}

/// The function-input position a tensor name designates (`arg3` or `3`).
fn position_of(name: &str) -> Option<usize> {
    name.strip_prefix("arg").unwrap_or(name).parse().ok()
}

/// Chooses, for each parameter of `program`'s `@main`, the tensor that feeds
/// it (see the module docs), checking dtypes and shapes.
///
/// Errors: [`Error::Input`] for a missing input, an unused or duplicate
/// tensor, a count mismatch, or a dtype/shape mismatch (naming the tensor,
/// the expected and the actual type).
pub fn bind_inputs<'t>(
    program: &Program,
    tensors: &'t [NamedArray],
) -> Result<Vec<&'t NamedArray>> {
    let n = program.caller_input_count();
    let named = tensors.iter().any(|t| position_of(&t.name).is_some());
    let mut by_position: Vec<Option<&NamedArray>> = vec![None; n];
    if named {
        for t in tensors {
            let k = position_of(&t.name).ok_or_else(|| Error::Input(format!("tensor `{}` is not named `argK` like the others; name every input `argK` (K = its position) or none", t.name)))?;
            if k >= n {
                return Err(Error::Input(format!(
                    "tensor `{}` names input {k}, but `{}` takes {n} input(s)",
                    t.name,
                    program.name()
                )));
            }
            if by_position[k].replace(t).is_some() {
                return Err(Error::Input(format!("two tensors name input {k}")));
            }
        }
    } else {
        if tensors.len() != n {
            return Err(Error::Input(format!(
                "`{}` takes {n} input(s), the file holds {} tensor(s)",
                program.name(),
                tensors.len()
            )));
        }
        for (slot, t) in by_position.iter_mut().zip(tensors) {
            *slot = Some(t);
        }
    }
    let mut bound = Vec::with_capacity(program.signature().inputs.len());
    for (param, (&k, expected)) in program
        .input_positions()
        .iter()
        .zip(&program.signature().inputs)
        .enumerate()
    {
        let t = by_position
            .get(k)
            .copied()
            .flatten()
            .ok_or_else(|| Error::Input(format!("missing input {k} (parameter {param} of `{}`, {expected}): no tensor named `arg{k}`", program.name())))?;
        if &t.array.spec != expected {
            return Err(Error::Input(format!(
                "tensor `{}` is {}, but input {k} of `{}` is {expected}",
                t.name,
                t.array.spec,
                program.name()
            )));
        }
        bound.push(t);
    }
    Ok(bound)
}

/// Uploads bound tensors to `client`'s default device.
pub fn upload(client: &Client, tensors: &[&NamedArray]) -> Result<Vec<Buffer>> {
    tensors
        .iter()
        .map(|t| client.buffer_from_bytes(&t.array.bytes, &t.array.spec, client.default_device()))
        .collect()
}
