// swift-tools-version:6.0
import PackageDescription

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
    ],
    targets: [
        // OpenBLAS's CBLAS interface (libopenblas-dev); headers only.
        .systemLibrary(name: "CBLAS", path: "Sources/CBLAS", providers: [.apt(["libopenblas-dev"])]),
        // Float32 tensors, reverse-mode autograd, and the kernels under them.
        .target(name: "Tensors", dependencies: ["CBLAS"]),
        // Modules, layers, models, optimizers and learning-rate schedules.
        .target(name: "NN", dependencies: ["Tensors"]),
        // Reference-fixture runner (`cohort conformance`).
        .target(name: "Conformance", dependencies: ["NN"]),
        // Timed training steps (`cohort bench`).
        .target(name: "Benchmarks", dependencies: ["NN"]),
        // The command-line tool: parsing, validation, wiring.
        .executableTarget(
            name: "cohort",
            dependencies: [
                "NN", "Conformance", "Benchmarks",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]),
        .testTarget(name: "TensorsTests", dependencies: ["Tensors"]),
        .testTarget(name: "NNTests", dependencies: ["NN"]),
        .testTarget(name: "ConformanceTests", dependencies: ["Conformance"]),
    ]
)
