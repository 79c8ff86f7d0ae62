//! LocalFrame: openpi-flash's binary body for INFER messages on unix sockets, and the message envelope.
//!
//! Body (integers big-endian, tensor bytes native little-endian, no padding):
//! `[schema_id_len u8][schema_id]` `[num_arrays u16]`
//! `num_arrays x ([path_depth u8] path_depth x ([len u8][utf8]) [dtype u8][ndim u8][ndim x u32][data_len u64][data])`
//! `[scalar_json_len u32][scalar_json]`.
//!
//! Envelope ([`crate::envelope`]): `[length u32 BE][type u8][body]`, `length` counting the type byte and the body.

use anyhow::{bail, ensure, Context, Result};

/// Local (unix socket) message types.
pub mod kind {
    pub const METADATA: u8 = 0x01;
    pub const INFER: u8 = 0x02;
    pub const RESET: u8 = 0x03;
    pub const METADATA_RESPONSE: u8 = 0x11;
    pub const INFER_RESPONSE: u8 = 0x12;
    pub const ERROR: u8 = 0x13;
    pub const RESET_RESPONSE: u8 = 0x14;
}

/// Element types and their LocalFrame codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F16,
    F32,
    F64,
    Bool,
}

impl DType {
    pub const ALL: [DType; 12] = [
        DType::U8,
        DType::I8,
        DType::U16,
        DType::I16,
        DType::U32,
        DType::I32,
        DType::U64,
        DType::I64,
        DType::F16,
        DType::F32,
        DType::F64,
        DType::Bool,
    ];

    pub fn code(self) -> u8 {
        match self {
            DType::U8 => 0x01,
            DType::I8 => 0x02,
            DType::U16 => 0x03,
            DType::I16 => 0x04,
            DType::U32 => 0x05,
            DType::I32 => 0x06,
            DType::U64 => 0x07,
            DType::I64 => 0x08,
            DType::F16 => 0x09,
            DType::F32 => 0x0A,
            DType::F64 => 0x0B,
            DType::Bool => 0x0C,
        }
    }

    pub fn from_code(code: u8) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.code() == code)
    }

    /// The name used in Arrow field metadata (`openpi_dtype`).
    pub fn name(self) -> &'static str {
        match self {
            DType::U8 => "uint8",
            DType::I8 => "int8",
            DType::U16 => "uint16",
            DType::I16 => "int16",
            DType::U32 => "uint32",
            DType::I32 => "int32",
            DType::U64 => "uint64",
            DType::I64 => "int64",
            DType::F16 => "float16",
            DType::F32 => "float32",
            DType::F64 => "float64",
            DType::Bool => "bool",
        }
    }

    pub fn from_name(name: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name() == name)
    }

    pub fn item_size(self) -> u64 {
        match self {
            DType::U8 | DType::I8 | DType::Bool => 1,
            DType::U16 | DType::I16 | DType::F16 => 2,
            DType::U32 | DType::I32 | DType::F32 => 4,
            DType::U64 | DType::I64 | DType::F64 => 8,
        }
    }
}

/// One tensor: where it sits in the nested observation, its element type, shape and raw bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalArray {
    pub path: Vec<String>,
    pub dtype: DType,
    pub shape: Vec<u32>,
    pub data: Vec<u8>,
}

impl LocalArray {
    /// Bytes the shape and dtype call for (`None` on overflow).
    pub fn expected_len(dtype: DType, shape: &[u32]) -> Option<u64> {
        shape.iter().try_fold(dtype.item_size(), |acc, &d| acc.checked_mul(u64::from(d)))
    }
}

