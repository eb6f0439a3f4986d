import ArgumentParser
import Foundation
import Tensors
import Data
import Runtime
import Training
import Cluster
import Wire

/// Loads a cohort configuration, applying an output override; turns its errors into CLI errors.
func loadConfiguration(_ path: String, out: String?) throws -> CohortConfiguration {
    var configuration: CohortConfiguration
    do { configuration = try CohortConfiguration.load(path: path) } catch {
        throw CLIError(message: "\(path): \(error)")
    }
    if let out { configuration.output = out }
    return configuration
}

/// Runs `body`, turning the errors a user can act on into one clear line and a non-zero exit; a process
/// stopped by a signal exits with 128 + the signal's number.
func reportingErrors(_ config: String, _ body: () throws -> Void) throws {
    do { try body() } catch let error as DataSetError {
        throw CLIError(message: "\(error)")
    } catch let error as ConfigurationError {
        throw CLIError(message: "\(config): \(error)")
    } catch CoordinatorError.stopped(let signal), PeerError.signal(let signal) {
        throw ExitCode(StopSignal.exitStatus(signal))
    } catch let error as CoordinatorError {
        throw CLIError(message: "\(error)")
    } catch let error as PeerError {
        throw CLIError(message: "\(error)")
    } catch let error as SecurityError {
        throw CLIError(message: "\(error)")
    } catch let error as DivergenceError {
        throw CLIError(message: "\(error)")
    } catch let error as ResumeError {
        throw CLIError(message: "\(error)")
    } catch let error as RunLock.Held {
        throw CLIError(message: "\(error)")
    } catch let error as MetricsEndpointError {
        throw CLIError(message: "\(error)")
    }
}

/// The `--metrics-port` option's help, shared by the commands that serve metrics.
let metricsPortHelp = ArgumentHelp("Serve Prometheus metrics at http://HOST:PORT/metrics (0: any free port, logged).",
                                   valueName: "port")

/// `cohort coordinator`: runs a distributed cohort's coordinator.
struct CoordinatorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "coordinator",
        abstract: "Run the coordinator of a distributed cohort (and its teacher).",
        discussion: """
            Binds network.coordinator (peers connect there) and network.stream (the log stream), waits for \
            every configured peer (cohort peer --rank R --coordinator ENDPOINT), drives the training step by \
            step and writes OUTPUT/summary.json, OUTPUT/metrics.jsonl and OUTPUT/stream.jsonl. The peers \
            write OUTPUT/peer-<rank>/ on their own hosts.
            """)

    @Option(help: "The cohort's YAML configuration (the same file on every host).") var config: String
    @Option(help: "Override the configuration's output directory.") var out: String?
    @Option(help: "Override network.coordinator, e.g. tcp://*:5570 to accept peers from other hosts.") var bind: String?
    @Option(help: "Override network.stream.") var stream: String?
    @Option(help: "Threads for the teacher.") var threads = ProcessInfo.processInfo.activeProcessorCount
    @Option(help: "Write the bound endpoints (JSON) to this file once listening.") var readyFile: String?
    @Option(help: "The coordinator's secret key file (cohort keygen), when the configuration has security keys.") var key: String?
    @Option(help: metricsPortHelp) var metricsPort: Int?
    @Option(help: teacherAheadHelp) var teacherAhead = 2
    @Flag(help: "Continue from the newest cohort checkpoint in the output directory, and from where the peers are.") var resume = false
    @Flag(help: "Allow binding beyond loopback without CURVE keys (anyone who can reach the ports can join).") var insecure = false

    func run() throws {
        var configuration = try loadConfiguration(config, out: out)
        if let bind { configuration.network.coordinator = bind }
        if let stream { configuration.network.stream = stream }
        if FileManager.default.fileExists(atPath: configuration.output + "/summary.json") {
            throw CLIError(message: "\(configuration.output) already holds a finished cohort run; choose another output")
        }
        guard LauncherChild.bindToLauncher() else { throw ExitCode(StopSignal.exitStatus(SIGTERM)) }
        let lock = try holding { try RunLock(directory: configuration.output, role: "coordinator", what: "cohort coordinator") }
        defer { withExtendedLifetime(lock) {} }
        if !resume, case .unfinished(let step) = ExistingRun.inspectCoordinator(configuration.output) {
            throw CLIError(message: "\(configuration.output) holds a cohort run's coordinator state\(step.map { " (step \($0))" } ?? ""); "
                           + "continue it with --resume, or choose another output")
        }
        Parallelism.setThreadCount(threads)
        StopSignal.install()
        try reportingErrors(config) {
            guard teacherAhead >= 0 else { throw CLIError(message: "--teacher-ahead must be 0 (off) or more steps, not \(teacherAhead)") }
            let coordinator = try Coordinator(configuration: configuration, keyPath: key, insecure: insecure, metricsPort: metricsPort,
                                              teacherAhead: teacherAhead)
            if let readyFile { try coordinator.writeEndpoints(to: readyFile) }
            let summary = try coordinator.run(resume: resume)
            printSummary(summary, output: configuration.output)
        }
    }
}

