//! The `image_classifier` handler over real HTTP: exact probabilities on
//! constructed models, options, limits, and the bundled digits demo.

use std::io::Cursor;

use crate::common::*;
use image::{ImageFormat, Rgb, RgbImage};

const LABELS: &[u8] = br#"{"0": "red", "1": "green", "2": ["n000", "blue"]}"#;

fn color_config(extra: &str) -> String {
    format!(
        "minWorkers: 1\nmaxWorkers: 1\nortserve:\n  handler: image_classifier\n  imageClassifier:\n    resize: 16\n    mean: [0]\n    std: [1]\n{extra}"
    )
}

fn encode(image: &image::DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut bytes = Cursor::new(Vec::new());
    image.write_to(&mut bytes, format).unwrap();
    bytes.into_inner()
}

fn solid(width: u32, height: u32, rgb: [u8; 3]) -> image::DynamicImage {
    image::DynamicImage::ImageRgb8(RgbImage::from_pixel(width, height, Rgb(rgb)))
}

fn softmax(logits: &[f32]) -> Vec<f32> {
    let sum: f32 = logits.iter().map(|l| l.exp()).sum();
    logits.iter().map(|l| l.exp() / sum).collect()
}

async fn color_server(store: &Store, extra: &str) -> Server {
    store.dir_model("color", "color_mean", Some(&color_config(extra)));
    store.file("color/index_to_name.json", LABELS);
    Server::healthy(Launch::store(store, "all")).await
}

#[tokio::test]
async fn top_class_and_probability_are_exact_for_a_solid_colour() {
    let store = Store::new();
    let server = color_server(&store, "").await;
    // The model outputs each channel's mean; with mean 0 / std 1 that is pixel/255.
    let png = encode(&solid(16, 16, [200, 50, 25]), ImageFormat::Png);
    let (status, answer) = status_json(server.put_bytes("/predictions/color", png).await).await;
    assert_eq!(status, 200, "{answer}");
    let p = softmax(&[200.0 / 255.0, 50.0 / 255.0, 25.0 / 255.0]);
    assert_eq!(answer["class"], "red");
    assert!(
        (answer["probability"].as_f64().unwrap() as f32 - p[0]).abs() < 1e-6,
        "{answer}"
    );
    assert_eq!(
        answer.as_object().unwrap().len(),
        2,
        "exactly {{class, probability}}: {answer}"
    );
}

#[tokio::test]
async fn larger_images_are_resized_and_centre_cropped() {
    let store = Store::new();
    let server = color_server(&store, "").await;
    // 48x32: blue left third, green right; shorter side 32 → 16 gives 24x16,
    // and the centre 16x16 crop keeps columns 4..20 of 24.
    let mut image = RgbImage::from_pixel(48, 32, Rgb([0, 255, 0]));
    for y in 0..32 {
        for x in 0..16 {
            image.put_pixel(x, y, Rgb([0, 0, 255]));
        }
    }
    let png = encode(&image::DynamicImage::ImageRgb8(image), ImageFormat::Png);
    let (_, answer) = status_json(server.put_bytes("/predictions/color", png).await).await;
    // Pillow's BILINEAR resize (what torchvision uses) of this image gives crop
    // channel means of exactly [0, 0.75, 0.25] (computed once with Pillow 12).
    assert_eq!(answer["class"], "green", "{answer}");
    let p = softmax(&[0.0, 0.75, 0.25])[1];
    assert!(
        (answer["probability"].as_f64().unwrap() as f32 - p).abs() < 1e-6,
        "{answer} vs {p}"
    );
}

