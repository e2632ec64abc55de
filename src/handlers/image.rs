//! `image_classifier`: image bytes → resize the shorter side, centre-crop,
//! normalise → one f32 row of the model's input; scores → softmax → top-k
//! labels, answered in the inference API doc's shape, TorchServe 0.12's
//! label map, or as the best class only (`imageClassifier.answer`). It
//! reproduces torchvision's `Resize(int)` (bilinear, antialiased, as Pillow
//! does it) and `CenterCrop`, which TorchServe's handler uses.

use std::collections::HashMap;
use std::io::Cursor;

use fast_image_resize::images::Image;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::{DynamicImage, ImageReader};

use crate::codec::{ReplyShape, WriteJson, write_string};
use crate::config::{ChannelOrder, ClassifierAnswer, ImageClassifierOptions, Layout};
use crate::types::{DataType, Error, InferRequest, InferResponse, ModelIo, Tensor, TensorData};

const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

pub struct ImageClassifier {
    layout: Layout,
    channel_axis: bool,
    channels: usize,
    height: u32,
    width: u32,
    resize: u32,
    mean: Vec<f32>,
    std: Vec<f32>,
    channel_order: ChannelOrder,
    softmax: bool,
    top_k: usize,
    answer: ClassifierAnswer,
    max_pixels: u64,
    labels: HashMap<usize, String>,
}

impl ImageClassifier {
    /// Checks the model takes one float image and returns class scores, and
    /// derives unset options from its input shape.
    pub fn new(
        io: &ModelIo,
        options: &ImageClassifierOptions,
        labels: HashMap<usize, String>,
    ) -> Result<ImageClassifier, String> {
        check_scores(io)?;
        let geometry = Geometry::of(io, options)?;
        let resize = options.resize.unwrap_or_else(|| {
            (geometry.height.max(geometry.width) as f64 * 256.0 / 224.0).round() as u32
        });
        if resize < geometry.height.max(geometry.width) {
            return Err(format!(
                "imageClassifier.resize ({resize}) must be at least the crop size ({})",
                geometry.height.max(geometry.width)
            ));
        }
        let c = geometry.channels;
        let mean = per_channel(&options.mean, IMAGENET_MEAN, 0.0, c, "mean")?;
        let std = per_channel(&options.std, IMAGENET_STD, 1.0, c, "std")?;
        if std.contains(&0.0) {
            return Err("imageClassifier.std must not contain 0".into());
        }
        Ok(ImageClassifier {
            layout: geometry.layout,
            channel_axis: geometry.channel_axis,
            channels: c,
            height: geometry.height,
            width: geometry.width,
            resize,
            mean,
            std,
            channel_order: options.channel_order,
            softmax: options.softmax,
            top_k: options.top_k().max(1),
            answer: options.answer,
            max_pixels: options.max_image_pixels,
            labels,
        })
    }

    pub fn preprocess(&self, body: &[u8]) -> Result<(InferRequest, ReplyShape), Error> {
        let image = self.decode(body)?;
        let pixels = self.resize_and_crop(image)?;
        let input = self.normalise(&pixels);
        Ok((
            InferRequest {
                inputs: vec![input],
            },
            ReplyShape::Single,
        ))
    }

    fn decode(&self, body: &[u8]) -> Result<DynamicImage, Error> {
        let not_image = || {
            let what = match body.iter().find(|b| !b.is_ascii_whitespace()) {
                Some(b'{' | b'[') => {
                    "the body is JSON, but this model's handler is image_classifier, which takes an \
                     image (tensors go to the Open Inference Protocol route, /v2/models/NAME/infer)"
                }
                _ => "the body is not an image this model can read (PNG, JPEG, GIF, BMP or WebP)",
            };
            Error::BadInput(format!(
                "{what}; send the image file as the body (curl -T image.png) or as a multipart part named data"
            ))
        };
        let reader = || {
            ImageReader::new(Cursor::new(body))
                .with_guessed_format()
                .map_err(|_| not_image())
        };
        if reader()?.format().is_none() {
            return Err(not_image());
        }
        let (w, h) = reader()?
            .into_dimensions()
            .map_err(|e| Error::BadInput(format!("cannot read the image header: {e}")))?;
        if w as u64 * h as u64 > self.max_pixels {
            return Err(Error::TooLarge(format!(
                "the image is {w}x{h} = {} pixels, over the limit of {} (ortserve.imageClassifier.maxImagePixels)",
                w as u64 * h as u64,
                self.max_pixels
            )));
        }
        // The header alone tells how large resizing would make it.
        self.resized_size(w, h)?;
        let mut decoder = reader()?;
        decoder.limits(self.decode_limits());
        decoder.decode().map_err(|e| match e {
            image::ImageError::Limits(_) => Error::TooLarge(format!(
                "decoding the {w}x{h} image needs more memory than its pixel limit allows \
                 (ortserve.imageClassifier.maxImagePixels)"
            )),
            e => Error::BadInput(format!("cannot decode the image: {e}")),
        })
    }

