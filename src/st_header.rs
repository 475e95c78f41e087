//! Checks of a safetensors header that the `safetensors` crate does not
//! make, or reports in terms that do not name the culprit: a tensor name
//! listed twice (the crate keeps the last one and then complains about an
//! "invalid offset"), a file cut short (named by the first tensor whose data
//! is missing), and plain explanations of the crate's other refusals.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::error::{Error, Result};

/// The first key that a JSON object lists twice (`None` when all differ).
struct FirstDuplicate(Option<String>);

impl<'de> Deserialize<'de> for FirstDuplicate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Keys;
        impl<'de> Visitor<'de> for Keys {
            type Value = FirstDuplicate;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<FirstDuplicate, A::Error> {
                let mut seen = HashSet::new();
                let mut dup = None;
                while let Some(k) = m.next_key::<String>()? {
                    m.next_value::<IgnoredAny>()?;
                    if dup.is_none() && !seen.insert(k.clone()) {
                        dup = Some(k);
                    }
                }
                Ok(FirstDuplicate(dup))
            }
        }
        d.deserialize_map(Keys)
    }
}

/// The header's bytes, when the length prefix fits the file.
fn header(bytes: &[u8]) -> Option<&[u8]> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let end = 8usize.checked_add(usize::try_from(n).ok()?)?;
    bytes.get(8..end)
}

/// Checks what the `safetensors` crate would misreport, before it parses
/// the file: a duplicated tensor name ([`Error::DuplicateTensor`]) and data
/// past the end of the file ([`Error::Truncated`], naming the first tensor
/// cut off). A header that is not valid JSON passes here and is reported
/// by the crate (see [`refusal`]).
pub(crate) fn check(path: &Path, bytes: &[u8]) -> Result<()> {
    let Some(h) = header(bytes) else {
        return Ok(());
    };
    if let Ok(FirstDuplicate(Some(tensor))) = serde_json::from_slice::<FirstDuplicate>(h) {
        return Err(Error::DuplicateTensor {
            path: path.to_path_buf(),
            tensor,
        });
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(h) else {
        return Ok(());
    };
    let Some(obj) = v.as_object() else {
        return Ok(());
    };
    let data_start = 8 + h.len() as u64;
    let actual = bytes.len() as u64;
    // Tensors in the order of their data; the first one that ends past the
    // end of the file is the one cut off.
    let mut spans: Vec<(u64, u64, &str)> = obj
        .iter()
        .filter_map(|(name, t)| {
            let o = t.get("data_offsets")?;
            Some((o.get(0)?.as_u64()?, o.get(1)?.as_u64()?, name.as_str()))
        })
        .collect();
    spans.sort();
    for (_, end, name) in spans {
        let needed = data_start.saturating_add(end);
        if needed > actual {
            return Err(Error::Truncated {
                path: path.to_path_buf(),
                tensor: name.to_string(),
                needed,
                actual,
            });
        }
    }
    Ok(())
}

/// The error for a file the `safetensors` crate refused, explained in terms
/// of the file: the size checks (header length and tensor data against the
/// file size) say how many bytes were claimed and how many the file has.
pub(crate) fn refusal(path: &Path, e: &safetensors::SafeTensorError, bytes: &[u8]) -> Error {
    use safetensors::SafeTensorError as E;
    let len = bytes.len();
    let claimed = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
    let reason = match (e, claimed) {
        (E::HeaderTooSmall, _) | (_, None) => {
            format!("the file is {len} bytes, too short for a header (truncated?)")
        }
        (E::HeaderTooLarge | E::InvalidHeaderLength, Some(n)) => {
            if n.saturating_add(8) > len as u64 {
                format!("header claims {n} bytes but the file has {len} (truncated, or not safetensors)")
            } else {
                format!("header claims {n} bytes, more than safetensors allows")
            }
        }
        (E::InvalidHeader(err), _) => format!("header is not valid UTF-8: {err}"),
        (E::InvalidHeaderDeserialization(err), _) => format!("header is not valid JSON: {err}"),
        (E::MetadataIncompleteBuffer, Some(n)) => {
            let have = len.saturating_sub(8usize.saturating_add(n as usize));
            match header(bytes).and_then(data_end) {
                Some(need) if need > have => format!(
                    "the header describes {need} bytes of tensor data but the file holds {have} (truncated?)"
                ),
                Some(need) => format!(
                    "the header describes {need} bytes of tensor data but the file holds {have} (trailing bytes)"
                ),
                None => format!("tensor data does not fill the file ({have} bytes): {e}"),
            }
        }
        _ => e.to_string(),
    };
    Error::Safetensors {
        path: path.to_path_buf(),
        reason: format!("not a valid safetensors file: {reason}"),
    }
}

/// The end of the last tensor's data (`None` if no tensor has `data_offsets`).
fn data_end(header: &[u8]) -> Option<usize> {
    let v: serde_json::Value = serde_json::from_slice(header).ok()?;
    v.as_object()?
        .values()
        .filter_map(|t| t.get("data_offsets")?.get(1)?.as_u64())
        .max()
        .map(|end| end as usize)
}

/// [`Error::IsADirectory`] when `path` is a directory (mapping or reading
/// one fails with an unhelpful "No such device").
pub(crate) fn not_a_directory(what: &'static str, path: &Path) -> Result<()> {
    if path.is_dir() {
        return Err(Error::IsADirectory {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data: usize) -> Vec<u8> {
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(header.as_bytes());
        b.resize(b.len() + data, 0);
        b
    }

    #[test]
    fn duplicate_key_is_named() {
        let h = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
        match check(Path::new("w.st"), &file(h, 8)) {
            Err(Error::DuplicateTensor { tensor, .. }) => assert_eq!(tensor, "a"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn first_cut_tensor_is_named() {
        let h = r#"{"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        assert!(check(Path::new("w.st"), &file(h, 16)).is_ok());
        match check(Path::new("w.st"), &file(h, 10)) {
            Err(Error::Truncated {
                tensor,
                needed,
                actual,
                ..
            }) => {
                assert_eq!(tensor, "b");
                assert_eq!(needed, 8 + h.len() as u64 + 16);
                assert_eq!(actual, 8 + h.len() as u64 + 10);
            }
            other => panic!("{other:?}"),
        }
    }
}
