// dk_preprocess DEPLOYKIT_JSON IMAGE OUT.f32 -- write the preprocessed C x H x W float32 tensor, so the C++
// preprocessing can be compared with deploykit's Python one (tests/test_trt_examples.py). Needs no TensorRT.
#include <cstdio>
#include <exception>
#include <fstream>

#include "deploykit_pre.hpp"

int main(int argc, char** argv) {
    if (argc != 4) {
        std::fprintf(stderr, "usage: %s deploykit.json image out.f32\n", argv[0]);
        return 2;
    }
    try {
        auto manifest = deploykit::load_manifest(argv[1]);
        auto chw = deploykit::preprocess(argv[2], manifest.preprocess);
        std::ofstream(argv[3], std::ios::binary).write(reinterpret_cast<const char*>(chw.data()),
                                                       static_cast<std::streamsize>(chw.size() * sizeof(float)));
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
    return 0;
}