#[tokio::test]
async fn top_k_lists_and_channel_order_are_configurable() {
    let store = Store::new();
    let server = color_server(&store, "    topK: 3\n    channelOrder: bgr\n").await;
    let png = encode(&solid(16, 16, [200, 50, 25]), ImageFormat::Png);
    let (_, answer) = status_json(server.put_bytes("/predictions/color", png).await).await;
    // BGR swaps R and B: logits are [25, 50, 200] / 255, so "blue" leads.
    let p = softmax(&[25.0 / 255.0, 50.0 / 255.0, 200.0 / 255.0]);
    let classes: Vec<&str> = answer
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["class"].as_str().unwrap())
        .collect();
    assert_eq!(classes, ["blue", "green", "red"]);
    for (entry, want) in answer.as_array().unwrap().iter().zip([p[2], p[1], p[0]]) {
        assert!(
            (entry["probability"].as_f64().unwrap() as f32 - want).abs() < 1e-6,
            "{answer}"
        );
    }
}

#[tokio::test]
async fn jpeg_multipart_and_gray_models_work() {
    let store = Store::new();
    store.dir_model(
        "gray",
        "gray_mean",
        Some("minWorkers: 1\nmaxWorkers: 1\nortserve:\n  handler: image_classifier\n  imageClassifier:\n    resize: 8\n"),
    );
    let server = color_server(&store, "").await;
    let jpeg = encode(&solid(16, 16, [20, 220, 40]), ImageFormat::Jpeg);
    let form = reqwest::multipart::Form::new().part(
        "data",
        reqwest::multipart::Part::bytes(jpeg).file_name("g.jpg"),
    );
    let (_, answer) = status_json(server.post_multipart("/predictions/color", form).await).await;
    assert_eq!(answer["class"], "green", "{answer}");
    // Gray model, default gray mean/std (0, 1): logits [m, -m] with m = 128/255.
    let gray =
        image::DynamicImage::ImageLuma8(image::GrayImage::from_pixel(8, 8, image::Luma([128])));
    let (_, answer) = status_json(
        server
            .put_bytes("/predictions/gray", encode(&gray, ImageFormat::Png))
            .await,
    )
    .await;
    let m = 128.0f32 / 255.0;
    assert_eq!(answer["class"], "0");
    assert!(
        (answer["probability"].as_f64().unwrap() as f32 - softmax(&[m, -m])[0]).abs() < 1e-6,
        "{answer}"
    );
    // A colour image for a gray model is converted with Pillow's luma weights.
    let (_, answer) = status_json(
        server
            .put_bytes(
                "/predictions/gray",
                encode(&solid(8, 8, [255, 0, 0]), ImageFormat::Png),
            )
            .await,
    )
    .await;
    let m = 76.0f32 / 255.0;
    assert!(
        (answer["probability"].as_f64().unwrap() as f32 - softmax(&[m, -m])[0]).abs() < 1e-6,
        "{answer}"
    );
}

#[tokio::test]
async fn a_crop_that_contradicts_the_model_fails_its_load() {
    let store = Store::new();
    store.dir_model("color", "color_mean", Some(&color_config("    crop: 12\n")));
    let server = Server::start(Launch::store(&store, "all"));
    let ping = server.wait_settled().await;
    let error = ping["models"]["color"]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(
        error.contains("imageClassifier.crop (12) does not match input 'image' [-1, 3, 16, 16]"),
        "{ping}"
    );
}

#[tokio::test]
async fn undecodable_and_oversized_images_are_refused() {
    let store = Store::new();
    let server = color_server(&store, "    maxImagePixels: 1000\n").await;
    assert_error(
        server
            .put_bytes("/predictions/color", b"definitely not an image".to_vec())
            .await,
        400,
        "BadRequestException",
        "the body is not an image this model can read",
    )
    .await;
    let truncated = encode(&solid(16, 16, [1, 2, 3]), ImageFormat::Png)[..60].to_vec();
    assert_error(
        server.put_bytes("/predictions/color", truncated).await,
        400,
        "BadRequestException",
        "cannot",
    )
    .await;
    let big = encode(&solid(40, 30, [1, 2, 3]), ImageFormat::Png);
    assert_error(
        server.put_bytes("/predictions/color", big).await,
        413,
        "RequestEntityTooLargeException",
        "the image is 40x30 = 1200 pixels, over the limit of 1000 (ortserve.imageClassifier.maxImagePixels)",
    )
    .await;
    // Within the limit, but resizing its shorter side (1 px) to 16 would not be.
    let sliver = encode(&solid(1, 100, [1, 2, 3]), ImageFormat::Png);
    assert_error(
        server.put_bytes("/predictions/color", sliver).await,
        413,
        "RequestEntityTooLargeException",
        "the image is 1x100; resizing its shorter side to 16 makes it 25600 pixels",
    )
    .await;
    // A decompression bomb: the header claims 30000x30000; refused before decoding.
    let (_, answer) = status_json(
        server
            .put_bytes("/predictions/color", png_header_only(30_000, 30_000))
            .await,
    )
    .await;
    assert_eq!(answer["code"], 413, "{answer}");
    let (status, _) = status_json(
        server
            .put_bytes(
                "/predictions/color",
                encode(&solid(16, 16, [9, 9, 9]), ImageFormat::Png),
            )
            .await,
    )
    .await;
    assert_eq!(status, 200);
}

