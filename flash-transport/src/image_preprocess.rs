//! Client-side image preprocessing from the server's `image_specs`: robots may send camera frames of any
//! size and layout; the client binary sends what the model takes (e.g. uint8 `[3, 224, 224]`).
//!
//! Follows openpi's own conversions, so the QUIC path gives the same images as openpi's server would:
//! float images in [0, 1] become uint8 by truncation (`(255 * x) as u8`, openpi's `convert_to_uint8`;
//! values outside [0, 1] are refused), the resize is PIL's bilinear filter (with its antialiasing support
//! on downscale and its 22-bit fixed-point arithmetic), sizes are `int(dim / ratio)` and the image is
//! pasted centred on black at `int((target - size) / 2)`, as openpi-client's `resize_with_pad`. A float32
//! target gets real float32 values in [0, 1] (openpi-flash mislabels uint8 bytes as float32).

use anyhow::{bail, ensure, Result};
use serde::Deserialize;

use crate::local_frame::{DType, LocalArray, LocalFrame};

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct ImageSpec {
    pub path: Vec<String>,
    pub target_shape: [u32; 3],
    pub dtype: String,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Layout {
    Hwc,
    Chw,
}

fn layout(shape: &[u32]) -> Result<Layout> {
    match shape {
        [_, _, 3] => Ok(Layout::Hwc), // HWC wins when both ends are 3
        [3, _, _] => Ok(Layout::Chw),
        _ => bail!("image of shape {shape:?} is neither HWC nor CHW with 3 channels"),
    }
}

fn hw(shape: &[u32], layout: Layout) -> (usize, usize) {
    match layout {
        Layout::Hwc => (shape[0] as usize, shape[1] as usize),
        Layout::Chw => (shape[1] as usize, shape[2] as usize),
    }
}

/// Applies every matching spec (exact path equality) to the frame's arrays.
pub fn preprocess(frame: &mut LocalFrame, specs: &[ImageSpec]) -> Result<()> {
    for array in &mut frame.arrays {
        if let Some(spec) = specs.iter().find(|s| s.path == array.path) {
            *array = apply(array, spec)?;
        }
    }
    Ok(())
}

pub fn apply(array: &LocalArray, spec: &ImageSpec) -> Result<LocalArray> {
    let name = array.path.join("/");
    ensure!(array.shape.len() == 3, "image '{name}': expected 3 dimensions, got {:?}", array.shape);
    let target_dtype = match spec.dtype.as_str() {
        "uint8" => DType::U8,
        "float32" => DType::F32,
        other => bail!("image spec for '{name}' has unsupported dtype {other:?}"),
    };
    if array.shape == spec.target_shape && array.dtype == target_dtype {
        return Ok(array.clone());
    }
    let source = layout(&array.shape)?;
    let target = layout(&spec.target_shape)?;
    let (h, w) = hw(&array.shape, source);
    let hwc = to_hwc_u8(array, source, &name)?;
    let (th, tw) = hw(&spec.target_shape, target);
    let resized = resize_with_pad(&hwc, h, w, th, tw);
    let data = match target {
        Layout::Hwc => resized,
        Layout::Chw => {
            let mut out = vec![0u8; resized.len()];
            for y in 0..th {
                for x in 0..tw {
                    for c in 0..3 {
                        out[c * th * tw + y * tw + x] = resized[(y * tw + x) * 3 + c];
                    }
                }
            }
            out
        }
    };
    let data = match target_dtype {
        DType::F32 => data.iter().flat_map(|&v| (f32::from(v) / 255.0).to_le_bytes()).collect(),
        _ => data,
    };
    Ok(LocalArray { path: array.path.clone(), dtype: target_dtype, shape: spec.target_shape.to_vec(), data })
}

fn to_hwc_u8(array: &LocalArray, source: Layout, name: &str) -> Result<Vec<u8>> {
    let values: Vec<u8> = match array.dtype {
        DType::U8 => array.data.clone(),
        DType::F32 => array
            .data
            .chunks_exact(4)
            .map(|b| {
                let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                ensure!((0.0..=1.0).contains(&v), "image '{name}': float values must be in [0, 1], got {v}");
                Ok((255.0 * v) as u8)
            })
            .collect::<Result<_>>()?,
        other => bail!("image '{name}': expected uint8 or float32, got {}", other.name()),
    };
    if source == Layout::Hwc {
        return Ok(values);
    }
    let (h, w) = hw(&array.shape, source);
    let mut out = vec![0u8; values.len()];
    for c in 0..3 {
        for y in 0..h {
            for x in 0..w {
                out[(y * w + x) * 3 + c] = values[c * h * w + y * w + x];
            }
        }
    }
    Ok(out)
}

/// openpi-client's `resize_with_pad` on an HWC uint8 image: keep the aspect ratio, black borders.
pub fn resize_with_pad(image: &[u8], h: usize, w: usize, th: usize, tw: usize) -> Vec<u8> {
    if (h, w) == (th, tw) {
        return image.to_vec();
    }
    let ratio = f64::max(w as f64 / tw as f64, h as f64 / th as f64);
    let rh = ((h as f64 / ratio) as usize).max(1);
    let rw = ((w as f64 / ratio) as usize).max(1);
    let resized = resize_bilinear(image, h, w, rh, rw);
    let top = (th.saturating_sub(rh)) / 2;
    let left = (tw.saturating_sub(rw)) / 2;
    let mut out = vec![0u8; th * tw * 3];
    for y in 0..rh.min(th) {
        let src = &resized[y * rw * 3..(y * rw + rw.min(tw)) * 3];
        let start = ((y + top) * tw + left) * 3;
        out[start..start + src.len()].copy_from_slice(src);
    }
    out
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// PIL's resampling coefficients for one axis (bilinear: triangle filter, support widened on downscale).
fn coefficients(in_size: usize, out_size: usize) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // bilinear support 1.0
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            let xmin = ((center - support + 0.5) as isize).max(0) as usize;
            let xmax = ((center + support + 0.5) as usize).min(in_size);
            let weights: Vec<f64> = (xmin..xmax)
                .map(|x| {
                    let t = ((x as f64 - center + 0.5) * ss).abs();
                    if t < 1.0 {
                        1.0 - t
                    } else {
                        0.0
                    }
                })
                .collect();
            let total: f64 = weights.iter().sum();
            let fixed = weights
                .iter()
                .map(|w| {
                    let k = if total != 0.0 { w / total } else { 0.0 };
                    let scaled = k * f64::from(1u32 << PRECISION_BITS);
                    (if scaled < 0.0 { scaled - 0.5 } else { scaled + 0.5 }) as i32
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

fn clip8(value: i64) -> u8 {
    (value >> PRECISION_BITS).clamp(0, 255) as u8
}

/// PIL's two-pass (horizontal, then vertical) fixed-point bilinear resize of an HWC uint8 RGB image.
pub fn resize_bilinear(image: &[u8], h: usize, w: usize, oh: usize, ow: usize) -> Vec<u8> {
    let horizontal = if ow == w {
        image.to_vec()
    } else {
        let coeffs = coefficients(w, ow);
        let mut out = vec![0u8; h * ow * 3];
        for y in 0..h {
            for (xx, (xmin, k)) in coeffs.iter().enumerate() {
                for c in 0..3 {
                    let mut acc: i64 = 1 << (PRECISION_BITS - 1);
                    for (i, &kv) in k.iter().enumerate() {
                        acc += i64::from(image[(y * w + xmin + i) * 3 + c]) * i64::from(kv);
                    }
                    out[(y * ow + xx) * 3 + c] = clip8(acc);
                }
            }
        }
        out
    };
    if oh == h {
        return horizontal;
    }
    let coeffs = coefficients(h, oh);
    let mut out = vec![0u8; oh * ow * 3];
    for (yy, (ymin, k)) in coeffs.iter().enumerate() {
        for x in 0..ow {
            for c in 0..3 {
                let mut acc: i64 = 1 << (PRECISION_BITS - 1);
                for (i, &kv) in k.iter().enumerate() {
                    acc += i64::from(horizontal[((ymin + i) * ow + x) * 3 + c]) * i64::from(kv);
                }
                out[(yy * ow + x) * 3 + c] = clip8(acc);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(h: usize, w: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(h * w * 3);
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    out.push(((x * 37 + y * 23 + c * 71 + (x * y) % 13) % 256) as u8);
                }
            }
        }
        out
    }

    fn parse(text: &str) -> Vec<u8> {
        text.split(',').map(|v| v.parse().unwrap()).collect()
    }

    /// Expected values were produced with openpi-client's `image_tools.resize_with_pad` (PIL 13) on `pattern`.
    #[test]
    fn matches_pil_resize_with_pad_within_one() {
        let cases = [
            ((12, 16, 6, 6), "0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,71,140,175,155,145,101,125,87,143,106,157,135,172,83,94,88,104,166,137,170,106,158,87,116,88,138,154,158,138,82,117,91,151,101,162,141,173,121,93,102,114,163,138,161,88,144,82,126,89,149,161,168,139,88,127,95,152,106,160,127,166,108,94,94,119,165,141,161,97,161,85,118,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0"),
            ((5, 7, 8, 8), "0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,71,142,30,101,172,62,133,204,95,166,237,127,198,157,160,151,46,192,7,78,222,37,108,23,94,165,54,125,196,87,158,229,120,191,118,154,225,40,187,178,73,220,35,106,251,66,137,46,117,188,78,149,220,112,183,78,146,217,32,180,139,66,214,29,100,200,63,134,24,95,166,69,140,211,102,173,244,137,208,103,172,99,58,207,22,93,157,52,123,8,79,150,40,111,182,92,163,234,125,196,59,161,232,47,197,124,83,227,42,113,176,71,142,36,107,178,69,140,211,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0"),
            ((9, 4, 5, 7), "0,0,0,0,0,0,40,111,179,99,170,179,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,77,148,189,138,175,82,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,121,184,117,184,120,79,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,166,179,52,206,71,112,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,183,133,87,105,79,148,0,0,0,0,0,0,0,0,0"),
        ];
        for ((h, w, th, tw), expected) in cases {
            let got = resize_with_pad(&pattern(h, w), h, w, th, tw);
            let expected = parse(expected);
            assert_eq!(got.len(), expected.len());
            let worst = got.iter().zip(&expected).map(|(a, b)| (i16::from(*a) - i16::from(*b)).abs()).max().unwrap();
            assert!(worst <= 1, "{h}x{w} -> {th}x{tw}: max difference {worst}");
        }
    }

    fn spec(shape: [u32; 3], dtype: &str) -> ImageSpec {
        ImageSpec { path: vec!["images".into(), "cam_high".into()], target_shape: shape, dtype: dtype.into() }
    }

    fn image(shape: Vec<u32>, dtype: DType, data: Vec<u8>) -> LocalArray {
        LocalArray { path: vec!["images".into(), "cam_high".into()], dtype, shape, data }
    }

    #[test]
    fn hwc_to_chw_target_transposes() {
        let hwc = pattern(2, 2);
        let out = apply(&image(vec![2, 2, 3], DType::U8, hwc.clone()), &spec([3, 2, 2], "uint8")).unwrap();
        assert_eq!(out.shape, vec![3, 2, 2]);
        assert_eq!(out.data[0..4], [hwc[0], hwc[3], hwc[6], hwc[9]]);
    }

    #[test]
    fn matching_input_is_untouched_and_floats_truncate() {
        let same = image(vec![3, 2, 2], DType::U8, vec![5; 12]);
        assert_eq!(apply(&same, &spec([3, 2, 2], "uint8")).unwrap(), same);
        let half: Vec<u8> = [0.5f32; 12].iter().flat_map(|v| v.to_le_bytes()).collect();
        let out = apply(&image(vec![2, 2, 3], DType::F32, half), &spec([2, 2, 3], "uint8")).unwrap();
        assert!(out.data.iter().all(|&v| v == 127), "openpi truncates 127.5 to 127");
    }

    #[test]
    fn float32_target_gets_real_floats_and_bad_inputs_are_refused() {
        let out = apply(&image(vec![1, 1, 3], DType::U8, vec![255, 0, 51]), &spec([1, 1, 3], "float32")).unwrap();
        let values: Vec<f32> = out.data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
        assert_eq!(values, vec![1.0, 0.0, 0.2]);
        let bad: Vec<u8> = [2.0f32; 3].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert!(apply(&image(vec![1, 1, 3], DType::F32, bad), &spec([1, 1, 3], "uint8")).is_err());
        assert!(apply(&image(vec![2, 2], DType::U8, vec![0; 4]), &spec([1, 1, 3], "uint8")).is_err());
        assert!(apply(&image(vec![2, 2, 4], DType::U8, vec![0; 16]), &spec([1, 1, 3], "uint8")).is_err());
        assert!(apply(&image(vec![1, 1, 3], DType::I32, vec![0; 12]), &spec([1, 1, 3], "uint8")).is_err());
    }
}
