import ArgumentParser
import Foundation
import Tensors
import NN
import Data
import Runtime
import Training
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

            An output directory that holds a run is never overwritten: continue an interrupted run with \
            --resume (every process from the cohort's newest checkpoint, with the settings it started with), \
            or pass --fresh to move the old run aside (OUTPUT.old-N) and start over. One launch per output \
            directory at a time.
            """)

    @Option(help: "The cohort's YAML configuration.") var config: String
    @Option(help: "How the peers talk: zmq (one process each) or inproc (all in this process).") var transport = "zmq"
    @Option(help: "Override the configuration's output directory.") var out: String?
    @Option(help: "Cores to use (shared among the processes with zmq).") var threads = ProcessInfo.processInfo.activeProcessorCount
    @Option(help: "Restarts allowed per process after a crash (each resumes from its newest checkpoint).") var maxRestarts = 3
    @Option(help: "Directory with coordinator.key and peer-<rank>.key (cohort keygen), for a secured cohort.") var keys: String?
    @Option(help: ArgumentHelp("Also write each process's output to its own file in this directory, appended to.",
                               discussion: "coordinator.log, peer-<rank>.log and launch.log (zmq); cohort.log (inproc)."),
            completion: .directory)
    var logDir: String?
    @Option(help: ArgumentHelp("Serve Prometheus metrics: the coordinator at http://HOST:PORT/metrics, peer r at PORT+1+r (0: any free ports, logged).",
                               valueName: "port"))
    var metricsPort: Int?
    @Option(help: teacherAheadHelp) var teacherAhead = 2
    @Flag(help: "Continue the run in the output directory from the cohort's newest checkpoint.") var resume = false
    @Flag(help: "Move a run already in the output directory aside (to OUTPUT.old-N) and start a new one.") var fresh = false

    func validate() throws {
        guard ["zmq", "inproc"].contains(transport) else { throw ValidationError("--transport \(transport): zmq or inproc") }
        guard threads >= 1 else { throw ValidationError("--threads must be at least 1") }
        if let metricsPort, !(0...65535).contains(metricsPort) { throw ValidationError("--metrics-port \(metricsPort): a port is 0...65535") }
        if metricsPort != nil && transport == "inproc" {
            throw ValidationError("--metrics-port: each process of a cohort serves its own metrics, and --transport inproc has no such processes; use --transport zmq")
        }
        guard maxRestarts >= 0 else { throw ValidationError("--max-restarts must be at least 0") }
        guard !(resume && fresh) else { throw ValidationError("--resume continues the run in the output directory, --fresh moves it aside: choose one") }
    }

    /// The command that continues this launch (printed when it is interrupted).
    var resumeCommand: String {
        var words = ["cohort", "launch", "--config", config]
        if transport != "zmq" { words += ["--transport", transport] }
        if let out { words += ["--out", out] }
        if let keys { words += ["--keys", keys] }
        return words.map { $0.contains(" ") ? "'\($0)'" : $0 }.joined(separator: " ") + " --resume"
    }

    func run() throws {
        guard teacherAhead >= 0 else { throw CLIError(message: "--teacher-ahead must be 0 (off) or more steps, not \(teacherAhead)") }
        let configuration = try loadConfiguration(config, out: out)
        let output = configuration.output
        // One launch per output directory; then nothing in it is overwritten.
        var lock = try holding { try RunLock(directory: output, role: "launch", what: "cohort launch") }
        switch ExistingRun.inspect(output) {
        case .none:
            break
        case .finished where !fresh:
            throw CLIError(message: "\(output) holds a finished cohort run; choose another output (--out), or pass --fresh to move it aside and start over")
        case .unfinished(let step) where !fresh && !resume:
            let at = step.map { " (checkpoint at step \($0) of \(configuration.epochs) epochs)" } ?? ""
            throw CLIError(message: "\(output) holds an unfinished cohort run\(at); continue it with: \(resumeCommand)\n"
                           + "or pass --fresh to move it aside (to \(output).old-N) and start over")
        default:
            if fresh {
                let moved = try ExistingRun.moveAside(output)
                printError("moved the previous run in \(output) to \(moved)")
            }
        }
        if fresh { lock = try holding { try RunLock(directory: output, role: "launch", what: "cohort launch") } }
        if transport == "inproc" {
            Parallelism.setThreadCount(threads)
            StopSignal.install()
            let locks = try holding { try inProcessLocks(configuration) }
            defer { withExtendedLifetime((lock, locks)) {} }
            let tees = try logDir.map { try teeOutput(into: $0) } ?? []
            defer { for tee in tees.reversed() { tee.finish() } }
            do {
                try reportingErrors(config) {
                    let progress = ProgressReporter()
                    let cohort = try InProcessCohort(configuration: configuration, report: progress.log)
                    cohort.teacherAhead = teacherAhead
                    printSummary(try cohort.run(resume: resume, shouldStop: { StopSignal.current != nil }, progress: progress), output: output)
                }
            } catch let stopped as CohortStopped {
                printError("\(stopped); continue with: \(resumeCommand)")
                throw ExitCode(StopSignal.exitStatus(StopSignal.current ?? SIGINT))
            }
            return
        }
        StopSignal.install()
        var plan = Launcher.Plan(executable: executablePath, configurationPath: config, peerCount: configuration.peers.count,
                                 hasTeacher: configuration.teacher != nil, output: out, threads: threads)
        plan.maxRestarts = maxRestarts
        plan.keys = keys
        plan.resume = resume
        plan.logDirectory = logDir
        plan.metricsPort = metricsPort
        plan.teacherAhead = teacherAhead
        let status: Int32
        do { status = try Launcher(plan: plan).run() } catch let error as LauncherError { throw CLIError(message: "\(error)") }
        withExtendedLifetime(lock) {}
        if let signal = StopSignal.current {
            printError("[launch] stopped by signal \(signal); continue with: \(resumeCommand)")
        }
        if status != 0 { throw ExitCode(status) }
    }

    /// Copies standard error and standard output into DIR/cohort.log (the in-process cohort is one process).
    private func teeOutput(into directory: String) throws -> [OutputTee] {
        let path = directory + "/cohort.log"
        do { try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true) } catch {
            throw CLIError(message: "cannot create the log directory \(directory): \(error.localizedDescription)")
        }
        if !FileManager.default.fileExists(atPath: path) { _ = FileManager.default.createFile(atPath: path, contents: nil) }
        guard let file = FileHandle(forWritingAtPath: path) else { throw CLIError(message: "cannot write the log file \(path)") }
        file.seekToEndOfFile()
        try file.write(contentsOf: Data("--- cohort launch --transport inproc started \(Date().formatted(Date.ISO8601FormatStyle(timeZone: .current))) ---\n".utf8))
        return [try OutputTee(2, into: file), try OutputTee(1, into: file)]
    }

    /// The in-process cohort writes every part of the directory: it holds the coordinator's lock and every peer's.
    private func inProcessLocks(_ configuration: CohortConfiguration) throws -> [RunLock] {
        try [RunLock(directory: configuration.output, role: "coordinator", what: "cohort launch --transport inproc")]
            + configuration.peers.indices.map {
                try RunLock(directory: configuration.output + "/peer-\($0)", role: "peer", what: "cohort launch --transport inproc")
            }
    }
}

/// Runs `body`, turning a directory in use into a one-line error.
func holding<T>(_ body: () throws -> T) throws -> T {
    do { return try body() } catch let held as RunLock.Held { throw CLIError(message: "\(held)") }
}

/// Writes a line to standard error (a closed one is ignored).
func printError(_ text: String) {
    FileDescriptor.writeAll(2, text + "\n")
}