/// A tiny PNG whose header claims a huge RGB image (IHDR, empty IDAT, IEND).
#[tokio::test]
async fn an_image_whose_resize_would_be_huge_is_refused_from_its_header() {
    let store = Store::new();
    let server = color_server(&store, "").await;
    // Within the pixel limit, but 16 × 80,000,000 × 16 after resizing; the
    // header has no pixel data, so only a header check gives this answer.
    let started = std::time::Instant::now();
    let response = server
        .put_bytes("/predictions/color", png_header_only(80_000_000, 1))
        .await;
    assert_error(
        response,
        413,
        "RequestEntityTooLargeException",
        "the image is 80000000x1; resizing its shorter side to 16 makes it",
    )
    .await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

fn png_header_only(width: u32, height: u32) -> Vec<u8> {
    let mut header = width.to_be_bytes().to_vec();
    header.extend_from_slice(&height.to_be_bytes());
    header.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, data) in [(b"IHDR", header.as_slice()), (b"IDAT", &[]), (b"IEND", &[])] {
        let mut chunk = kind.to_vec();
        chunk.extend_from_slice(data);
        png.extend_from_slice(&(data.len() as u32).to_be_bytes());
        png.extend_from_slice(&chunk);
        png.extend_from_slice(&crc32(&chunk).to_be_bytes());
    }
    png
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[tokio::test]
async fn the_digits_demo_answers_as_its_expected_file_says() {
    let demo = demo_dir();
    let launch = Launch {
        args: vec![
            "--model-store".into(),
            demo.join("model-store").display().to_string(),
            "--models".into(),
            "digits=digits.mar,digits=digits_v2".into(),
        ],
        ..Launch::default()
    };
    let server = Server::healthy(launch).await;
    server.wait_versions_ready("digits", &["1.0"]).await;
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(demo.join("samples/expected.json")).unwrap())
            .unwrap();
    for (file, want) in expected.as_object().unwrap() {
        let png = std::fs::read(demo.join("samples").join(file)).unwrap();
        for (path, version) in [
            ("/predictions/digits", "2.0"),
            ("/predictions/digits/1.0", "1.0"),
            ("/predictions/digits/2.0", "2.0"),
        ] {
            let (status, answer) = status_json(server.put_bytes(path, png.clone()).await).await;
            assert_eq!(status, 200, "{file} {path}: {answer}");
            let want = &want[version];
            assert_eq!(answer["class"], want["class"], "{file} {path}");
            let (got, want_p) = (
                answer["probability"].as_f64().unwrap(),
                want["probability"].as_f64().unwrap(),
            );
            assert!(
                (got - want_p).abs() < 1e-5,
                "{file} {path}: {got} vs {want_p}"
            );
        }
    }
    // The README's example, verbatim.
    let (_, answer) = status_json(
        server
            .put_bytes(
                "/predictions/digits",
                std::fs::read(demo.join("samples/sample.png")).unwrap(),
            )
            .await,
    )
    .await;
    assert_classes(&answer, &[(3, 0.999858)], 1e-5);
}
