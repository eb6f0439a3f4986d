import Foundation
import CBLAS
import Tensors
import NN

/// The machine's single-precision matrix-product rate: a 1024^3 product per thread, all threads at once,
/// through Cohort's kernel (`Gemm`) and through OpenBLAS directly. This is the ceiling the convolution
/// layers are measured against.
public struct GemmPeakBenchmark: Sendable {
    public var threads: Int
    public var size: Int
    public var repetitions: Int

    public init(threads: Int = 1, size: Int = 1024, repetitions: Int = 5) {
        self.threads = threads; self.size = size; self.repetitions = repetitions
    }

    public struct Result: Codable, Sendable {
        public let benchmark: String
        public let backend: String
        public let threads: Int
        public let size: Int
        /// GFLOP/s of one core (each thread runs its own product).
        public let gflops_per_core: Double
    }

    public func run() -> [Result] {
        Parallelism.setThreadCount(threads)
        let n = size, t = threads
        var g = SeededGenerator(seed: 3)
        let a = Tensor.randomNormal([t, n * n], using: &g), b = Tensor.randomNormal([t, n * n], using: &g)
        let c = Tensor.zeros([t, n * n])
        let (pa, pb, pc) = (a.data, b.data, c.data)
        let shares = (0..<t).map { $0..<($0 + 1) }
        func measure(_ product: @escaping (Int) -> Void) -> Double {
            let ms = Timing.medianMilliseconds(warmup: 1, repetitions: repetitions) {
                Parallelism.run(shares) { index, _ in product(index) }
            }
            return ((2 * Double(n) * Double(n) * Double(n)) / (ms / 1000) / 1e9 * 10).rounded() / 10
        }
        let own = measure { i in
            Gemm.multiply(pa + i * n * n, pb + i * n * n, into: pc + i * n * n, m: n, n: n, k: n)
        }
        let blas = measure { i in
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(n), Int32(n), Int32(n), 1,
                        pa + i * n * n, Int32(n), pb + i * n * n, Int32(n), 0, pc + i * n * n, Int32(n))
        }
        withExtendedLifetime((a, b, c)) {}
        return [Result(benchmark: "gemm", backend: ["openblas", "cohort-avx2", "cohort-avx512"][Int(Gemm.path.rawValue)], threads: t, size: n,
                       gflops_per_core: own),
                Result(benchmark: "gemm", backend: "openblas", threads: t, size: n, gflops_per_core: blas)]
    }
}

/// Every distinct convolution of a model, forward and backward, timed on its own at the training batch:
/// GFLOP/s against the sgemm peak, and the layer's share of the convolution time of a step.
public struct LayerBenchmark: Sendable {
    public var architecture: Architecture
    public var channels: Int
    public var height: Int
    public var width: Int
    public var batch: Int
    public var threads: Int
    public var repetitions: Int

    public init(architecture: Architecture, channels: Int, height: Int, width: Int, batch: Int, threads: Int,
                repetitions: Int = 5) {
        self.architecture = architecture; self.channels = channels; self.height = height; self.width = width
        self.batch = batch; self.threads = threads; self.repetitions = repetitions
    }

    public struct Result: Codable, Sendable {
        public let benchmark: String
        public let model: String
        /// `Cin->Cout kxk /stride @HxW`.
        public let layer: String
        /// How many convolutions of the model have this shape.
        public let count: Int
        public let threads: Int
        public let forward_ms: Double
        public let backward_ms: Double
        public let forward_gflops: Double
        public let backward_gflops: Double
        /// Achieved rate over the sgemm peak of the same threads, forward and backward together.
        public let fraction_of_peak: Double
    }

    /// The model's distinct convolution shapes with their counts, in order of first use.
    public func shapes() -> [(ConvolutionKernel, Int)] {
        let net = architecture.make(inputChannels: channels, classCount: 10, seed: 0)
        net.train()
        let trace = ConvolutionTrace()
        var g = SeededGenerator(seed: 1)
        let images = Tensor.randomNormal([2, channels, height, width], using: &g)
        ConvolutionTrace.$current.withValue(trace) { _ = net(images).crossEntropy(labels: [0, 1]) }
        var order: [ConvolutionKernel] = [], counts: [ConvolutionKernel: Int] = [:]
        for k in trace.recorded {
            let kernel = ConvolutionKernel(batch: batch, outputChannels: k.outputChannels, geometry: k.geometry,
                                           needsInputGradient: k.needsInputGradient)
            if counts[kernel] == nil { order.append(kernel) }
            counts[kernel, default: 0] += 1
        }
        return order.map { ($0, counts[$0]!) }
    }

    public func run(peakGflopsPerCore: Double) -> [Result] {
        Parallelism.setThreadCount(threads)
        var g = SeededGenerator(seed: 2)
        return shapes().map { kernel, count in
            let x = Tensor.randomNormal([kernel.inputCount], using: &g)
            let w = Tensor.randomNormal([kernel.weightCount], using: &g)
            let y = Tensor(uninitializedShape: [kernel.outputCount])
            let dy = Tensor.randomNormal([kernel.outputCount], using: &g)
            let dx = Tensor(uninitializedShape: [kernel.inputCount]), dw = Tensor(uninitializedShape: [kernel.weightCount])
            let forward = Timing.medianMilliseconds(warmup: 1, repetitions: repetitions) {
                kernel.forward(input: x.data, weight: w.data, output: y.data)
            }
            let backward = Timing.medianMilliseconds(warmup: 1, repetitions: repetitions) {
                kernel.backward(input: x.data, weight: w.data, outputGradient: dy.data, inputGradient: dx.data, weightGradient: dw.data)
            }
            withExtendedLifetime((x, w, y, dy, dx, dw)) {}
            let gf = { (flops: Int, ms: Double) in (Double(flops) / (ms / 1000) / 1e9 * 100).rounded() / 100 }
            let geometry = kernel.geometry
            let name = "\(geometry.channels)->\(kernel.outputChannels) \(geometry.kernelHeight)x\(geometry.kernelWidth)"
                + " /\(geometry.strideHeight) @\(geometry.height)x\(geometry.width)"
            let total = Double(kernel.forwardFlops + kernel.backwardFlops) / ((forward + backward) / 1000) / 1e9
            return Result(benchmark: "layer", model: architecture.rawValue, layer: name, count: count, threads: threads,
                          forward_ms: (forward * 1000).rounded() / 1000, backward_ms: (backward * 1000).rounded() / 1000,
                          forward_gflops: gf(kernel.forwardFlops, forward), backward_gflops: gf(kernel.backwardFlops, backward),
                          fraction_of_peak: (total / (peakGflopsPerCore * Double(threads)) * 100).rounded() / 100)
        }
    }
}