/// The help of `--teacher-ahead` (coordinator and launch).
let teacherAheadHelp = ArgumentHelp("Steps the teacher's outputs are computed ahead of the cohort, on a thread of their own (0: in line, between steps).",
                                    valueName: "steps")

/// `cohort peer`: runs one peer of a distributed cohort.
struct PeerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "peer",
        abstract: "Run one peer of a distributed cohort: train its network, exchanging outputs through the coordinator or with the other peers.",
        discussion: """
            Every host needs the data set and the same configuration file. Writes OUTPUT/peer-<rank>/ \
            (metrics.jsonl, checkpoints/) on this host.
            """)

    @Option(help: "The cohort's YAML configuration (the same file on every host).") var config: String
    @Option(help: "This peer's rank: its index in the configuration's peers list.") var rank: Int
    @Option(help: "The coordinator's endpoint, e.g. tcp://10.0.0.1:5570 (default: network.coordinator).") var coordinator: String?
    @Option(help: "Override the configuration's output directory.") var out: String?
    @Option(help: "Threads for BLAS and Cohort's loops.") var threads = ProcessInfo.processInfo.activeProcessorCount
    @Option(help: "This peer's secret key file (cohort keygen), when the configuration has security keys.") var key: String?
    @Option(help: metricsPortHelp) var metricsPort: Int?
    @Flag(help: "Start from this peer's newest valid checkpoint and rejoin the cohort at its next step.") var resume = false
    @Option(help: ArgumentHelp("""
        With network.exchange: mesh, where to bind the socket the other peers send their outputs to, e.g. tcp://10.0.0.2:5580         (default: a free port; on loopback when the coordinator is on this host, else on every interface, advertised by host name).
        """, valueName: "endpoint")) var meshEndpoint: String?

    func run() throws {
        let configuration = try loadConfiguration(config, out: out)
        if let meshEndpoint {
            guard configuration.network.exchange == .mesh else {
                throw CLIError(message: "--mesh-endpoint: \(config) has network.exchange: \(configuration.network.exchange.rawValue); it takes effect with mesh")
            }
            guard ["tcp://", "ipc://"].contains(where: { meshEndpoint.hasPrefix($0) }), meshEndpoint.contains(":") else {
                throw CLIError(message: "--mesh-endpoint: \"\(meshEndpoint)\" is not a ZeroMQ endpoint; give one such as tcp://10.0.0.2:5580, tcp://*:* or ipc:///tmp/peer-0")
            }
        }
        guard configuration.peers.indices.contains(rank) else {
            throw CLIError(message: "--rank \(rank): \(config) has \(configuration.peers.count) peer(s), ranks 0...\(configuration.peers.count - 1)")
        }
        let endpoint = coordinator ?? configuration.network.coordinator
        guard !endpoint.contains("://*:"), !endpoint.contains("://0.0.0.0:") else {
            throw CLIError(message: "--coordinator: give the coordinator's address, e.g. tcp://HOST:PORT (network.coordinator is \(endpoint))")
        }
        guard LauncherChild.bindToLauncher() else { throw ExitCode(StopSignal.exitStatus(SIGTERM)) }
        let directory = configuration.output + "/peer-\(rank)"
        let lock = try holding { try RunLock(directory: directory, role: "peer", what: "cohort peer --rank \(rank)") }
        defer { withExtendedLifetime(lock) {} }
        if !resume, case .unfinished(let step) = ExistingRun.inspectPeer(configuration.output, rank: rank) {
            throw CLIError(message: "\(directory) holds this peer's checkpoints\(step.map { " (step \($0))" } ?? ""); "
                           + "continue with --resume, or choose another output")
        }
        Parallelism.setThreadCount(threads)
        StopSignal.install()
        try reportingErrors(config) {
            try PeerNode(configuration: configuration, rank: rank, coordinator: endpoint, resume: resume, keyPath: key, metricsPort: metricsPort,
                         meshBind: meshEndpoint).run()
        }
    }
}