    /// What a decoder may allocate: the pixel limit at 16-bit RGBA, the
    /// widest layout any supported format decodes into.
    fn decode_limits(&self) -> image::Limits {
        let mut limits = image::Limits::default();
        limits.max_alloc = Some(self.max_pixels.saturating_mul(8));
        limits
    }

    /// torchvision `Resize(self.resize)` then `CenterCrop`, on 8-bit pixels.
    fn resize_and_crop(&self, image: DynamicImage) -> Result<Vec<u8>, Error> {
        let (w, h) = (image.width(), image.height());
        let (rw, rh) = self.resized_size(w, h)?;
        let (pixel_type, bytes) = if self.channels == 1 {
            let gray = if image.color().has_color() {
                pil_gray(&image.into_rgb8())
            } else {
                image.into_luma8().into_raw()
            };
            (PixelType::U8, gray)
        } else {
            (PixelType::U8x3, image.into_rgb8().into_raw())
        };
        let resize_failed = |e: String| Error::Inference(format!("image resize failed: {e}"));
        let source = Image::from_vec_u8(w, h, bytes, pixel_type)
            .map_err(|e| resize_failed(e.to_string()))?;
        let mut resized = Image::new(rw, rh, pixel_type);
        Resizer::new()
            .resize(
                &source,
                &mut resized,
                &ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear)),
            )
            .map_err(|e| resize_failed(e.to_string()))?;
        let top = ((rh - self.height) as f64 / 2.0).round_ties_even() as usize;
        let left = ((rw - self.width) as f64 / 2.0).round_ties_even() as usize;
        let c = self.channels;
        let row_bytes = rw as usize * c;
        let buffer = resized.buffer();
        let mut cropped = Vec::with_capacity(self.height as usize * self.width as usize * c);
        for y in top..top + self.height as usize {
            let start = y * row_bytes + left * c;
            cropped.extend_from_slice(&buffer[start..start + self.width as usize * c]);
        }
        Ok(cropped)
    }

    /// The size after scaling the shorter side to `resize` (torchvision rounds
    /// the longer side down). Extreme aspect ratios would make that image
    /// huge, so it is held to the same pixel limit as the input.
    fn resized_size(&self, w: u32, h: u32) -> Result<(u32, u32), Error> {
        if w == 0 || h == 0 {
            return Err(Error::BadInput(format!(
                "the image is {w}x{h}, which has no pixels"
            )));
        }
        let (short, long) = (w.min(h) as u64, w.max(h) as u64);
        let scaled_long = self.resize as u64 * long / short;
        if scaled_long * self.resize as u64 > self.max_pixels {
            return Err(Error::TooLarge(format!(
                "the image is {w}x{h}; resizing its shorter side to {} makes it {} pixels, over the limit of {} \
                 (ortserve.imageClassifier.maxImagePixels); crop extreme aspect ratios first",
                self.resize,
                scaled_long * self.resize as u64,
                self.max_pixels
            )));
        }
        let scaled_long = scaled_long as u32;
        Ok(if w <= h {
            (self.resize, scaled_long)
        } else {
            (scaled_long, self.resize)
        })
    }

    /// Scales to 0..1, normalises per channel and lays out as the model expects.
    fn normalise(&self, pixels: &[u8]) -> Tensor {
        let (c, h, w) = (self.channels, self.height as usize, self.width as usize);
        let mut data = vec![0f32; c * h * w];
        for (i, pixel) in pixels.chunks_exact(c).enumerate() {
            for channel in 0..c {
                let source = match self.channel_order {
                    ChannelOrder::Rgb => channel,
                    ChannelOrder::Bgr => c - 1 - channel,
                };
                let value = (pixel[source] as f32 / 255.0 - self.mean[channel]) / self.std[channel];
                let index = match self.layout {
                    Layout::Nchw => channel * h * w + i,
                    Layout::Nhwc => i * c + channel,
                };
                data[index] = value;
            }
        }
        let shape = match (self.channel_axis, self.layout) {
            (false, _) => vec![1, h, w],
            (true, Layout::Nchw) => vec![1, c, h, w],
            (true, Layout::Nhwc) => vec![1, h, w, c],
        };
        Tensor::new(shape, TensorData::F32(data))
    }

    /// The answer for the request's one row, in the configured shape.
    pub fn postprocess(&self, response: &InferResponse, out: &mut Vec<u8>) -> Result<(), Error> {
        let scores = score_row(&response.outputs[0], 0)?;
        if self.answer == ClassifierAnswer::Argmax {
            self.write_class_name(out, best_class(&scores));
            return Ok(());
        }
        let probabilities = if self.softmax {
            softmax(&scores)
        } else {
            scores
        };
        let mut ranked: Vec<usize> = (0..probabilities.len()).collect();
        // Stable: equal scores keep index order, as torch.topk does.
        ranked.sort_by(|&a, &b| probabilities[b].total_cmp(&probabilities[a]));
        ranked.truncate(self.top_k);
        match self.answer {
            ClassifierAnswer::Torchserve => self.write_label_map(out, &ranked, &probabilities),
            _ if self.top_k == 1 => self.write_class(out, ranked[0], &probabilities),
            _ => {
                out.push(b'[');
                for (i, &index) in ranked.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    self.write_class(out, index, &probabilities);
                }
                out.push(b']');
            }
        }
        Ok(())
    }

    /// `argmax` answers for every row of the scores, as a tensor: the class
    /// indices (INT64), or their labels when the model has labels. `None`
    /// for the other answer shapes, which answer tensors with the model's own.
    pub fn best_classes(&self, response: &InferResponse) -> Option<Result<Tensor, Error>> {
        if self.answer != ClassifierAnswer::Argmax {
            return None;
        }
        let output = &response.outputs[0];
        let rows = match output.shape.as_slice() {
            [rows, _] => *rows,
            _ => 1,
        };
        let best = (0..rows)
            .map(|r| score_row(output, r).map(|scores| best_class(&scores)))
            .collect::<Result<Vec<usize>, Error>>();
        Some(best.map(|best| {
            let data = if self.labels.is_empty() {
                TensorData::I64(best.iter().map(|&i| i as i64).collect())
            } else {
                TensorData::String(best.iter().map(|&i| self.class_name(i)).collect())
            };
            Tensor::new(vec![rows], data)
        }))
    }

    fn class_name(&self, index: usize) -> String {
        self.labels
            .get(&index)
            .cloned()
            .unwrap_or_else(|| index.to_string())
    }

    /// The label as a JSON string, or the bare index without labels (so
    /// TorchServe's MNIST answer is the text `2`).
    fn write_class_name(&self, out: &mut Vec<u8>, index: usize) {
        match self.labels.get(&index) {
            Some(label) => write_string(out, label),
            None => (index as u64).write_json(out),
        }
    }

    /// `{"class": "...", "probability": p}`.
    fn write_class(&self, out: &mut Vec<u8>, index: usize, probabilities: &[f32]) {
        out.extend_from_slice(b"{\"class\":");
        write_string(out, &self.class_name(index));
        out.extend_from_slice(b",\"probability\":");
        probabilities[index].write_json(out);
        out.push(b'}');
    }

    /// TorchServe's `{"label": p, ...}`, best first. Probabilities are
    /// written as Python writes a float32 widened to a float, so the digits
    /// match TorchServe's answer.
    fn write_label_map(&self, out: &mut Vec<u8>, ranked: &[usize], probabilities: &[f32]) {
        out.push(b'{');
        for (i, &index) in ranked.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_string(out, &self.class_name(index));
            out.push(b':');
            (probabilities[index] as f64).write_json(out);
        }
        out.push(b'}');
    }
}

