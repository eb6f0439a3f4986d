import Foundation
import Tensors
import NN

/// Times whole training steps — forward, cross-entropy, backward, SGD — on random data, the same work as
/// `docs/benchmarks/torch_bench.py` does for PyTorch.
public struct TrainStepBenchmark: Sendable {
    public var architecture: Architecture
    public var channels: Int
    public var height: Int
    public var width: Int
    public var batch: Int
    public var threads: Int
    public var steps: Int
    public var warmupSteps = 3
    public var classes = 10

    public init(architecture: Architecture, channels: Int, height: Int, width: Int, batch: Int, threads: Int, steps: Int) {
        self.architecture = architecture
        self.channels = channels; self.height = height; self.width = width
        self.batch = batch; self.threads = threads; self.steps = steps
    }

    /// The measurements, with the keys of `torch_bench.py`.
    public struct Result: Codable, Sendable {
        public var benchmark = "step"
        public let framework: String
        public let model: String
        public let input: String
        public let batch: Int
        public let threads: Int
        public let ms_per_step: Double
        public let images_per_s: Double
        public let peak_rss_mb: Double
        /// The most tensor storage made during the timed steps and alive at once, on the calling thread: the
        /// activations the graph keeps, the gradients, the optimizer's new buffers (Cohort only; not the
        /// parameters and images made before, the worker threads' scratch, nor the allocator's and libraries'
        /// share of the RSS).
        public var peak_tensor_mb: Double?
        /// Fresh pages the storage pool mapped per timed step, in MiB (Cohort only): memory the step could not
        /// take from buffers freed earlier (each fresh page costs a page fault and zeroing).
        public var fresh_mb_per_step: Double?
        public let final_loss: Double
    }

    /// Runs the benchmark. Sets the process's thread count to `threads`.
    public func run() -> Result {
        Parallelism.setThreadCount(threads)
        let net = architecture.make(inputChannels: channels, classCount: classes, seed: 0)
        net.train()
        let optimizer = SGD(parameters: net.namedParameters(), learningRate: 0.05, momentum: 0.9, weightDecay: 5e-4,
                            nesterov: true)
        var generator = SeededGenerator(seed: 1)
        let images = Tensor.randomNormal([batch, channels, height, width], using: &generator)
        let labels = (0..<batch).map { _ in Int(generator.next() % UInt64(classes)) }
        var lastLoss: Float = 0
        func step() {
            optimizer.zeroGrad()
            let loss = net(images).crossEntropy(labels: labels)
            loss.backward()
            optimizer.step()
            lastLoss = loss.item
        }
        let trace = MemoryTrace()
        let (median, freshBytes) = MemoryTrace.$current.withValue(trace) { () -> (Double, Int) in
            for _ in 0..<warmupSteps { step() }
            let before = StoragePool.shared.statistics.freshBytes
            let median = Timing.medianMilliseconds(warmup: 0, repetitions: steps, step)
            return (median, StoragePool.shared.statistics.freshBytes - before)
        }
        return Result(framework: "cohort", model: architecture.rawValue, input: "\(channels)x\(height)x\(width)",
                      batch: batch, threads: threads, ms_per_step: (median * 100).rounded() / 100,
                      images_per_s: median > 0 ? (Double(batch) / median * 1000 * 10).rounded() / 10 : 0,
                      peak_rss_mb: (ProcessInfo.peakResidentMegabytes * 10).rounded() / 10,
                      peak_tensor_mb: (Double(trace.peakBytes) / 1_048_576 * 10).rounded() / 10,
                      fresh_mb_per_step: steps > 0 ? (Double(freshBytes) / 1_048_576 / Double(steps) * 10).rounded() / 10 : 0,
                      final_loss: Double(lastLoss))
    }
}

extension ProcessInfo {
    /// The process's peak resident set size in MiB (`getrusage`'s `ru_maxrss`).
    public static var peakResidentMegabytes: Double {
        var usage = rusage()
        #if os(Linux)
        getrusage(RUSAGE_SELF.rawValue, &usage)
        #else
        getrusage(RUSAGE_SELF, &usage)
        #endif
        #if os(Linux)
        return Double(usage.ru_maxrss) / 1024
        #else
        return Double(usage.ru_maxrss) / 1024 / 1024
        #endif
    }
}
