import ArgumentParser
import Foundation
import NN
import Tensors
import Benchmarks
import Cluster
import Runtime

/// `cohort bench`: times training steps, convolution layers, the sgemm peak, the losses and the exchange.
struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Time training steps, convolution layers, the losses and the cohort exchange.",
        discussion: """
            Build with `swift build -c release` for meaningful numbers. Without a selection, times full training \
            steps (forward, cross-entropy, backward, SGD) of --model on random data. Each figure is a median over \
            the timed repetitions. docs/benchmarks.md has the results and the side-by-side script for PyTorch.

            Examples:
              cohort bench --model resnet32x4 --threads 2
              cohort bench --layers --model resnet20 --input 1x28x28
              cohort bench --loss crcd
              cohort bench --all --json > bench.jsonl
            """)

    @Option(help: "Architecture: \(Architecture.allNames).")
    var model = "resnet20"

    @Option(help: "Input size as CxHxW, e.g. 3x32x32 or 1x28x28.")
    var input = "3x32x32"

    @Option(help: "Images per step.")
    var batch = 128

    @Option(help: "Threads for Cohort's loops (each runs single-threaded BLAS on its share).")
    var threads = 1

    @Option(help: "Timed repetitions (after warm-up).")
    var steps = 10

    @Flag(help: "Print one JSON object per line (a training step's keys are those of torch_bench.py).")
    var json = false

    @Option(help: "Time one distillation loss at the official sizes: \(LossBenchmark.Kind.allCases.map(\.rawValue).joined(separator: ", ")).")
    var loss: String?

    @Flag(help: "Time every distinct convolution of --model at --input: GFLOP/s against the sgemm peak.")
    var layers = false

    @Flag(help: "Measure the sgemm peak (a 1024^3 product per thread), Cohort's kernel and OpenBLAS.")
    var gemm = false

    @Flag(help: "Time the cohort exchange round trip over loopback (outputs to the coordinator, others back).")
    var exchange = false

    @Option(help: "Peers in the exchange benchmark.")
    var peers = 4

    @Option(help: "Classes of the exchange benchmark's logits (10 for Fashion-MNIST, 100 for CIFAR-100).")
    var classes = 10

    @Option(help: ArgumentHelp("Run only the exchange benchmark's coordinator side, bound at ENDPOINT (the peers run with --exchange-connect).",
                               valueName: "endpoint"))
    var exchangeBind: String?

    @Option(help: ArgumentHelp("Run only the exchange benchmark's peers, connecting to ENDPOINT.", valueName: "endpoint"))
    var exchangeConnect: String?

    @Option(help: ArgumentHelp("How the exchange benchmark's outputs travel: coordinator, or mesh (peer to peer).", valueName: "mode"))
    var exchangeMode: String = "coordinator"

    @Option(help: ArgumentHelp("With --exchange-connect, run only this peer (repeatable); one peer per process puts each behind its own link.",
                               valueName: "rank"))
    var exchangeRank: [Int] = []

    @Option(help: ArgumentHelp("Mesh mode: where this process's synthetic peers bind their data sockets.", valueName: "endpoint"))
    var meshEndpoint: String = "tcp://127.0.0.1:*"

    @Flag(help: "Everything: the step, the sgemm peak, the layers, every loss and the exchange.")
    var all = false

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
        guard peers >= 2 else { throw ValidationError("--peers must be at least 2") }
        if let loss, LossBenchmark.Kind(rawValue: loss) == nil {
            throw ValidationError("--loss must be one of: \(LossBenchmark.Kind.allCases.map(\.rawValue).joined(separator: ", ")), got \"\(loss)\"")
        }
    }

    private var parsedInput: (Int, Int, Int)? {
        let parts = input.split(separator: "x").compactMap { Int($0) }
        guard parts.count == 3, parts.allSatisfy({ $0 > 0 }) else { return nil }
        return (parts[0], parts[1], parts[2])
    }

    func run() throws {
        let (c, h, w) = parsedInput!
        let architecture = Architecture(name: model)!
        let exchange = exchange || exchangeBind != nil || exchangeConnect != nil
        let selected = loss != nil || layers || gemm || exchange
        if all || !selected {
            let result = TrainStepBenchmark(architecture: architecture, channels: c, height: h, width: w,
                                            batch: batch, threads: threads, steps: steps).run()
            try emit(result, "\(result.model) \(result.input) batch \(result.batch), \(result.threads) thread(s): "
                     + "\(result.ms_per_step) ms/step, \(result.images_per_s) images/s, peak RSS \(result.peak_rss_mb) MB, peak tensors \(result.peak_tensor_mb ?? 0) MB, fresh pages \(result.fresh_mb_per_step ?? 0) MB/step")
        }
        var peak: Double?
        if all || gemm || layers {
            let results = GemmPeakBenchmark(threads: threads).run()
            peak = results[0].gflops_per_core
            for r in results {
                try emit(r, "sgemm \(r.size)^3 (\(r.backend)), \(r.threads) thread(s): \(r.gflops_per_core) GFLOP/s per core")
            }
        }
        if all || layers {
            if !json {
                print("layer (Cin->Cout kernel /stride @input)   count  fwd ms  bwd ms  fwd GFLOP/s  bwd GFLOP/s  of peak")
            }
            let results = LayerBenchmark(architecture: architecture, channels: c, height: h, width: w, batch: batch,
                                         threads: threads, repetitions: steps).run(peakGflopsPerCore: peak!)
            for r in results {
                let line = r.layer.padding(toLength: 40, withPad: " ", startingAt: 0)
                    + String(format: "%6d %7.2f %7.2f %12.1f %12.1f %8.0f%%", r.count, r.forward_ms, r.backward_ms,
                             r.forward_gflops, r.backward_gflops, r.fraction_of_peak * 100)
                try emit(r, line)
            }
        }
        let kinds: [LossBenchmark.Kind] = all ? LossBenchmark.Kind.allCases : loss.flatMap(LossBenchmark.Kind.init).map { [$0] } ?? []
        for kind in kinds {
            let r = LossBenchmark(kind: kind, batch: batch, threads: threads, steps: steps).run()
            try emit(r, "\(r.loss) (\(r.configuration)), \(r.threads) thread(s): \(r.ms_per_call) ms/call, peak RSS \(r.peak_rss_mb) MB")
        }
        if all || exchange {
            let role: ExchangeBenchmark.Role = exchangeBind.map { .coordinator(bind: $0) } ?? exchangeConnect.map { .peers(connect: $0) } ?? .both
            guard let mode = CohortConfiguration.NetworkSettings.ExchangeMode(rawValue: exchangeMode) else {
                throw CLIError(message: "--exchange-mode: \(exchangeMode) is not one of coordinator, mesh")
            }
            if let bad = exchangeRank.first(where: { !(0..<peers).contains($0) }) {
                throw CLIError(message: "--exchange-rank \(bad): the benchmark has --peers \(peers), ranks 0...\(peers - 1)")
            }
            if !exchangeRank.isEmpty && exchangeConnect == nil { throw CLIError(message: "--exchange-rank goes with --exchange-connect") }
            let r = try ExchangeBenchmark(peers: peers, batch: batch, classes: classes, rounds: Swift.max(steps * 20, 100), role: role,
                                          mode: mode, ranks: exchangeRank.isEmpty ? nil : exchangeRank, meshBind: meshEndpoint).run()
            if exchangeBind != nil {
                try emit(r, "exchange (\(r.mode)), coordinator's side: served \(r.rounds) rounds of \(r.peers) peers, \(r.coordinator_bytes_per_step) B per step")
                return
            }
            try emit(r, "exchange (\(r.mode)), \(r.peers) peers, batch \(r.batch) (outputs \(r.outputs_bytes) B, others \(r.others_bytes) B): "
                     + "round trip median \(r.median_ms) ms, mean \(r.mean_ms) ms, p90 \(r.p90_ms) ms; "
                     + "coordinator \(r.coordinator_bytes_per_step) B per step, busiest peer link \(r.peer_link_bytes_per_step) B "
                     + "(\(r.model_ms_at_1gbps) ms at 1 Gb/s)")
        }
    }

    private func emit<T: Encodable>(_ result: T, _ line: String) throws {
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            print(String(decoding: try encoder.encode(result), as: UTF8.self))
        } else {
            print(line)
        }
    }
}