/// The index of the highest score; the first one on ties, as `argmax` does.
fn best_class(scores: &[f32]) -> usize {
    let mut best = 0;
    for (i, score) in scores.iter().enumerate() {
        if score.total_cmp(&scores[best]).is_gt() {
            best = i;
        }
    }
    best
}

/// The model input's layout, channels and the crop it implies.
struct Geometry {
    layout: Layout,
    /// False for an N×H×W input, which takes its one channel without an axis.
    channel_axis: bool,
    channels: usize,
    height: u32,
    width: u32,
}

impl Geometry {
    fn of(io: &ModelIo, options: &ImageClassifierOptions) -> Result<Geometry, String> {
        let [input] = io.inputs.as_slice() else {
            return Err(format!(
                "image_classifier needs a model with one input; this one has {}",
                io.inputs.len()
            ));
        };
        if input.dtype != DataType::F32 || !matches!(input.shape.len(), 3 | 4) {
            return Err(format!(
                "image_classifier needs a float32 input of rank 4 (NCHW or NHWC) or 3 (N×H×W, gray); \
                 input '{}' is {} {}",
                input.name,
                input.dtype,
                input.shape_text()
            ));
        }
        // N×H×W is gray NCHW without its channel axis (MNIST's usual export).
        let channel_axis = input.shape.len() == 4;
        let dims = match channel_axis {
            true => input.shape.clone(),
            false => vec![input.shape[0], 1, input.shape[1], input.shape[2]],
        };
        let guessed = if matches!(dims[1], 1 | 3) || !channel_axis {
            Layout::Nchw
        } else {
            Layout::Nhwc
        };
        let layout = match channel_axis {
            true => options.layout.unwrap_or(guessed),
            false => Layout::Nchw,
        };
        let (c, h, w) = match layout {
            Layout::Nchw => (dims[1], dims[2], dims[3]),
            Layout::Nhwc => (dims[3], dims[1], dims[2]),
        };
        if !matches!(c, 1 | 3) {
            return Err(format!(
                "input '{}' {} has {c} channels; image_classifier handles 1 (gray) or 3 (colour) \
                 (set imageClassifier.layout if the layout was guessed wrong)",
                input.name,
                input.shape_text()
            ));
        }
        let side = |dim: i64| -> Result<u32, String> {
            match (dim, options.crop) {
                (d, Some(crop)) if d > 0 && d != crop as i64 => Err(format!(
                    "imageClassifier.crop ({crop}) does not match input '{}' {}; leave crop unset",
                    input.name,
                    input.shape_text()
                )),
                (_, Some(crop)) if crop > 0 => Ok(crop),
                (d, _) if d > 0 => Ok(d as u32),
                _ => Err(format!(
                    "input '{}' {} has a dynamic height or width; set ortserve.imageClassifier.crop",
                    input.name,
                    input.shape_text()
                )),
            }
        };
        Ok(Geometry {
            layout,
            channel_axis,
            channels: c as usize,
            height: side(h)?,
            width: side(w)?,
        })
    }
}

