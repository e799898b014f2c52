// deploykit export folder on the device: read deploykit.json, preprocess an image exactly as the manifest
// says (deploykit/preprocess.py: convert mode, resize [shorter side + center crop], scale, normalize, CHW),
// and rank logits. No TensorRT here, so this part also builds (and is tested) on machines without it.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace deploykit {

struct Preprocess {
    int channels = 3;
    int height = 224;
    int width = 224;
    std::vector<float> mean;
    std::vector<float> std;
    int resize = 0;                       // 0: straight to height x width; else shorter side, then center crop
    std::string interpolation = "bilinear";  // bilinear | bicubic | nearest (Pillow's filters)
};

struct EngineFacts {
    std::string path;                // e.g. model.fp16.engine
    std::string precision;           // fp32 | fp16 | int8
    std::string tensorrt;            // version that built it, e.g. 10.3.0
    std::string gpu;                 // GPU name it was built on
    std::string compute_capability;  // e.g. 8.7
};

struct Manifest {
    Preprocess preprocess;
    std::vector<std::string> class_names;  // empty when the model has none
    std::vector<EngineFacts> engines;
    std::string input_name = "input";
    std::string output_name = "logits";
};

// Parse <folder>/deploykit.json. Throws std::runtime_error with a one-line reason.
Manifest load_manifest(const std::string& manifest_path);

// An 8-bit image, interleaved, 1 (L) or 3 (RGB) channels.
struct Image {
    int width = 0, height = 0, channels = 0;
    std::vector<uint8_t> pixels;
};

// Decode any format stb_image reads and convert to the model's channels the way Pillow does
// (RGB -> L with ITU-R 601-2 luma weights; alpha composited on white).
Image load_image(const std::string& path, int channels);

// Pillow-compatible separable resampling (Image.resize with BILINEAR / BICUBIC: antialiased when shrinking,
// 22-bit fixed-point coefficients, rounding to 8 bits after each pass).
Image resize(const Image& in, int width, int height, const std::string& interpolation);

// The full deploykit preprocessing of one file: float32 C x H x W.
std::vector<float> preprocess(const std::string& image_path, const Preprocess& pre);

// Softmax + top-k: (class index, probability), best first.
std::vector<std::pair<int, float>> topk(const float* logits, int classes, int k);

}  // namespace deploykit
