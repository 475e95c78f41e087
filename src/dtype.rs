//! Element types and array specs, shared by the runtime and the builder.
//!
//! [`DType`] names every element type xlayer moves between host and device;
//! [`NativeType`] ties each to the Rust type that holds it on the host;
//! [`ArraySpec`] is a dtype plus dimensions (JAX's `ShapeDtypeStruct`).

use std::fmt;

use half::{bf16, f16};

/// An element type, named as in XLA (`f32`, `bf16`, `s8`, `u32`, `pred`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    /// Booleans (XLA `PRED`, StableHLO `i1`).
    Bool,
    /// Signed 8-bit integers.
    I8,
    /// Signed 16-bit integers.
    I16,
    /// Signed 32-bit integers.
    I32,
    /// Signed 64-bit integers.
    I64,
    /// Unsigned 8-bit integers.
    U8,
    /// Unsigned 16-bit integers.
    U16,
    /// Unsigned 32-bit integers.
    U32,
    /// Unsigned 64-bit integers.
    U64,
    /// IEEE half precision ([`half::f16`]).
    F16,
    /// bfloat16 ([`half::bf16`]).
    BF16,
    /// IEEE single precision.
    F32,
    /// IEEE double precision.
    F64,
}

impl DType {
    /// Every dtype, in a stable order.
    pub const ALL: [DType; 13] = [
        DType::Bool,
        DType::I8,
        DType::I16,
        DType::I32,
        DType::I64,
        DType::U8,
        DType::U16,
        DType::U32,
        DType::U64,
        DType::F16,
        DType::BF16,
        DType::F32,
        DType::F64,
    ];

    /// Size of one element in bytes.
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::Bool | DType::I8 | DType::U8 => 1,
            DType::I16 | DType::U16 | DType::F16 | DType::BF16 => 2,
            DType::I32 | DType::U32 | DType::F32 => 4,
            DType::I64 | DType::U64 | DType::F64 => 8,
        }
    }

    /// Size of one element in bits.
    pub fn bit_width(self) -> usize {
        if self == DType::Bool {
            1
        } else {
            self.size_in_bytes() * 8
        }
    }

    /// True for f16, bf16, f32, f64.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F16 | DType::BF16 | DType::F32 | DType::F64)
    }

    /// True for the signed and unsigned integer types (not bool).
    pub fn is_int(self) -> bool {
        self.is_signed_int() || self.is_unsigned_int()
    }

    /// True for i8..i64.
    pub fn is_signed_int(self) -> bool {
        matches!(self, DType::I8 | DType::I16 | DType::I32 | DType::I64)
    }

    /// True for u8..u64.
    pub fn is_unsigned_int(self) -> bool {
        matches!(self, DType::U8 | DType::U16 | DType::U32 | DType::U64)
    }

    /// The element type as StableHLO writes it (`f32`, `bf16`, `i32`, `ui8`, `i1`).
    pub fn mlir_name(self) -> &'static str {
        match self {
            DType::Bool => "i1",
            DType::I8 => "i8",
            DType::I16 => "i16",
            DType::I32 => "i32",
            DType::I64 => "i64",
            DType::U8 => "ui8",
            DType::U16 => "ui16",
            DType::U32 => "ui32",
            DType::U64 => "ui64",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F32 => "f32",
            DType::F64 => "f64",
        }
    }

    /// Parses a StableHLO element type name; `None` for types xlayer does not hold.
    pub fn from_mlir_name(name: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.mlir_name() == name)
    }

    /// The safetensors dtype that stores this one (`F32`, `BF16`, `BOOL`, ...).
    ///
    /// The inverse of [`DType::from_safetensors`]; its `Display` is the name
    /// written in safetensors headers.
    ///
    /// ```
    /// use xlayer::DType;
    /// assert_eq!(DType::BF16.to_safetensors().to_string(), "BF16");
    /// assert_eq!(DType::from_safetensors(DType::Bool.to_safetensors())?, DType::Bool);
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn to_safetensors(self) -> safetensors::Dtype {
        use safetensors::Dtype as S;
        match self {
            DType::Bool => S::BOOL,
            DType::I8 => S::I8,
            DType::I16 => S::I16,
            DType::I32 => S::I32,
            DType::I64 => S::I64,
            DType::U8 => S::U8,
            DType::U16 => S::U16,
            DType::U32 => S::U32,
            DType::U64 => S::U64,
            DType::F16 => S::F16,
            DType::BF16 => S::BF16,
            DType::F32 => S::F32,
            DType::F64 => S::F64,
        }
    }

    /// The xlayer dtype of a safetensors dtype.
    ///
    /// Errors: [`crate::Error::SafetensorsDtype`] naming the dtype (its file
    /// and tensor unset: readers fill them in) for a safetensors dtype xlayer
    /// does not hold (e.g. `F8_E4M3`, `C64`).
    pub fn from_safetensors(d: safetensors::Dtype) -> crate::error::Result<DType> {
        use safetensors::Dtype as S;
        Ok(match d {
            S::BOOL => DType::Bool,
            S::I8 => DType::I8,
            S::I16 => DType::I16,
            S::I32 => DType::I32,
            S::I64 => DType::I64,
            S::U8 => DType::U8,
            S::U16 => DType::U16,
            S::U32 => DType::U32,
            S::U64 => DType::U64,
            S::F16 => DType::F16,
            S::BF16 => DType::BF16,
            S::F32 => DType::F32,
            S::F64 => DType::F64,
            other => {
                return Err(crate::error::Error::SafetensorsDtype {
                    dtype: other.to_string(),
                    file: None,
                    tensor: None,
                })
            }
        })
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            DType::Bool => "bool",
            DType::I8 => "i8",
            DType::I16 => "i16",
            DType::I32 => "i32",
            DType::I64 => "i64",
            DType::U8 => "u8",
            DType::U16 => "u16",
            DType::U32 => "u32",
            DType::U64 => "u64",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F32 => "f32",
            DType::F64 => "f64",
        };
        f.write_str(s)
    }
}

