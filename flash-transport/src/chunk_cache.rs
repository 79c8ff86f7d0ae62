//! Client-side action chunk cache (`OPENPI_OPEN_LOOP_HORIZON=N`): one server call per `min(N, H)` steps.
//!
//! The whole INFER reply is cached; step `k` returns row `k` of every array whose leading dimension equals
//! the advertised horizon `H` (that dimension dropped), other arrays and the scalar JSON unchanged.

use crate::local_frame::{LocalArray, LocalFrame};

pub struct ChunkCache {
    steps: u64,
    horizon: u64,
    cached: Option<LocalFrame>,
    step: u64,
}

impl ChunkCache {
    pub fn new(steps: u64, horizon: u64) -> Self {
        ChunkCache { steps: steps.min(horizon).max(1), horizon, cached: None, step: 0 }
    }

    pub fn clear(&mut self) {
        self.cached = None;
        self.step = 0;
    }

    /// The next cached step, or `None` when the cache is empty or used up (the caller asks the server).
    pub fn next_step(&mut self) -> Option<LocalFrame> {
        let frame = self.cached.as_ref()?;
        if self.step >= self.steps {
            return None;
        }
        let out = slice(frame, self.step, self.horizon);
        self.step += 1;
        Some(out)
    }

    /// Stores a fresh reply and returns its step 0.
    pub fn store(&mut self, reply: LocalFrame) -> LocalFrame {
        let first = slice(&reply, 0, self.horizon);
        self.cached = Some(reply);
        self.step = 1;
        first
    }
}

fn slice(frame: &LocalFrame, step: u64, horizon: u64) -> LocalFrame {
    let arrays = frame
        .arrays
        .iter()
        .map(|array| {
            if array.shape.first().map(|&d| u64::from(d)) != Some(horizon) {
                return array.clone();
            }
            let row = array.data.len() / horizon as usize;
            let start = row * step as usize;
            LocalArray {
                path: array.path.clone(),
                dtype: array.dtype,
                shape: array.shape[1..].to_vec(),
                data: array.data[start..start + row].to_vec(),
            }
        })
        .collect();
    LocalFrame { schema_id: frame.schema_id.clone(), arrays, scalar_json: frame.scalar_json.clone() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local_frame::DType;

    fn reply() -> LocalFrame {
        LocalFrame {
            schema_id: "unknown".into(),
            arrays: vec![
                LocalArray {
                    path: vec!["actions".into()],
                    dtype: DType::U8,
                    shape: vec![3, 2],
                    data: vec![0, 1, 2, 3, 4, 5],
                },
                LocalArray { path: vec!["other".into()], dtype: DType::U8, shape: vec![2], data: vec![9, 9] },
            ],
            scalar_json: r#"{"server_timing":{"infer_ms":1.0}}"#.into(),
        }
    }

    #[test]
    fn steps_through_rows_then_asks_again() {
        let mut cache = ChunkCache::new(2, 3);
        assert!(cache.next_step().is_none());
        let first = cache.store(reply());
        assert_eq!((first.arrays[0].shape.clone(), first.arrays[0].data.clone()), (vec![2], vec![0, 1]));
        assert_eq!(first.arrays[1].data, vec![9, 9]);
        let second = cache.next_step().unwrap();
        assert_eq!(second.arrays[0].data, vec![2, 3]);
        assert_eq!(second.scalar_json, first.scalar_json);
        assert!(cache.next_step().is_none(), "min(N, H) = 2 steps per server call");
    }

    #[test]
    fn horizon_caps_steps_and_reset_clears() {
        let mut cache = ChunkCache::new(10, 3);
        cache.store(reply());
        assert_eq!(cache.next_step().unwrap().arrays[0].data, vec![2, 3]);
        assert_eq!(cache.next_step().unwrap().arrays[0].data, vec![4, 5]);
        assert!(cache.next_step().is_none());
        cache.store(reply());
        cache.clear();
        assert!(cache.next_step().is_none());
    }
}
