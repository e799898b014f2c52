#include "deploykit_pre.hpp"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <numeric>
#include <stdexcept>

#include <nlohmann/json.hpp>

#define STB_IMAGE_IMPLEMENTATION
#define STBI_FAILURE_USERMSG
#include <stb_image.h>

namespace deploykit {

using json = nlohmann::json;

Manifest load_manifest(const std::string& manifest_path) {
    std::ifstream file(manifest_path);
    if (!file) throw std::runtime_error("cannot open " + manifest_path + ": copy the whole export folder");
    json data;
    try {
        file >> data;
    } catch (const json::exception& e) {
        throw std::runtime_error(manifest_path + " is not valid JSON: " + e.what());
    }
    if (data.value("schema", "") != "deploykit-manifest/1")
        throw std::runtime_error(manifest_path + " is not a deploykit manifest (deploykit-manifest/1)");
    Manifest m;
    const json& p = data.at("preprocess");
    m.preprocess.channels = p.at("channels").get<int>();
    m.preprocess.height = p.at("height").get<int>();
    m.preprocess.width = p.at("width").get<int>();
    m.preprocess.mean = p.at("mean").get<std::vector<float>>();
    m.preprocess.std = p.at("std").get<std::vector<float>>();
    m.preprocess.resize = p.contains("resize") && !p["resize"].is_null() ? p["resize"].get<int>() : 0;
    m.preprocess.interpolation = p.value("interpolation", "bilinear");
    const json& model = data.at("model");
    if (model.contains("class_names") && model["class_names"].is_array())
        m.class_names = model["class_names"].get<std::vector<std::string>>();
    m.input_name = data.at("input").value("name", "input");
    m.output_name = data.at("output").value("name", "logits");
    for (const json& a : data.at("artifacts")) {
        if (!a.contains("engine")) continue;
        const json& e = a["engine"];
        m.engines.push_back({a.at("path").get<std::string>(), a.value("precision", ""), e.value("tensorrt", ""),
                             e.value("gpu", ""), e.value("compute_capability", "")});
    }
    return m;
}

// -- pixels ------------------------------------------------------------------------------------------------

static uint8_t luma(uint8_t r, uint8_t g, uint8_t b) {  // Pillow's L = R*299/1000 + G*587/1000 + B*114/1000
    return static_cast<uint8_t>((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16);
}

static uint8_t over_white(uint8_t c, uint8_t a) {  // composite on an opaque white background
    return static_cast<uint8_t>((c * a + 255 * (255 - a) + 127) / 255);
}

Image load_image(const std::string& path, int channels) {
    int w = 0, h = 0, n = 0;
    stbi_uc* raw = stbi_load(path.c_str(), &w, &h, &n, 0);
    if (!raw) throw std::runtime_error("cannot read image " + path + ": " + stbi_failure_reason());
    Image img{w, h, channels, std::vector<uint8_t>(static_cast<size_t>(w) * h * channels)};
    for (size_t i = 0, count = static_cast<size_t>(w) * h; i < count; ++i) {
        const stbi_uc* px = raw + i * n;
        uint8_t r, g, b;
        if (n <= 2) {  // grey (+ alpha)
            r = g = b = n == 2 ? over_white(px[0], px[1]) : px[0];
        } else {
            uint8_t a = n == 4 ? px[3] : 255;
            r = over_white(px[0], a), g = over_white(px[1], a), b = over_white(px[2], a);
        }
        if (channels == 1) {
            img.pixels[i] = n <= 2 ? r : luma(r, g, b);
        } else {
            img.pixels[i * 3] = r, img.pixels[i * 3 + 1] = g, img.pixels[i * 3 + 2] = b;
        }
    }
    stbi_image_free(raw);
    return img;
}

// Pillow's libImaging/Resample.c, in the same order: coefficients per output pixel normalised to 1, then
// converted to fixed point with PRECISION_BITS = 32 - 8 - 2; horizontal pass, then vertical pass.
namespace {
constexpr int kPrecisionBits = 32 - 8 - 2;

double bilinear_filter(double x) { x = std::fabs(x); return x < 1.0 ? 1.0 - x : 0.0; }
double bicubic_filter(double x) {
    const double a = -0.5;
    x = std::fabs(x);
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

struct Coeffs {
    int ksize = 0;
    std::vector<int> bounds;   // xmin, count per output pixel
    std::vector<int32_t> k;    // fixed point
};

Coeffs precompute(int in_size, int out_size, double (*filter)(double), double support_base) {
    double scale = static_cast<double>(in_size) / out_size;
    double filterscale = std::max(scale, 1.0);
    double support = support_base * filterscale;
    Coeffs c;
    c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
    c.bounds.resize(out_size * 2);
    c.k.assign(static_cast<size_t>(out_size) * c.ksize, 0);
    std::vector<double> pre(c.ksize);
    for (int xx = 0; xx < out_size; ++xx) {
        double center = (xx + 0.5) * scale;
        double ss = 1.0 / filterscale;
        int xmin = std::max(static_cast<int>(center - support + 0.5), 0);
        int xmax = std::min(static_cast<int>(center + support + 0.5), in_size) - xmin;
        double ww = 0.0;
        for (int x = 0; x < xmax; ++x) {
            pre[x] = filter((x + xmin - center + 0.5) * ss);
            ww += pre[x];
        }
        for (int x = 0; x < xmax; ++x) {
            double w = ww != 0.0 ? pre[x] / ww : pre[x];
            c.k[static_cast<size_t>(xx) * c.ksize + x] =
                static_cast<int32_t>(w * (1 << kPrecisionBits) + (w < 0 ? -0.5 : 0.5));
        }
        c.bounds[xx * 2] = xmin;
        c.bounds[xx * 2 + 1] = xmax;
    }
    return c;
}

uint8_t clip8(int64_t v) {
    v >>= kPrecisionBits;
    return static_cast<uint8_t>(v < 0 ? 0 : v > 255 ? 255 : v);
}

Image pass(const Image& in, int out_size, const Coeffs& c, bool horizontal) {
    Image out{horizontal ? out_size : in.width, horizontal ? in.height : out_size, in.channels, {}};
    out.pixels.resize(static_cast<size_t>(out.width) * out.height * in.channels);
    for (int y = 0; y < out.height; ++y)
        for (int x = 0; x < out.width; ++x)
            for (int ch = 0; ch < in.channels; ++ch) {
                int o = horizontal ? x : y;
                int xmin = c.bounds[o * 2], count = c.bounds[o * 2 + 1];
                const int32_t* k = &c.k[static_cast<size_t>(o) * c.ksize];
                int64_t acc = int64_t{1} << (kPrecisionBits - 1);
                for (int i = 0; i < count; ++i) {
                    int sx = horizontal ? xmin + i : x, sy = horizontal ? y : xmin + i;
                    acc += static_cast<int64_t>(in.pixels[(static_cast<size_t>(sy) * in.width + sx) * in.channels + ch]) * k[i];
                }
                out.pixels[(static_cast<size_t>(y) * out.width + x) * in.channels + ch] = clip8(acc);
            }
    return out;
}
}  // namespace

Image resize(const Image& in, int width, int height, const std::string& interpolation) {
    if (interpolation == "nearest") {  // Pillow NEAREST samples the pixel under each output pixel's center
        Image out{width, height, in.channels, std::vector<uint8_t>(static_cast<size_t>(width) * height * in.channels)};
        for (int y = 0; y < height; ++y)
            for (int x = 0; x < width; ++x) {
                int sx = std::min(static_cast<int>((x + 0.5) * in.width / width), in.width - 1);
                int sy = std::min(static_cast<int>((y + 0.5) * in.height / height), in.height - 1);
                for (int ch = 0; ch < in.channels; ++ch)
                    out.pixels[(static_cast<size_t>(y) * width + x) * in.channels + ch] =
                        in.pixels[(static_cast<size_t>(sy) * in.width + sx) * in.channels + ch];
            }
        return out;
    }
    bool cubic = interpolation == "bicubic";
    if (!cubic && interpolation != "bilinear") throw std::runtime_error("unknown interpolation " + interpolation);
    auto filter = cubic ? bicubic_filter : bilinear_filter;
    double support = cubic ? 2.0 : 1.0;
    Image out = in;
    if (width != in.width) out = pass(out, width, precompute(in.width, width, filter, support), true);
    if (height != in.height) out = pass(out, height, precompute(in.height, height, filter, support), false);
    return out;
}

std::vector<float> preprocess(const std::string& image_path, const Preprocess& pre) {
    Image img = load_image(image_path, pre.channels);
    if (pre.resize > 0) {  // shorter side to `resize` (Python's round(): ties to even), then center crop
        double scale = static_cast<double>(pre.resize) / std::min(img.width, img.height);
        int nw = std::max(pre.width, static_cast<int>(std::nearbyint(img.width * scale)));
        int nh = std::max(pre.height, static_cast<int>(std::nearbyint(img.height * scale)));
        img = resize(img, nw, nh, pre.interpolation);
        int left = (nw - pre.width) / 2, top = (nh - pre.height) / 2;
        Image crop{pre.width, pre.height, img.channels, {}};
        crop.pixels.resize(static_cast<size_t>(pre.width) * pre.height * img.channels);
        for (int y = 0; y < pre.height; ++y)
            std::copy_n(&img.pixels[(static_cast<size_t>(y + top) * img.width + left) * img.channels],
                        static_cast<size_t>(pre.width) * img.channels,
                        &crop.pixels[static_cast<size_t>(y) * pre.width * img.channels]);
        img = std::move(crop);
    } else {
        img = resize(img, pre.width, pre.height, pre.interpolation);
    }
    std::vector<float> chw(static_cast<size_t>(pre.channels) * pre.height * pre.width);
    for (int ch = 0; ch < pre.channels; ++ch)
        for (int i = 0; i < pre.height * pre.width; ++i) {
            float v = static_cast<float>(img.pixels[static_cast<size_t>(i) * pre.channels + ch]) / 255.0f;
            chw[static_cast<size_t>(ch) * pre.height * pre.width + i] = (v - pre.mean[ch]) / pre.std[ch];
        }
    return chw;
}

std::vector<std::pair<int, float>> topk(const float* logits, int classes, int k) {
    float hi = *std::max_element(logits, logits + classes);
    std::vector<double> e(classes);
    double sum = 0;
    for (int i = 0; i < classes; ++i) sum += e[i] = std::exp(static_cast<double>(logits[i]) - hi);
    std::vector<int> order(classes);
    std::iota(order.begin(), order.end(), 0);
    k = std::min(k, classes);
    std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int a, int b) { return e[a] > e[b]; });
    std::vector<std::pair<int, float>> out;
    for (int i = 0; i < k; ++i) out.emplace_back(order[i], static_cast<float>(e[order[i]] / sum));
    return out;
}

}  // namespace deploykit