/// The first output must be float scores shaped [N, classes] (or [classes]).
fn check_scores(io: &ModelIo) -> Result<(), String> {
    let output = io.outputs.first().ok_or("the model has no outputs")?;
    if !matches!(output.dtype, DataType::F32 | DataType::F64 | DataType::F16)
        || !matches!(output.shape.len(), 1 | 2)
    {
        return Err(format!(
            "image_classifier needs float scores shaped [batch, classes]; output '{}' is {} {}",
            output.name,
            output.dtype,
            output.shape_text()
        ));
    }
    Ok(())
}

/// One value per channel: the configured ones (one broadcasts), else the
/// default for colour or gray images.
fn per_channel(
    values: &Option<Vec<f32>>,
    colour: [f32; 3],
    gray: f32,
    channels: usize,
    key: &str,
) -> Result<Vec<f32>, String> {
    let values = values.clone().unwrap_or_else(|| {
        if channels == 3 {
            colour.to_vec()
        } else {
            vec![gray]
        }
    });
    match values.len() {
        1 => Ok(vec![values[0]; channels]),
        n if n == channels => Ok(values),
        n => Err(format!(
            "imageClassifier.{key} has {n} values; the model has {channels} channels"
        )),
    }
}

/// The image bytes in a KServe v1 instance: a base64 string, or an object
/// with a base64 `data` (TorchServe's samples) or `b64` (TF Serving's) field;
/// other fields (such as `target`) are ignored. `None` when the instance is
/// a tensor instead.
pub fn instance_image(instance: &[u8]) -> Result<Option<Vec<u8>>, Error> {
    #[derive(serde::Deserialize)]
    struct Fields {
        data: Option<String>,
        b64: Option<String>,
    }
    let encoded = match instance.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'"') => serde_json::from_slice::<String>(instance)
            .map_err(|e| Error::BadInput(format!("invalid instance: {e}")))?,
        Some(b'{') => {
            let fields: Fields = serde_json::from_slice(instance)
                .map_err(|e| Error::BadInput(format!("invalid instance: {e}")))?;
            fields.data.or(fields.b64).ok_or_else(|| {
                Error::BadInput(r#"an image instance is {"data": "<base64 image>"} or {"b64": "<base64 image>"}"#.into())
            })?
        }
        _ => return Ok(None),
    };
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    base64::Engine::decode(&engine, encoded.trim())
        .map(Some)
        .map_err(|e| Error::BadInput(format!("the instance's image is not valid base64: {e}")))
}

