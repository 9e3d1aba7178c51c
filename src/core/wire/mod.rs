//! Wire formats as zero-copy views over byte slices.
//!
//! Conventions follow smoltcp: a `Foo<T: AsRef<[u8]>>` view wraps a buffer; `new_checked`
//! validates lengths once so that accessors afterwards are infallible; `set_*` setters exist
//! where `T: AsMut<[u8]>`. Byte ranges live in a private `mod field` per format. Nothing here
//! allocates, and nothing panics on input that passed `new_checked`.

pub mod ethernet;
pub mod gre;
pub mod ip;
pub mod qemu;
pub mod vxlan;

use std::fmt;

/// Why a header could not be parsed. Small and `Copy`: the data path turns it into a
/// [`DropReason`](crate::core::stats::DropReason) and counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// The buffer is shorter than the header it should hold.
    Truncated,
    /// A flag that must be set is clear (VXLAN I flag), or one that must be clear is set.
    BadFlags,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Truncated => f.write_str("truncated header"),
            ParseError::BadFlags => f.write_str("invalid header flags"),
        }
    }
}

impl std::error::Error for ParseError {}
