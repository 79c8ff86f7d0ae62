//! The QUIC payload: one Arrow IPC stream (schema, exactly one 1-row batch, end marker) per message.
//!
//! Each tensor is a non-nullable `Binary` column whose single value is the raw tensor bytes, with field
//! metadata `openpi_dtype`, `openpi_shape` (compact JSON array) and `openpi_path` (JSON array of strings);
//! the field name is the path joined with U+001F. The schema carries `openpi_schema_id` and
//! `openpi_scalar_json`. A batch without columns still has one row.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use arrow_array::{Array, ArrayRef, BinaryArray, RecordBatch, RecordBatchOptions};
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::StreamWriter;
use arrow_schema::{DataType, Field, Schema};

use crate::local_frame::{DType, LocalArray, LocalFrame};

const DTYPE_KEY: &str = "openpi_dtype";
const SHAPE_KEY: &str = "openpi_shape";
const PATH_KEY: &str = "openpi_path";
const SCHEMA_ID_KEY: &str = "openpi_schema_id";
const SCALAR_JSON_KEY: &str = "openpi_scalar_json";

/// LocalFrame -> Arrow IPC stream bytes.
pub fn encode(frame: &LocalFrame) -> Result<Vec<u8>> {
    let mut fields = Vec::with_capacity(frame.arrays.len());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(frame.arrays.len());
    for array in &frame.arrays {
        let metadata = HashMap::from([
            (DTYPE_KEY.to_string(), array.dtype.name().to_string()),
            (SHAPE_KEY.to_string(), serde_json::to_string(&array.shape)?),
            (PATH_KEY.to_string(), serde_json::to_string(&array.path)?),
        ]);
        fields.push(Field::new(array.path.join("\u{1f}"), DataType::Binary, false).with_metadata(metadata));
        columns.push(Arc::new(BinaryArray::from_vec(vec![array.data.as_slice()])));
    }
    let schema = Arc::new(Schema::new(fields).with_metadata(HashMap::from([
        (SCHEMA_ID_KEY.to_string(), frame.schema_id.clone()),
        (SCALAR_JSON_KEY.to_string(), frame.scalar_json.clone()),
    ])));
    let batch =
        RecordBatch::try_new_with_options(schema.clone(), columns, &RecordBatchOptions::new().with_row_count(Some(1)))?;
    let mut out = Vec::new();
    {
        let mut writer = StreamWriter::try_new(&mut out, &schema)?;
        writer.write(&batch)?;
        writer.finish()?;
    }
    Ok(out)
}