/// A decoded LocalFrame: schema id, tensors in wire order, and the nested scalar JSON text.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalFrame {
    pub schema_id: String,
    pub arrays: Vec<LocalArray>,
    pub scalar_json: String,
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&end| end <= self.data.len());
        let Some(end) = end else {
            bail!("LocalFrame truncated while reading {what} ({n} bytes at offset {})", self.pos);
        };
        let chunk = &self.data[self.pos..end];
        self.pos = end;
        Ok(chunk)
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_be_bytes(self.take(2, what)?.try_into()?))
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_be_bytes(self.take(4, what)?.try_into()?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_be_bytes(self.take(8, what)?.try_into()?))
    }

    fn text(&mut self, n: usize, what: &str) -> Result<String> {
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec()).with_context(|| format!("LocalFrame {what} is not valid UTF-8"))
    }
}

impl LocalFrame {
    /// Decodes a body, validating truncation, UTF-8, dtype codes, data length against shape and trailing bytes.
    pub fn decode(body: &[u8]) -> Result<LocalFrame> {
        let mut r = Reader { data: body, pos: 0 };
        let schema_len = r.u8("schema_id length")?;
        let schema_id = r.text(usize::from(schema_len), "schema_id")?;
        let count = r.u16("array count")?;
        let mut arrays = Vec::with_capacity(usize::from(count));
        for index in 0..count {
            let depth = r.u8("path depth")?;
            ensure!(depth >= 1, "LocalFrame array {index} has an empty path");
            let mut path = Vec::with_capacity(usize::from(depth));
            for _ in 0..depth {
                let len = r.u8("path component length")?;
                path.push(r.text(usize::from(len), "path component")?);
            }
            let code = r.u8("dtype")?;
            let Some(dtype) = DType::from_code(code) else {
                bail!("LocalFrame array '{}' has unknown dtype code 0x{code:02x}", path.join("/"));
            };
            let ndim = r.u8("rank")?;
            let shape = (0..ndim).map(|_| r.u32("shape")).collect::<Result<Vec<_>>>()?;
            let data_len = r.u64("data length")?;
            let expected = LocalArray::expected_len(dtype, &shape);
            ensure!(
                expected == Some(data_len),
                "LocalFrame array '{}': data length mismatch ({data_len} bytes for {} {shape:?})",
                path.join("/"),
                dtype.name()
            );
            let len = usize::try_from(data_len).context("data length does not fit in memory")?;
            let data = r.take(len, "array data")?.to_vec();
            arrays.push(LocalArray { path, dtype, shape, data });
        }
        let json_len = r.u32("scalar JSON length")?;
        let scalar_json = r.text(json_len as usize, "scalar JSON")?;
        ensure!(r.pos == body.len(), "LocalFrame has {} trailing bytes", body.len() - r.pos);
        Ok(LocalFrame { schema_id, arrays, scalar_json })
    }

    /// Encodes a body; every length must fit its field.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(64 + self.arrays.iter().map(|a| a.data.len() + 64).sum::<usize>());
        push_short(&mut out, &self.schema_id, "schema_id")?;
        let count = u16::try_from(self.arrays.len()).context("more than 65535 arrays")?;
        out.extend_from_slice(&count.to_be_bytes());
        for array in &self.arrays {
            ensure!(!array.path.is_empty(), "array with an empty path");
            out.push(u8::try_from(array.path.len()).context("path deeper than 255")?);
            for component in &array.path {
                push_short(&mut out, component, "path component")?;
            }
            out.push(array.dtype.code());
            out.push(u8::try_from(array.shape.len()).context("rank above 255")?);
            for dim in &array.shape {
                out.extend_from_slice(&dim.to_be_bytes());
            }
            out.extend_from_slice(&(array.data.len() as u64).to_be_bytes());
            out.extend_from_slice(&array.data);
        }
        let json = self.scalar_json.as_bytes();
        out.extend_from_slice(&u32::try_from(json.len()).context("scalar JSON above 4 GiB")?.to_be_bytes());
        out.extend_from_slice(json);
        Ok(out)
    }
}

fn push_short(out: &mut Vec<u8>, text: &str, what: &str) -> Result<()> {
    let len = u8::try_from(text.len()).with_context(|| format!("{what} longer than 255 bytes"))?;
    out.push(len);
    out.extend_from_slice(text.as_bytes());
    Ok(())
}