/// `cohort monitor`: shows a coordinator's log stream live.
struct MonitorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "monitor",
        abstract: "Watch a running cohort: its peers' log records, or a status table with one row per peer.",
        discussion: """
            ENDPOINT is the coordinator's network.stream (cohort launch prints it). Exits when the run ends \
            (status 0 if it finished, 1 if it failed).

            Examples:
              cohort monitor tcp://127.0.0.1:5571
              cohort monitor tcp://10.0.0.1:5571 --peer 0 --peer 2 --level warning
              cohort monitor tcp://127.0.0.1:5571 --status
              cohort monitor tcp://127.0.0.1:5571 --json | jq 'select(.topic == "status")'
            """)

    @Argument(help: "The log stream's endpoint.") var endpoint: String
    @Option(name: .customLong("peer"), help: "Show only this peer (repeatable).") var peers: [Int] = []
    @Flag(help: "Hide the coordinator's own records.") var noCoordinator = false
    @Option(help: "The lowest level shown: trace, debug, info, notice, warning, error, critical.") var level = "info"
    @Flag(help: "One JSON object per event (records and statuses), for machines.") var json = false
    @Flag(help: "A status table with one row per peer, redrawn every --interval seconds.") var status = false
    @Option(help: "Seconds between redraws of --status.") var interval: Double = 1
    @Option(help: "This monitor's secret key file (cohort keygen), for a secured stream.") var key: String?
    @Option(help: "The coordinator's public key file, for a secured stream.") var serverKey: String?

    func validate() throws {
        guard LogRecord.levels.contains(level) else {
            throw ValidationError("--level \(level): one of \(LogRecord.levels.joined(separator: ", "))")
        }
        guard interval > 0 else { throw ValidationError("--interval must be positive") }
        guard ["tcp://", "ipc://"].contains(where: { endpoint.hasPrefix($0) }), endpoint.contains(":") else {
            let guess = endpoint.contains("://") ? "tcp://" + endpoint.drop { $0 != "/" }.drop { $0 == "/" } : "tcp://" + endpoint
            throw ValidationError("ENDPOINT \"\(endpoint)\" is not a ZeroMQ endpoint; give the log stream's address, e.g. \(guess.contains(":") ? guess : "tcp://127.0.0.1:5571") (cohort launch prints it)")
        }
    }

    func run() throws {
        guard (key == nil) == (serverKey == nil) else { throw ValidationError("--key and --server-key go together") }
        let subscriber: StreamSubscriber
        do {
            subscriber = try StreamSubscriber(endpoint: endpoint, keys: try key.map { (try KeyFile.readPair($0), try KeyFile.readKey(serverKey!)) })
        } catch let error as SecurityError {
            throw CLIError(message: "\(error)")
        }
        let filter = StreamFilter(ranks: peers.isEmpty ? nil : Set(peers), coordinator: !noCoordinator, minimumLevel: level)
        var table = StatusTable()
        var lastDraw = Date.distantPast
        let interactive = isatty(STDOUT_FILENO) == 1
        var recent: [String] = []
        StopSignal.install()
        FileHandle.standardError.write(Data("cohort monitor: following \(endpoint); waiting for its first event (Ctrl-C to stop)\n".utf8))
        let started = Date()
        var heardAnything = false
        var nextSilenceNote = started + 5
        while StopSignal.current == nil {
            let event = try subscriber.next(milliseconds: 200)
            if event != nil { heardAnything = true }
            if !heardAnything, Date() >= nextSilenceNote {
                // Say why the screen may stay empty, once and then every minute.
                let waited = Int(Date().timeIntervalSince(started))
                let secured = key == nil
                    ? "A secured cohort's stream (security in its configuration) needs --key (this monitor's key) and --server-key (the coordinator's public key)."
                    : "Check that --server-key is the coordinator's public key and that this monitor's public key is in security.monitor_keys."
                FileHandle.standardError.write(Data(("cohort monitor: nothing from \(endpoint) for \(waited) s. Is a cohort running there? "
                    + "`cohort launch` prints its log stream's endpoint (\"log stream at ...\"); a coordinator binds network.stream. \(secured)\n").utf8))
                nextSilenceNote = Date() + 60
            }
            if let event, filter.accepts(event) {
                if json {
                    write(StreamPublisher.jsonLine(event.frames()) + "\n")
                } else if status {
                    table.update(event)
                    if case .log(let r) = event, LogRecord.severity(r.level) >= LogRecord.severity("warning") {
                        recent = Array((recent + [ConsoleSink.format(r)]).suffix(5))
                    }
                } else if case .log(let r) = event {
                    write(ConsoleSink.format(r) + "\n")
                }
            }
            if status, Date().timeIntervalSince(lastDraw) >= interval || event.map({ if case .end = $0 { true } else { false } }) == true {
                lastDraw = Date()
                write((interactive ? "\u{1B}[H\u{1B}[2J" : "") + table.render()
                      + (recent.isEmpty ? "" : "\n\n" + recent.joined(separator: "\n")) + (interactive ? "\n" : "\n\n"))
            }
            if case .end(let end)? = event {
                if !json { write(end.ok ? "run finished\n" : "run failed: \(end.reason)\n") }
                throw ExitCode(end.ok ? 0 : 1)
            }
        }
    }
}

