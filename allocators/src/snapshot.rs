//! The stored form of an allocator's state.

use serde::{Deserialize, Serialize};

use crate::allocator_error::SnapshotError;

/// What an allocator persists, like upstream's `RangeAllocation`: the range it covers (the CIDR,
/// e.g. `10.0.0.0/16`, or the port range, e.g. `30000-32767`) and the used offsets as a
/// run-compressed roaring bitmap in the portable format (offset 0 = first allocatable value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The range the state belongs to.
    pub range: String,
    /// Portable roaring serialization of the used offsets.
    pub data: Vec<u8>,
}

impl Snapshot {
    /// One byte string: the range's length (u16, big-endian), the range, then the bitmap.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Ranges are short ASCII strings (at most a 43-byte IPv6 CIDR) unless built by hand.
        let range = &self.range.as_bytes()[..self.range.len().min(usize::from(u16::MAX))];
        let mut out = Vec::with_capacity(2 + range.len() + self.data.len());
        out.extend_from_slice(&(range.len() as u16).to_be_bytes());
        out.extend_from_slice(range);
        out.extend_from_slice(&self.data);
        out
    }

    /// Inverse of [`to_bytes`](Self::to_bytes). The bitmap itself is checked on restore.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let corrupt = |why: &str| SnapshotError::Corrupt(format!("malformed snapshot bytes: {why}"));
        let (len, rest) = bytes
            .split_first_chunk::<2>()
            .ok_or_else(|| corrupt("no range length"))?;
        let len = usize::from(u16::from_be_bytes(*len));
        if rest.len() < len {
            return Err(corrupt("range truncated"));
        }
        let (range, data) = rest.split_at(len);
        let range = std::str::from_utf8(range).map_err(|_| corrupt("range is not UTF-8"))?;
        Ok(Snapshot {
            range: range.to_owned(),
            data: data.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_and_reject_truncation() {
        let s = Snapshot {
            range: "10.0.0.0/24".into(),
            data: vec![1, 2, 3],
        };
        let bytes = s.to_bytes();
        assert_eq!(&bytes[..2], &[0, 11]);
        assert_eq!(Snapshot::from_bytes(&bytes), Ok(s));
        assert_eq!(
            Snapshot::from_bytes(&bytes[..5]).unwrap_err().to_string(),
            "restoring snapshot encountered malformed snapshot bytes: range truncated"
        );
        assert!(Snapshot::from_bytes(&[0]).is_err());
        assert!(Snapshot::from_bytes(&[0, 1, 0xff]).is_err());
    }

    #[test]
    fn serde_round_trip() {
        let s = Snapshot {
            range: "30000-32767".into(),
            data: vec![0, 255],
        };
        let json = serde_json::to_string(&s).expect("serializes");
        assert_eq!(json, r#"{"range":"30000-32767","data":[0,255]}"#);
        assert_eq!(serde_json::from_str::<Snapshot>(&json).expect("parses"), s);
    }
}