// The envelope lives in its own module; re-exported here, where callers of the body codec look for it.
pub use crate::envelope::{read_message, write_message};

#[cfg(test)]
mod tests {
    use super::*;

    /// The 121-byte worked example of the openpi-flash spec (§3.2).
    pub fn worked_example() -> Vec<u8> {
        let hex = concat!(
            "07756e6b6e6f776e0002",
            "010573746174650a010000000200000000000000080000803f00000040",
            "0206696d616765730863616d5f68696768",
            "0103000000010000000100000003",
            "0000000000000003000000",
            "000000247b2270726f6d7074223a226869222c226d6f6465223a22616374696f6e5f6f6e6c79227d"
        );
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn worked_example_round_trips_byte_for_byte() {
        let bytes = worked_example();
        assert_eq!(bytes.len(), 121);
        let frame = LocalFrame::decode(&bytes).unwrap();
        assert_eq!(frame.schema_id, "unknown");
        assert_eq!(frame.arrays[0].path, vec!["state"]);
        assert_eq!(frame.arrays[0].dtype, DType::F32);
        assert_eq!(frame.arrays[1].path, vec!["images", "cam_high"]);
        assert_eq!(frame.arrays[1].shape, vec![1, 1, 3]);
        assert_eq!(frame.scalar_json, r#"{"prompt":"hi","mode":"action_only"}"#);
        assert_eq!(frame.encode().unwrap(), bytes);
    }

    #[test]
    fn malformed_bodies_are_rejected_with_a_reason() {
        let bytes = worked_example();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (bytes[..bytes.len() - 3].to_vec(), "truncated"),
            ([bytes.clone(), vec![0]].concat(), "trailing"),
            ([&bytes[..17], &[0x7f], &bytes[18..]].concat(), "unknown dtype"),
            ([&bytes[..23], &9u64.to_be_bytes()[..], &bytes[31..]].concat(), "mismatch"),
            (b"\x07unknown\x00\x01\x00".to_vec(), "empty path"),
        ];
        for (body, needle) in cases {
            let err = LocalFrame::decode(&body).unwrap_err().to_string();
            assert!(err.contains(needle), "{err} should mention {needle}");
        }
    }

    #[tokio::test]
    async fn envelope_round_trip_and_limits() {
        let mut buffer = Vec::new();
        write_message(&mut buffer, kind::INFER, &worked_example()).await.unwrap();
        assert_eq!(&buffer[..5], &[0x00, 0x00, 0x00, 0x7a, 0x02]);
        let (k, body) = read_message(&mut buffer.as_slice(), 1 << 20).await.unwrap().unwrap();
        assert_eq!((k, body), (kind::INFER, worked_example()));
        let err = read_message(&mut buffer.as_slice(), 100).await.unwrap_err().to_string();
        assert!(err.contains("exceeds the limit"), "{err}");
    }

    proptest::proptest! {
        #[test]
        fn encode_decode_round_trip(
            schema in "[a-z]{0,10}",
            arrays in proptest::collection::vec(
                (proptest::collection::vec("[a-zA-Z_/]{1,8}", 1..4), 0usize..12, proptest::collection::vec(0u32..4, 0..3)),
                0..5,
            ),
            json in "\\{\\}|\\{\"a\":[0-9]{1,3}\\}",
        ) {
            let arrays: Vec<LocalArray> = arrays
                .into_iter()
                .map(|(path, dtype, shape)| {
                    let dtype = DType::ALL[dtype];
                    let len = LocalArray::expected_len(dtype, &shape).unwrap() as usize;
                    LocalArray { path, dtype, shape, data: (0..len).map(|i| i as u8).collect() }
                })
                .collect();
            let frame = LocalFrame { schema_id: schema, arrays, scalar_json: json };
            let decoded = LocalFrame::decode(&frame.encode().unwrap()).unwrap();
            proptest::prop_assert_eq!(decoded, frame);
        }

        #[test]
        fn random_bytes_never_panic(body in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = LocalFrame::decode(&body);
        }
    }
}
