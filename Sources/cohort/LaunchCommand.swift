import ArgumentParser
import Foundation
import Tensors
import Data
import Runtime
import Cluster

/// `cohort launch`: runs a cohort described by a YAML file on this machine.
struct LaunchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "launch",
        abstract: "Run a cohort (peers learning from each other with MCL, optionally guided by a teacher) on this machine.",
        discussion: """
            With --transport zmq (the default) it starts the coordinator and one process per peer, which talk \
            over ZeroMQ as on a cluster, shares the cores among them and merges their output; Ctrl-C stops \
            them all. With --transport inproc every peer runs in this process. The configuration's keys are \
            in docs/configuration.md. Writes OUTPUT/summary.json, OUTPUT/metrics.jsonl, OUTPUT/stream.jsonl \
            (zmq) and per peer OUTPUT/peer-<rank>/metrics.jsonl and checkpoints/.
            """)

    @Option(help: "The cohort's YAML configuration.") var config: String
    @Option(help: "How the peers talk: zmq (one process each) or inproc (all in this process).") var transport = "zmq"
    @Option(help: "Override the configuration's output directory.") var out: String?
    @Option(help: "Cores to use (shared among the processes with zmq).") var threads = ProcessInfo.processInfo.activeProcessorCount
    @Option(help: "Restarts allowed per process after a crash (each resumes from its newest checkpoint).") var maxRestarts = 3
    @Option(help: "Directory with coordinator.key and peer-<rank>.key (cohort keygen), for a secured cohort.") var keys: String?

    func validate() throws {
        guard ["zmq", "inproc"].contains(transport) else { throw ValidationError("--transport \(transport): zmq or inproc") }
        guard threads >= 1 else { throw ValidationError("--threads must be at least 1") }
        guard maxRestarts >= 0 else { throw ValidationError("--max-restarts must be at least 0") }
    }

    func run() throws {
        let configuration = try loadConfiguration(config, out: out)
        if FileManager.default.fileExists(atPath: configuration.output + "/summary.json") {
            throw CLIError(message: "\(configuration.output) already holds a finished cohort run; choose another output")
        }
        if transport == "inproc" {
            Parallelism.setThreadCount(threads)
            try reportingErrors(config) {
                printSummary(try InProcessCohort(configuration: configuration).run(), output: configuration.output)
            }
            return
        }
        StopSignal.install()
        var plan = Launcher.Plan(executable: executablePath, configurationPath: config, peerCount: configuration.peers.count,
                                 hasTeacher: configuration.teacher != nil, output: out, threads: threads)
        plan.maxRestarts = maxRestarts
        plan.keys = keys
        let status = try Launcher(plan: plan).run()
        if status != 0 { throw ExitCode(status) }
    }
}
