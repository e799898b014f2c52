// dk_classify FOLDER IMAGE [--engine model.fp16.engine]
//
// Loads a deploykit engine with the TensorRT C++ runtime, preprocesses IMAGE as FOLDER/deploykit.json says,
// runs it and prints the top-5 classes. The starting point for an edge app.
//
// TensorRT 10.x / 11.x C++ API, as in NVIDIA's "Migrating from enqueueV2 to enqueueV3 (C++)" pattern:
// createInferRuntime -> deserializeCudaEngine -> createExecutionContext; getNbIOTensors / getIOTensorName /
// getTensorIOMode / getTensorDataType; setInputShape for the dynamic batch; setTensorAddress for every I/O
// tensor; enqueueV3(stream). Objects are released with delete (std::unique_ptr), as TensorRT 10 requires.
#include <NvInfer.h>
#include <cuda_runtime_api.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "deploykit_pre.hpp"

namespace {

class Logger : public nvinfer1::ILogger {
    void log(Severity severity, char const* msg) noexcept override {
        if (severity <= Severity::kWARNING) std::cerr << "tensorrt: " << msg << "\n";
    }
};

void check(cudaError_t err, char const* what) {
    if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

std::vector<char> read_file(std::string const& path) {
    std::ifstream file(path, std::ios::binary);
    if (!file) throw std::runtime_error("cannot open " + path);
    return {std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>()};
}

// The engine's facts in deploykit.json against this TensorRT and GPU: a plan only loads in the TensorRT
// version that built it, on a GPU of the same compute capability.
void check_compatible(deploykit::EngineFacts const& facts) {
    int32_t v = getInferLibVersion();  // TensorRT 10+: major * 10000 + minor * 100 + patch
    std::string here = std::to_string(v / 10000) + "." + std::to_string((v / 100) % 100) + "." + std::to_string(v % 100);
    if (facts.tensorrt.rfind(here, 0) != 0)
        throw std::runtime_error(facts.path + " was built by TensorRT " + facts.tensorrt + " and this is TensorRT " +
                                 here + ": rebuild it here with `deploykit build FOLDER --precision " + facts.precision + "`");
    int device = 0;
    cudaDeviceProp prop{};
    check(cudaGetDevice(&device), "cudaGetDevice");
    check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
    std::string cc = std::to_string(prop.major) + "." + std::to_string(prop.minor);
    if (!facts.compute_capability.empty() && facts.compute_capability != cc)
        throw std::runtime_error(facts.path + " was built for " + facts.gpu + " (compute capability " +
                                 facts.compute_capability + ") and this GPU is " + prop.name + " (" + cc +
                                 "): rebuild it here with `deploykit build FOLDER --precision " + facts.precision + "`");
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: %s EXPORT_FOLDER IMAGE [--engine NAME]\n", argv[0]);
        return 2;
    }
    std::string folder = argv[1], image = argv[2], engine_name;
    for (int i = 3; i < argc; ++i) {
        if (std::string(argv[i]) != "--engine") continue;
        if (i + 1 >= argc) {
            std::fprintf(stderr, "error: --engine needs an engine file name from deploykit.json\n");
            return 2;
        }
        engine_name = argv[++i];
    }
    try {
        deploykit::Manifest manifest = deploykit::load_manifest(folder + "/deploykit.json");
        if (manifest.engines.empty())
            throw std::runtime_error(folder + " has no engine yet: run `deploykit build " + folder + "` on this device");
        deploykit::EngineFacts facts = manifest.engines.front();
        if (!engine_name.empty()) {  // --engine NAME must be one the manifest lists: never run another silently
            bool found = false;
            std::string listed;
            for (auto const& e : manifest.engines) {
                if (e.path == engine_name) {
                    facts = e;
                    found = true;
                }
                listed += (listed.empty() ? "" : ", ") + e.path;
            }
            if (!found)
                throw std::runtime_error(folder + "/deploykit.json lists no engine '" + engine_name + "'; it has: " +
                                         listed);
        }
        check_compatible(facts);

        Logger logger;
        std::vector<char> plan = read_file(folder + "/" + facts.path);  // the plain serialized plan
        std::unique_ptr<nvinfer1::IRuntime> runtime{nvinfer1::createInferRuntime(logger)};
        std::unique_ptr<nvinfer1::ICudaEngine> engine{runtime->deserializeCudaEngine(plan.data(), plan.size())};
        if (!engine) throw std::runtime_error("TensorRT cannot load " + facts.path);
        std::unique_ptr<nvinfer1::IExecutionContext> context{engine->createExecutionContext()};
        if (!context) throw std::runtime_error("cannot create an execution context");

        std::string input, output;
        for (int32_t i = 0; i < engine->getNbIOTensors(); ++i) {
            char const* name = engine->getIOTensorName(i);
            if (engine->getTensorDataType(name) != nvinfer1::DataType::kFLOAT)
                throw std::runtime_error(std::string("tensor ") + name + " is not float32 (deploykit engines keep FP32 I/O)");
            (engine->getTensorIOMode(name) == nvinfer1::TensorIOMode::kINPUT ? input : output) = name;
        }
        auto const& pre = manifest.preprocess;
        std::vector<float> chw = deploykit::preprocess(image, pre);

        nvinfer1::Dims shape = engine->getTensorShape(input.c_str());
        if (shape.d[0] == -1) {  // dynamic batch: one image is batch 1 (inside every deploykit profile)
            if (!context->setInputShape(input.c_str(), nvinfer1::Dims4{1, pre.channels, pre.height, pre.width}))
                throw std::runtime_error("batch 1 is outside the engine's optimization profile");
            shape.d[0] = 1;
        }
        int64_t batch = shape.d[0];
        std::vector<float> host_in(static_cast<size_t>(batch) * chw.size());
        for (int64_t b = 0; b < batch; ++b) std::copy(chw.begin(), chw.end(), host_in.begin() + b * chw.size());
        nvinfer1::Dims out_shape = context->getTensorShape(output.c_str());
        int64_t out_count = 1;
        for (int32_t i = 0; i < out_shape.nbDims; ++i) out_count *= out_shape.d[i];
        std::vector<float> host_out(static_cast<size_t>(out_count));

        cudaStream_t stream;
        void *d_in = nullptr, *d_out = nullptr;
        check(cudaStreamCreate(&stream), "cudaStreamCreate");
        check(cudaMalloc(&d_in, host_in.size() * sizeof(float)), "cudaMalloc");
        check(cudaMalloc(&d_out, host_out.size() * sizeof(float)), "cudaMalloc");
        context->setTensorAddress(input.c_str(), d_in);
        context->setTensorAddress(output.c_str(), d_out);
        check(cudaMemcpyAsync(d_in, host_in.data(), host_in.size() * sizeof(float), cudaMemcpyHostToDevice, stream),
              "cudaMemcpyAsync");
        if (!context->enqueueV3(stream)) throw std::runtime_error("enqueueV3 failed");
        check(cudaMemcpyAsync(host_out.data(), d_out, host_out.size() * sizeof(float), cudaMemcpyDeviceToHost, stream),
              "cudaMemcpyAsync");
        check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
        cudaFree(d_in);
        cudaFree(d_out);
        cudaStreamDestroy(stream);

        int classes = static_cast<int>(out_count / batch);
        std::printf("%s  (%s, %s)\n", image.c_str(), facts.path.c_str(), facts.precision.c_str());
        int rank = 1;
        for (auto const& [index, probability] : deploykit::topk(host_out.data(), classes, 5)) {
            std::string label = index < static_cast<int>(manifest.class_names.size()) ? manifest.class_names[index]
                                                                                       : std::to_string(index);
            std::printf("%d. %-24s %.4f\n", rank++, label.c_str(), probability);
        }
    } catch (std::exception const& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
    return 0;
}