/// Pillow's `convert("L")`: ITU-R 601-2 luma, rounded.
fn pil_gray(rgb: &image::RgbImage) -> Vec<u8> {
    rgb.pixels()
        .map(|p| {
            ((p[0] as u32 * 19595 + p[1] as u32 * 38470 + p[2] as u32 * 7471 + 0x8000) >> 16) as u8
        })
        .collect()
}

/// Row `r` of the scores: a row of [N, classes], or all of any other shape
/// (which holds one row).
fn score_row(output: &Tensor, r: usize) -> Result<Vec<f32>, Error> {
    let per_row = match output.shape.as_slice() {
        [_, classes] => *classes,
        _ => output.data.len(),
    };
    let range = r * per_row..(r + 1) * per_row;
    if per_row == 0 || output.data.len() < range.end {
        return Err(Error::Inference(format!(
            "the model returned no scores (shape {:?})",
            output.shape
        )));
    }
    Ok(match &output.data {
        TensorData::F32(v) => v[range].to_vec(),
        TensorData::F64(v) => v[range].iter().map(|&x| x as f32).collect(),
        TensorData::F16(v) => v[range].iter().map(|x| x.to_f32()).collect(),
        other => {
            return Err(Error::Inference(format!(
                "the model returned {} scores",
                other.dtype()
            )));
        }
    })
}

fn softmax(scores: &[f32]) -> Vec<f32> {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = scores.iter().map(|&s| (s - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// Parses TorchServe's `index_to_name.json`: `{"0": "cat"}` or, as in the
/// ImageNet file, `{"0": ["n01440764", "tench"]}` (the last item is the name).
pub fn parse_labels(origin: &str, text: &str) -> Result<HashMap<usize, String>, String> {
    let map: HashMap<String, serde_json::Value> = serde_json::from_str(text)
        .map_err(|e| format!("{origin}: expected {{\"0\": \"label\", ...}}: {e}"))?;
    map.into_iter()
        .map(|(key, value)| {
            let index = key
                .parse::<usize>()
                .map_err(|_| format!("{origin}: key '{key}' is not a class index"))?;
            let label = match &value {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Array(items) => {
                    items.last().and_then(|v| v.as_str()).map(str::to_string)
                }
                _ => None,
            }
            .ok_or_else(|| {
                format!("{origin}: the label of class {index} is not a string or a list of strings")
            })?;
            Ok((index, label))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one() {
        let p = softmax(&[1.0, 2.0, 3.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((p[2] - 0.66524096).abs() < 1e-6);
    }

    #[test]
    fn labels_in_both_torchserve_forms() {
        let labels = parse_labels("f", r#"{"0": "zero", "281": ["n02123045", "tabby"]}"#).unwrap();
        assert_eq!(labels[&0], "zero");
        assert_eq!(labels[&281], "tabby");
        assert!(
            parse_labels("f", r#"{"x": "y"}"#)
                .unwrap_err()
                .contains("key 'x' is not a class index")
        );
    }

    #[test]
    fn the_best_class_is_the_first_of_equal_scores() {
        assert_eq!(best_class(&[0.1, 0.7, 0.7, 0.2]), 1);
        assert_eq!(best_class(&[3.0]), 0);
    }

    #[test]
    fn gray_matches_pillow() {
        let rgb = image::RgbImage::from_raw(2, 1, vec![255, 0, 0, 10, 200, 30]).unwrap();
        // Pillow: L = R*299/1000 + G*587/1000 + B*114/1000, rounded.
        assert_eq!(pil_gray(&rgb), vec![76, 124]);
    }
}