mod sealed {
    pub trait Sealed {}
}

/// A Rust type whose values are elements of a [`DType`], laid out in memory
/// exactly as XLA expects (so host slices can be uploaded as they are).
pub trait NativeType:
    sealed::Sealed + Copy + Send + Sync + PartialEq + fmt::Debug + 'static
{
    /// The dtype this Rust type holds.
    const DTYPE: DType;
    /// The zero value.
    fn zero() -> Self;
    /// Appends the value's little-endian bytes (XLA's host layout) to `out`.
    fn extend_le_bytes(self, out: &mut Vec<u8>);
    /// Reads a value from its little-endian bytes; `bytes` holds exactly
    /// `size_of::<Self>()` bytes (missing bytes read as zero).
    fn from_le_slice(bytes: &[u8]) -> Self;
}

macro_rules! native {
    ($($t:ty => $d:ident, $z:expr;)*) => {$(
        impl sealed::Sealed for $t {}
        impl NativeType for $t {
            const DTYPE: DType = DType::$d;
            fn zero() -> Self { $z }
            fn extend_le_bytes(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn from_le_slice(bytes: &[u8]) -> Self {
                let mut a = [0u8; std::mem::size_of::<$t>()];
                let n = a.len().min(bytes.len());
                a[..n].copy_from_slice(&bytes[..n]);
                <$t>::from_le_bytes(a)
            }
        }
    )*};
}

impl sealed::Sealed for bool {}
impl NativeType for bool {
    const DTYPE: DType = DType::Bool;
    fn zero() -> Self {
        false
    }
    fn extend_le_bytes(self, out: &mut Vec<u8>) {
        out.push(self as u8);
    }
    fn from_le_slice(bytes: &[u8]) -> Self {
        bytes.first().is_some_and(|&b| b != 0)
    }
}

native! {
    i8 => I8, 0;
    i16 => I16, 0;
    i32 => I32, 0;
    i64 => I64, 0;
    u8 => U8, 0;
    u16 => U16, 0;
    u32 => U32, 0;
    u64 => U64, 0;
    f16 => F16, f16::ZERO;
    bf16 => BF16, bf16::ZERO;
    f32 => F32, 0.0;
    f64 => F64, 0.0;
}

/// A dtype and dimensions: the type of an array, without its data.
///
/// Displays as `f32[2,3]` (a scalar as `f32[]`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ArraySpec {
    /// Element type.
    pub dtype: DType,
    /// Dimensions, outermost first.
    pub dims: Vec<usize>,
}

impl ArraySpec {
    /// A spec from a dtype and dimensions.
    pub fn new(dtype: DType, dims: impl Into<Vec<usize>>) -> Self {
        ArraySpec {
            dtype,
            dims: dims.into(),
        }
    }

    /// The spec of a `T` array with these dimensions.
    pub fn of<T: NativeType>(dims: impl Into<Vec<usize>>) -> Self {
        ArraySpec::new(T::DTYPE, dims)
    }

    /// Number of elements (1 for a scalar). Saturates at `usize::MAX` for
    /// a type too large to exist (see [`ArraySpec::checked_size_in_bytes`]);
    /// xlayer checks every type it builds, uploads or reads from a program,
    /// so such a type never reaches an allocation or the plugin.
    pub fn element_count(&self) -> usize {
        self.dims
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .unwrap_or(usize::MAX)
    }

    /// Size of the data in bytes; saturates like [`ArraySpec::element_count`].
    pub fn size_in_bytes(&self) -> usize {
        self.element_count()
            .saturating_mul(self.dtype.size_in_bytes())
    }

    /// Number of elements, or `None` when the type is too large to exist
    /// (see [`ArraySpec::checked_size_in_bytes`]).
    pub fn checked_element_count(&self) -> Option<usize> {
        self.checked_size_in_bytes()?;
        Some(self.element_count())
    }

