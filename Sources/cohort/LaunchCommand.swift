import ArgumentParser
import Foundation
import Tensors
import Data
import Runtime

/// `cohort launch`: runs a cohort described by a YAML file.
struct LaunchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "launch",
        abstract: "Run a cohort (peers learning from each other with MCL, optionally guided by a teacher).",
        discussion: """
            The configuration's keys are documented in docs/configuration.md. Writes OUTPUT/summary.json \
            (each peer's and the ensemble's test accuracy), OUTPUT/metrics.jsonl, and per peer \
            OUTPUT/peer-<rank>/metrics.jsonl (every loss term) and OUTPUT/peer-<rank>/checkpoints/.
            """)

    @Option(help: "The cohort's YAML configuration.") var config: String
    @Option(help: "How the peers talk: inproc (all peers in this process).") var transport = "inproc"
    @Option(help: "Override the configuration's output directory.") var out: String?
    @Option(help: "Threads for BLAS and Cohort's loops.") var threads = ProcessInfo.processInfo.activeProcessorCount

    func run() throws {
        guard transport == "inproc" else {
            throw ValidationError("--transport \(transport) is not available yet; use --transport inproc")
        }
        Parallelism.setThreadCount(threads)
        var configuration: CohortConfiguration
        do { configuration = try CohortConfiguration.load(path: config) } catch {
            throw CLIError(message: "\(config): \(error)")
        }
        if let out { configuration.output = out }
        if FileManager.default.fileExists(atPath: configuration.output + "/summary.json") {
            throw CLIError(message: "\(configuration.output) already holds a finished cohort run; choose another output")
        }
        do {
            let summary = try InProcessCohort(configuration: configuration).run()
            for p in summary.peers {
                print(String(format: "peer %d (%@): test top-1 %.2f%%", p.rank, p.model, 100 * p.test_top1))
            }
            print(String(format: "ensemble: test top-1 %.2f%%  (%d steps, %.0f s, %.0f images/s; wrote %@)",
                         100 * summary.ensemble_top1, summary.steps, summary.seconds, summary.images_per_s, configuration.output))
        } catch let error as DataSetError {
            throw CLIError(message: "\(error)")
        } catch let error as ConfigurationError {
            throw CLIError(message: "\(config): \(error)")
        }
    }
}