/// Writes `text` to standard output at once (no buffering: the monitor's output is read live).
private func write(_ text: String) {
    FileHandle.standardOutput.write(Data(text.utf8))
}

func printSummary(_ summary: CohortSummary, output: String) {
    for p in summary.peers {
        print(String(format: "peer %d (%@): test top-1 %.2f%%", p.rank, p.model, 100 * p.test_top1))
    }
    print(String(format: "ensemble: test top-1 %.2f%%  (%d steps, %.0f s, %.0f images/s; wrote %@)",
                 100 * summary.ensemble_top1, summary.steps, summary.seconds, summary.images_per_s, output))
}

/// The running `cohort` executable's path.
var executablePath: String {
    if let path = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") { return path }
    return Bundle.main.executablePath ?? CommandLine.arguments[0]
}

/// `cohort keygen`: writes CURVE key pairs.
struct KeygenCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keygen",
        abstract: "Write CURVE key pairs (NAME.key, secret, owner-only; NAME.pub, public) for a secured cohort.",
        discussion: """
            Example, for a coordinator, three peers and a monitor:
              cohort keygen --out keys coordinator peer-0 peer-1 peer-2 monitor
            then in the configuration:
              security: {coordinator_key: keys/coordinator.pub, peer_keys: [keys/peer-0.pub, keys/peer-1.pub, keys/peer-2.pub],
                         monitor_keys: [keys/monitor.pub]}
            and give each process its secret key: --key keys/peer-1.key. Copy only the .pub files to other hosts.
            """)

    @Option(help: "Directory for the key files.") var out = "keys"
    @Argument(help: "Names of the key pairs.") var names: [String]

    func validate() throws {
        guard !names.isEmpty else { throw ValidationError("name at least one key pair, e.g. coordinator peer-0 peer-1") }
        for name in names where name.isEmpty || name.contains("/") { throw ValidationError("\(name): a key name is a plain file name") }
    }

    func run() throws {
        for name in names {
            do {
                let pair = try KeyFile.generate(name: name, in: out)
                print("\(out)/\(name).key  \(out)/\(name).pub  \(pair.publicKey)")
            } catch let error as SecurityError {
                throw CLIError(message: "\(error)")
            }
        }
    }
}

/// `cohort verify`: checks that every checkpoint under a directory reads back whole.
struct VerifyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Check every checkpoint under a run directory: checksums, completeness. Exits 1 if any is corrupt.")

    @Argument(help: "Run directories (or any directories holding checkpoints).") var directories: [String]

    func run() throws {
        var checked = 0, bad = 0
        for directory in directories {
            for (path, problem) in verifyCheckpoints(under: directory) {
                checked += 1
                if let problem { bad += 1; print("CORRUPT \(path): \(problem)") }
            }
        }
        if checked == 0 {
            throw CLIError(message: "no checkpoint files under \(directories.joined(separator: ", ")) (a run directory holds checkpoints/*.safetensors, peer-<rank>/checkpoints/*.safetensors or coordinator/state-*.json)")
        }
        print("\(checked) checkpoint file(s) checked, \(bad) corrupt")
        if bad > 0 { throw ExitCode(1) }
    }
}
