import ArgumentParser
import Foundation
import NN
import Benchmarks

/// `cohort bench`: times training steps.
struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Time full training steps (forward, backward, SGD) on random data.",
        discussion: "Build with `swift build -c release` for meaningful numbers. Prints the median step time.")

    @Option(help: "Architecture: \(Architecture.allNames).")
    var model = "resnet20"

    @Option(help: "Input size as CxHxW, e.g. 3x32x32 or 1x28x28.")
    var input = "3x32x32"

    @Option(help: "Images per step.")
    var batch = 128

    @Option(help: "Threads for BLAS and Cohort's own loops.")
    var threads = 1

    @Option(help: "Timed steps (after 3 warm-up steps).")
    var steps = 10

    @Flag(help: "Print one JSON line with the keys of torch_bench.py.")
    var json = false

    @Option(help: "Time one distillation loss instead of a training step: crcd, rrd, mcl.")
    var loss: String?

    func validate() throws {
        guard Architecture(name: model) != nil else {
            throw ValidationError("unknown --model \"\(model)\"; choose one of: \(Architecture.allNames)")
        }
        guard parsedInput != nil else {
            throw ValidationError("--input must be CxHxW with positive integers (e.g. 3x32x32), got \"\(input)\"")
        }
        guard batch >= 2 else { throw ValidationError("--batch must be at least 2 (batch norm needs two samples)") }
        guard threads >= 1 else { throw ValidationError("--threads must be at least 1") }
        guard steps >= 1 else { throw ValidationError("--steps must be at least 1") }
    }

    private var parsedInput: (Int, Int, Int)? {
        let parts = input.split(separator: "x").compactMap { Int($0) }
        guard parts.count == 3, parts.allSatisfy({ $0 > 0 }) else { return nil }
        return (parts[0], parts[1], parts[2])
    }

    func run() throws {
        if let loss {
            guard let kind = LossBenchmark.Kind(rawValue: loss) else {
                throw ValidationError("--loss must be one of: \(LossBenchmark.Kind.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            let result = LossBenchmark(kind: kind, batch: batch, threads: threads, steps: steps).run()
            if json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.sortedKeys]
                print(String(decoding: try encoder.encode(result), as: UTF8.self))
            } else {
                print("\(result.loss) (\(result.configuration)), \(result.threads) thread(s): \(result.ms_per_call) ms/call, peak RSS \(result.peak_rss_mb) MB")
            }
            return
        }
        let (c, h, w) = parsedInput!
        let benchmark = TrainStepBenchmark(architecture: Architecture(name: model)!, channels: c, height: h, width: w,
                                           batch: batch, threads: threads, steps: steps)
        let result = benchmark.run()
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            print(String(decoding: try encoder.encode(result), as: UTF8.self))
        } else {
            print("\(result.model) \(result.input) batch \(result.batch), \(result.threads) thread(s): "
                  + "\(result.ms_per_step) ms/step, \(result.images_per_s) images/s, peak RSS \(result.peak_rss_mb) MB")
        }
    }
}
