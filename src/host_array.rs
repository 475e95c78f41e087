//! [`HostArray`]: the crate's one host-array type (a spec and its
//! row-major little-endian bytes), what `Model::predict` takes and returns
//! and what safetensors files hold; [`NamedArray`]: one with its name in a
//! file.

use crate::dtype::ArraySpec;
use crate::error::{Error, Result};

/// Host data with a spec (row-major, little-endian): what `predict` takes
/// and returns, and each tensor of a safetensors file.
#[derive(Debug, Clone, PartialEq)]
pub struct HostArray {
    /// Dtype and dimensions.
    pub spec: ArraySpec,
    /// The data.
    pub bytes: Vec<u8>,
}

impl HostArray {
    /// From a slice of native values and dimensions.
    ///
    /// Errors: [`Error::ShapeTooLarge`] when the size overflows;
    /// [`Error::HostDataSize`] when `data` does not fill `dims`.
    ///
    /// ```
    /// use xlayer::HostArray;
    /// let a = HostArray::from_slice(&[1f32, 2.0, 3.0], &[3])?;
    /// assert_eq!(a.bytes.len(), 12);
    /// assert_eq!(a.to_vec::<f32>()?, vec![1.0, 2.0, 3.0]);
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn from_slice<T: crate::NativeType>(data: &[T], dims: &[usize]) -> Result<HostArray> {
        let spec = ArraySpec::new(T::DTYPE, dims);
        spec.check_size(|| "HostArray".into())?;
        if data.len() != spec.element_count() {
            return Err(Error::HostDataSize {
                expected: spec.element_count(),
                actual: data.len(),
                spec,
            });
        }
        let mut bytes = Vec::with_capacity(spec.size_in_bytes());
        for &x in data {
            x.extend_le_bytes(&mut bytes);
        }
        Ok(HostArray { spec, bytes })
    }

    /// The data as `Vec<T>`.
    pub fn to_vec<T: crate::NativeType>(&self) -> Result<Vec<T>> {
        if T::DTYPE != self.spec.dtype {
            return Err(Error::DType {
                context: "HostArray::to_vec".into(),
                expected: T::DTYPE,
                actual: self.spec.dtype,
            });
        }
        Ok(self
            .bytes
            .chunks_exact(std::mem::size_of::<T>())
            .map(T::from_le_slice)
            .collect())
    }

    /// Rows `start..end` of the first dimension.
    pub fn rows(&self, start: usize, end: usize) -> Result<HostArray> {
        let Some(&n) = self.spec.dims.first() else {
            return Err(Error::RowsOutOfRange {
                spec: self.spec.clone(),
                start,
                end,
            });
        };
        if start > end || end > n {
            return Err(Error::RowsOutOfRange {
                spec: self.spec.clone(),
                start,
                end,
            });
        }
        let row = self.spec.size_in_bytes() / n.max(1);
        let mut spec = self.spec.clone();
        spec.dims[0] = end - start;
        Ok(HostArray {
            spec,
            bytes: self.bytes[start * row..end * row].to_vec(),
        })
    }

    /// Appends the rows of `other` (same dtype and trailing dimensions).
    pub fn concat_rows(mut self, other: &HostArray) -> Result<HostArray> {
        let same_rows = |a: &ArraySpec, b: &ArraySpec| {
            a.rank() > 0 && b.rank() > 0 && a.dims[1..] == b.dims[1..]
        };
        if self.spec.dtype != other.spec.dtype || !same_rows(&self.spec, &other.spec) {
            return Err(Error::DataMismatch {
                what: "the rows to stack",
                found: other.spec.clone(),
                expected: format!("cannot stack them under {}", self.spec),
            });
        }
        self.spec.dims[0] = self.spec.dims[0]
            .checked_add(other.spec.dims[0])
            .ok_or_else(|| Error::ShapeTooLarge {
                what: "stacked rows".into(),
                spec: other.spec.clone(),
            })?;
        self.bytes.extend_from_slice(&other.bytes);
        Ok(self)
    }
}

/// A host array with its name: one tensor of a safetensors file.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedArray {
    /// The tensor's name in the file.
    pub name: String,
    /// Its spec and data.
    pub array: HostArray,
}

impl NamedArray {
    /// A named array from its parts (not checked here: the safetensors
    /// writer checks that `bytes` fills `spec`).
    pub fn new(name: impl Into<String>, spec: ArraySpec, bytes: Vec<u8>) -> NamedArray {
        NamedArray {
            name: name.into(),
            array: HostArray { spec, bytes },
        }
    }
}

#[cfg(test)]
mod host_array_tests {
    use super::HostArray;

    #[test]
    fn rows_and_stacking_check_their_input() {
        let a = HostArray::from_slice(&[1f32, 2.0, 3.0, 4.0], &[2, 2]).unwrap();
        assert_eq!(
            a.rows(1, 2).unwrap().to_vec::<f32>().unwrap(),
            vec![3.0, 4.0]
        );
        assert!(a
            .rows(1, 3)
            .unwrap_err()
            .to_string()
            .contains("out of range"));
        let s = HostArray::from_slice(&[1f32], &[]).unwrap();
        assert!(s
            .rows(0, 0)
            .unwrap_err()
            .to_string()
            .contains("out of range for f32[]"));
        assert!(s
            .clone()
            .concat_rows(&s)
            .unwrap_err()
            .to_string()
            .contains("cannot stack"));
        let b = HostArray::from_slice(&[5f32, 6.0, 7.0], &[1, 3]).unwrap();
        assert!(a
            .clone()
            .concat_rows(&b)
            .unwrap_err()
            .to_string()
            .contains("f32[1,3]"));
        let c = a.clone().concat_rows(&a).unwrap();
        assert_eq!(c.spec.dims, vec![4, 2]);
    }
}
