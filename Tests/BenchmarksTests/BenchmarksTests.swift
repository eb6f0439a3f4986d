import Testing
import Tensors
import NN
@testable import Benchmarks

/// The benchmarks measure what they say: the layer list is the model's, the results are well formed.
/// (Timings themselves are never asserted on.)
@Suite struct BenchmarksTests {
    @Test func layerShapesAreTheModelsConvolutions() {
        let benchmark = LayerBenchmark(architecture: .resnet20, channels: 3, height: 32, width: 32, batch: 128, threads: 1)
        let shapes = benchmark.shapes()
        // resnet20: the stem, 9 blocks of two 3x3 convolutions, 2 downsampling 1x1 shortcuts.
        #expect(shapes.reduce(0) { $0 + $1.1 } == 1 + 18 + 2)
        let stem = shapes[0].0
        #expect(stem.geometry.channels == 3 && stem.outputChannels == 16 && stem.geometry.height == 32)
        #expect(!stem.needsInputGradient)
        #expect(shapes.dropFirst().allSatisfy { $0.0.needsInputGradient })
        #expect(shapes.allSatisfy { $0.0.batch == 128 })
        let last = shapes.first { $0.0.geometry.channels == 64 && $0.0.outputChannels == 64 }
        #expect(last?.0.geometry.height == 8 && last?.1 == 5)
        // 1x28x28 changes the spatial sizes down the network (inputs of 28, 14 and 7 pixels).
        let small = LayerBenchmark(architecture: .resnet20, channels: 1, height: 28, width: 28, batch: 4, threads: 1).shapes()
        #expect(Set(small.map { $0.0.geometry.height }) == [28, 14, 7])
        #expect(small.contains { $0.0.outputChannels == 64 && $0.0.geometry.channels == 64 && $0.0.geometry.height == 7 })
    }

    @Test func layerResultsAreComplete() {
        let results = LayerBenchmark(architecture: .resnet8, channels: 1, height: 16, width: 16, batch: 16, threads: 1,
                                     repetitions: 1).run(peakGflopsPerCore: 100)
        #expect(results.count == LayerBenchmark(architecture: .resnet8, channels: 1, height: 16, width: 16, batch: 16,
                                                threads: 1).shapes().count)
        for r in results {
            #expect(r.forward_ms > 0 && r.backward_ms > 0 && r.forward_gflops > 0 && r.fraction_of_peak > 0)
        }
    }

    @Test func gemmPeakReportsBothBackends() {
        let results = GemmPeakBenchmark(threads: 1, size: 64, repetitions: 1).run()
        #expect(results.count == 2 && results[1].backend == "openblas")
        #expect(results.allSatisfy { $0.gflops_per_core > 0 })
    }
}
