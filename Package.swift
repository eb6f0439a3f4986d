// swift-tools-version:6.0
import PackageDescription

/// The vector kernels are written for 8-lane SIMD; on x86-64 let them use AVX2 and FMA (Haswell, 2013; every x86-64
/// server CPU since 2013 has them) instead of the SSE2 baseline. Set COHORT_PORTABLE=1 to build for the
/// baseline instead.
var kernelSettings: [SwiftSetting] = []
#if arch(x86_64)
if Context.environment["COHORT_PORTABLE"] == nil {
    kernelSettings = [.unsafeFlags(["-target-cpu", "haswell"])]
}
#endif

/// The numerical modules are optimised in debug builds too: their inner loops are 20-50x slower
/// unoptimised, which would make training tests take minutes. (Debugging them: remove this.)
let optimisedInDebug: [SwiftSetting] = [.unsafeFlags(["-O"], .when(configuration: .debug))]

let package = Package(
    name: "Cohort",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "cohort", targets: ["cohort"]),
        .library(name: "Tensors", targets: ["Tensors"]),
        .library(name: "NN", targets: ["NN"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        // Logging: every process logs through swift-log; the cohort's handler forwards records to the log stream.
        .package(url: "https://github.com/apple/swift-log", from: "1.16.0"),
        // YAML for cohort configuration files.
        .package(url: "https://github.com/jpsim/Yams", from: "5.0.1"),
        // The Prometheus text format for the opt-in metrics endpoint (`--metrics-port`); brings swift-metrics'
        // CoreMetrics and swift-atomics (14 s of a clean debug build on 2 cores of a Zen 3, measured alone).
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
    ],
    targets: [
        // OpenBLAS's CBLAS interface (libopenblas-dev); headers only.
        .systemLibrary(name: "CBLAS", path: "Sources/CBLAS", providers: [.apt(["libopenblas-dev"])]),
        // libzmq's C API (libzmq3-dev).
        .systemLibrary(name: "CZMQ", path: "Sources/CZMQ", providers: [.apt(["libzmq3-dev"])]),
        // A small, safe Swift layer over libzmq: context, sockets, multipart messages, polling, CURVE.
        .target(name: "ZeroMQ", dependencies: ["CZMQ"]),
        // The cohort's wire protocol: messages, frames, validation. Opens no sockets.
        .target(name: "Wire"),
        // Linux process control Swift cannot call directly (prctl's parent-death signal).
        .systemLibrary(name: "CProcess", path: "Sources/CProcess"),
        // zlib: gzip-compressed IDX files, and the checkpoints' CRC-32.
        .systemLibrary(name: "CZlib", path: "Sources/CZlib", providers: [.apt(["zlib1g-dev"])]),
        // Hand-vectorised C kernels: an AVX-512 sgemm and CRCD's per-entry loop (optimised in debug too).
        .target(name: "CKernels", cSettings: [.unsafeFlags(["-O3"])]),
        // Float32 tensors, reverse-mode autograd, and the kernels under them.
        .target(name: "Tensors", dependencies: ["CBLAS", "CKernels"], swiftSettings: kernelSettings + optimisedInDebug),
        // Modules, layers, models, optimizers and learning-rate schedules.
        .target(name: "NN", dependencies: ["Tensors", "CZlib"], swiftSettings: optimisedInDebug),
        // Data sets, augmentation, deterministic samplers and the background batch loader.
        .target(name: "Data", dependencies: ["Tensors", "CZlib"], swiftSettings: optimisedInDebug),
        // Single-network training, evaluation, metrics and run directories (`cohort train`).
        .target(name: "Training", dependencies: ["Tensors", "NN", "Data"]),
        // The distillation losses: MCL, CRCD, RRD, KD, with their memories and queues.
        .target(name: "Distill", dependencies: ["Tensors", "NN"], swiftSettings: optimisedInDebug),
        // The cohort: configuration, the per-peer trainer, the teacher, the in-process cohort.
        .target(name: "Runtime", dependencies: ["Tensors", "NN", "Data", "Training", "Distill", "Wire", .product(name: "Yams", package: "Yams")]),
        // The distributed cohort: coordinator, peer processes, the log stream and monitor, the launcher.
        .target(name: "Cluster", dependencies: ["Tensors", "NN", "Data", "Training", "Runtime", "ZeroMQ", "Wire", "CProcess",
                                                .product(name: "Logging", package: "swift-log"),
                                                .product(name: "Prometheus", package: "swift-prometheus")]),
        // Reference-fixture runner (`cohort conformance`).
        .target(name: "Conformance", dependencies: ["Tensors", "NN", "Distill"]),
        // Timed training steps (`cohort bench`).
        .target(name: "Benchmarks", dependencies: ["CBLAS", "Tensors", "NN", "Distill"]),
        // Run reports (`cohort report`): metrics read back, SVG line charts, a self-contained HTML page.
        .target(name: "Report", dependencies: ["Training"]),
        // The command-line tool: parsing, validation, wiring.
        .executableTarget(
            name: "cohort",
            dependencies: [
                "Tensors", "NN", "Data", "Training", "Distill", "Runtime", "Cluster", "Wire", "Conformance", "Benchmarks", "Report",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]),
        // Helpers shared by the test targets (finite-difference gradient checks).
        .target(name: "TestSupport", dependencies: ["Tensors", "NN"], path: "Tests/TestSupport"),
        .testTarget(name: "TensorsTests", dependencies: ["CBLAS", "CKernels", "Tensors", "TestSupport"]),
        .testTarget(name: "NNTests", dependencies: ["Tensors", "NN", "TestSupport"], exclude: ["Resources"]),
        .testTarget(name: "DataTests", dependencies: ["Data", "CZlib"]),
        .testTarget(name: "TrainingTests", dependencies: ["Tensors", "NN", "Data", "Training", "TestSupport"]),
        .testTarget(name: "DistillTests", dependencies: ["Tensors", "NN", "Distill", "TestSupport"]),
        .testTarget(name: "RuntimeTests", dependencies: ["Tensors", "NN", "Data", "Training", "Distill", "Runtime", "Wire", "TestSupport"]),
        .testTarget(name: "ZeroMQTests", dependencies: ["ZeroMQ"]),
        .testTarget(name: "WireTests", dependencies: ["Wire"]),
        .testTarget(name: "ClusterTests", dependencies: ["Tensors", "NN", "Cluster", "Runtime", "Training", "Wire", "ZeroMQ", "TestSupport"]),
        // The deploy files (Kubernetes, Slurm, systemd) against the CLI and the configuration.
        .testTarget(name: "DeployTests", dependencies: ["Runtime", "TestSupport", .product(name: "Yams", package: "Yams")]),
        .testTarget(name: "BenchmarksTests", dependencies: ["Benchmarks", "NN", "Tensors"]),
        .testTarget(name: "ConformanceTests", dependencies: ["Conformance"], exclude: ["Fixtures"]),
        .testTarget(name: "ReportTests", dependencies: ["Report", "Runtime", "Training", "TestSupport"]),
    ]
)