/// Arrow IPC stream bytes -> LocalFrame, validating the conventions above.
pub fn decode(bytes: &[u8]) -> Result<LocalFrame> {
    let mut reader = StreamReader::try_new(bytes, None).context("not an Arrow IPC stream")?;
    let schema = reader.schema();
    let metadata = schema.metadata();
    let schema_id = metadata.get(SCHEMA_ID_KEY).context("Arrow schema lacks openpi_schema_id")?.clone();
    let scalar_json = metadata.get(SCALAR_JSON_KEY).cloned().unwrap_or_default();
    let batch = reader.next().context("Arrow stream has no record batch")??;
    ensure!(reader.next().is_none(), "Arrow stream has more than one record batch");
    ensure!(batch.num_rows() == 1, "Arrow record batch has {} rows, expected 1", batch.num_rows());
    let mut arrays = Vec::with_capacity(batch.num_columns());
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        let meta = field.metadata();
        let dtype_name = meta.get(DTYPE_KEY).with_context(|| format!("field {} lacks openpi_dtype", field.name()))?;
        let Some(dtype) = DType::from_name(dtype_name) else {
            bail!("field {} has unknown openpi_dtype {dtype_name:?}", field.name());
        };
        let shape: Vec<u32> = serde_json::from_str(meta.get(SHAPE_KEY).context("field lacks openpi_shape")?)
            .context("openpi_shape is not a JSON array of u32")?;
        let path: Vec<String> = serde_json::from_str(meta.get(PATH_KEY).context("field lacks openpi_path")?)
            .context("openpi_path is not a JSON array of strings")?;
        ensure!(!path.is_empty(), "field {} has an empty openpi_path", field.name());
        let Some(binary) = column.as_any().downcast_ref::<BinaryArray>() else {
            bail!("field {} is {:?}, expected Binary", field.name(), column.data_type());
        };
        ensure!(binary.len() == 1 && binary.is_valid(0), "field {} must hold one value", field.name());
        let data = binary.value(0).to_vec();
        // Stricter than openpi-flash: a tensor whose bytes do not match its shape is refused here, not later.
        ensure!(
            LocalArray::expected_len(dtype, &shape) == Some(data.len() as u64),
            "field {}: data length mismatch ({} bytes for {} {shape:?})",
            field.name(),
            data.len(),
            dtype.name()
        );
        arrays.push(LocalArray { path, dtype, shape, data });
    }
    Ok(LocalFrame { schema_id, arrays, scalar_json })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LocalFrame {
        LocalFrame {
            schema_id: "unknown".into(),
            arrays: vec![
                LocalArray {
                    path: vec!["state".into()],
                    dtype: DType::F32,
                    shape: vec![2],
                    data: vec![0, 0, 128, 63, 0, 0, 0, 64],
                },
                LocalArray {
                    path: vec!["images".into(), "cam_high".into()],
                    dtype: DType::U8,
                    shape: vec![1, 1, 3],
                    data: vec![1, 2, 3],
                },
            ],
            scalar_json: r#"{"prompt":"hi"}"#.into(),
        }
    }

    #[test]
    fn round_trip_keeps_everything() {
        let frame = sample();
        assert_eq!(decode(&encode(&frame).unwrap()).unwrap(), frame);
    }

    #[test]
    fn zero_column_batch_still_has_one_row() {
        let frame = LocalFrame { schema_id: "unknown".into(), arrays: vec![], scalar_json: r#"{"subtask":{}}"#.into() };
        assert_eq!(decode(&encode(&frame).unwrap()).unwrap(), frame);
    }

    #[test]
    fn schema_conventions() {
        let bytes = encode(&sample()).unwrap();
        let reader = StreamReader::try_new(bytes.as_slice(), None).unwrap();
        let schema = reader.schema();
        assert_eq!(schema.field(1).name(), "images\u{1f}cam_high");
        assert_eq!(schema.field(1).metadata()[SHAPE_KEY], "[1,1,3]");
        assert_eq!(schema.field(1).metadata()[PATH_KEY], r#"["images","cam_high"]"#);
        assert_eq!(schema.field(1).metadata()[DTYPE_KEY], "uint8");
        assert_eq!(schema.field(1).data_type(), &DataType::Binary);
        assert!(!schema.field(1).is_nullable());
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(decode(b"not arrow").is_err());
        let mut bytes = encode(&sample()).unwrap();
        bytes.truncate(bytes.len() / 2);
        assert!(decode(&bytes).is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_frames_round_trip(
            arrays in proptest::collection::vec(
                (proptest::collection::vec("[a-z]{1,6}", 1..3), 0usize..12, proptest::collection::vec(0u32..3, 0..3)),
                0..4,
            ),
        ) {
            let arrays: Vec<LocalArray> = arrays.into_iter().map(|(path, d, shape)| {
                let dtype = DType::ALL[d];
                let len = LocalArray::expected_len(dtype, &shape).unwrap() as usize;
                LocalArray { path, dtype, shape, data: vec![7; len] }
            }).collect();
            let frame = LocalFrame { schema_id: "unknown".into(), arrays, scalar_json: "{}".into() };
            proptest::prop_assert_eq!(decode(&encode(&frame).unwrap()).unwrap(), frame);
        }
    }
}