    /// Size of the data in bytes, or `None` when the type is too large to
    /// exist: a dimension above `i64::MAX`, or a product of the non-zero
    /// dimensions times the element size above `i64::MAX` (what XLA's
    /// shapes and the PJRT C API can hold). A zero dimension does not
    /// excuse the others: `[2^40, 2^40, 0]` is refused, as XLA would.
    pub fn checked_size_in_bytes(&self) -> Option<usize> {
        let max = i64::MAX as u64;
        let mut bytes = self.dtype.size_in_bytes() as u64;
        let mut zero = false;
        for &d in &self.dims {
            let d = u64::try_from(d).ok().filter(|&d| d <= max)?;
            zero |= d == 0;
            bytes = bytes.checked_mul(d.max(1)).filter(|&b| b <= max)?;
        }
        usize::try_from(if zero { 0 } else { bytes }).ok()
    }

    /// Checks that the type can exist (see
    /// [`ArraySpec::checked_size_in_bytes`]) and returns its size in bytes.
    ///
    /// Errors: [`crate::Error::ShapeTooLarge`] naming `what()` and the type.
    pub fn check_size(&self, what: impl FnOnce() -> String) -> crate::Result<usize> {
        self.checked_size_in_bytes()
            .ok_or_else(|| crate::Error::ShapeTooLarge {
                what: what(),
                spec: self.clone(),
            })
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.dims.len()
    }

    /// The StableHLO tensor type, e.g. `tensor<2x3xf32>`.
    pub fn mlir_type(&self) -> String {
        let mut s = String::from("tensor<");
        for d in &self.dims {
            s.push_str(&d.to_string());
            s.push('x');
        }
        s.push_str(self.dtype.mlir_name());
        s.push('>');
        s
    }
}

impl fmt::Display for ArraySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[", self.dtype)?;
        for (i, d) in self.dims.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mlir_names_round_trip() {
        for d in DType::ALL {
            assert_eq!(DType::from_mlir_name(d.mlir_name()), Some(d));
        }
        assert_eq!(DType::from_mlir_name("c64"), None);
    }

    #[test]
    fn spec_display_and_type() {
        let s = ArraySpec::of::<f32>([2, 3]);
        assert_eq!(s.to_string(), "f32[2,3]");
        assert_eq!(s.mlir_type(), "tensor<2x3xf32>");
        assert_eq!(s.size_in_bytes(), 24);
        let scalar = ArraySpec::of::<u8>([]);
        assert_eq!(scalar.to_string(), "u8[]");
        assert_eq!(scalar.mlir_type(), "tensor<ui8>");
        assert_eq!(scalar.element_count(), 1);
    }

    #[test]
    fn sizes_are_checked_not_wrapped() {
        let huge = ArraySpec::of::<f32>([1 << 32, 1 << 32]);
        assert_eq!(huge.checked_size_in_bytes(), None);
        assert_eq!(huge.checked_element_count(), None);
        assert_eq!(huge.element_count(), usize::MAX);
        assert_eq!(huge.size_in_bytes(), usize::MAX);
        let e = huge.check_size(|| "test".into()).unwrap_err();
        assert!(matches!(e, crate::Error::ShapeTooLarge { ref spec, .. } if *spec == huge));
        // a dimension that would be -1 as i64
        assert_eq!(
            ArraySpec::of::<u8>([usize::MAX]).checked_size_in_bytes(),
            None
        );
        // bytes overflow although the element count fits in i64
        assert_eq!(
            ArraySpec::of::<f64>([1 << 61]).checked_size_in_bytes(),
            None
        );
        assert_eq!(
            ArraySpec::of::<u8>([1 << 62]).checked_size_in_bytes(),
            Some(1 << 62)
        );
        // zero dimensions do not hide overflowing ones
        assert_eq!(
            ArraySpec::of::<u8>([1 << 40, 1 << 40, 0]).checked_size_in_bytes(),
            None
        );
        assert_eq!(
            ArraySpec::of::<u8>([1 << 40, 0]).checked_size_in_bytes(),
            Some(0)
        );
        assert_eq!(
            ArraySpec::of::<f32>([2, 3]).checked_size_in_bytes(),
            Some(24)
        );
        assert_eq!(ArraySpec::of::<f32>([]).checked_element_count(), Some(1));
    }

    #[test]
    fn native_sizes_match_dtypes() {
        fn check<T: NativeType>() {
            assert_eq!(
                std::mem::size_of::<T>(),
                T::DTYPE.size_in_bytes(),
                "{}",
                T::DTYPE
            );
        }
        check::<bool>();
        check::<i8>();
        check::<i16>();
        check::<i32>();
        check::<i64>();
        check::<u8>();
        check::<u16>();
        check::<u32>();
        check::<u64>();
        check::<f16>();
        check::<bf16>();
        check::<f32>();
        check::<f64>();
    }
}
