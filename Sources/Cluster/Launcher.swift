import Foundation
import Synchronization
import Glibc
import NN

/// Single-machine multi-process mode (`cohort launch`): starts the coordinator and one process per
/// peer, shares the cores among them, prefixes and merges their output (and with a log directory writes
/// each process's own file), stops them all on SIGINT or SIGTERM, and fails when any of them fails.
///
/// The merged output is standard error; what a process prints on standard output (the coordinator's
/// result table) is held back and printed on standard output once every process has ended, so the
/// results come last and can be redirected on their own.
public final class Launcher {
    /// What to start.
    public struct Plan: Sendable {
        /// The `cohort` executable.
        public var executable: String
        public var configurationPath: String
        public var peerCount: Int
        public var hasTeacher: Bool
        /// Overrides the configuration's output directory, when set.
        public var output: String?
        /// Cores to share among the processes.
        public var threads: Int
        /// Seconds to wait for the coordinator to bind its endpoints.
        public var startTimeout: Double = 600
        /// How often each process may be restarted after it crashed (with `--resume`).
        public var maxRestarts = 3
        /// A directory with `coordinator.key` and `peer-<rank>.key` (cohort keygen), for a secured cohort.
        public var keys: String?
        /// Start every process with `--resume` (continue the run in the output directory).
        public var resume = false
        /// Where to write one log file per process (`coordinator.log`, `peer-<rank>.log`, `launch.log`),
        /// appended to across restarts and resumes.
        public var logDirectory: String?
        /// Serve Prometheus metrics: the coordinator on this port, peer r on this port + 1 + r (0: each any free port).
        public var metricsPort: Int?
        /// Steps the coordinator computes the teacher's outputs ahead (`cohort coordinator --teacher-ahead`).
        public var teacherAhead: Int?

        public init(executable: String, configurationPath: String, peerCount: Int, hasTeacher: Bool, output: String?, threads: Int) {
            self.executable = executable; self.configurationPath = configurationPath; self.peerCount = peerCount
            self.hasTeacher = hasTeacher; self.output = output; self.threads = threads
        }

        /// Threads for each peer: an equal share of the cores, at least one.
        public var peerThreads: Int { max(1, threads / max(peerCount, 1)) }
        /// Threads for the coordinator: a peer's share when it runs a teacher, else one.
        public var coordinatorThreads: Int { hasTeacher ? peerThreads : 1 }
    }

    /// A started process, the name its lines carry, how to start it again, and how often it was.
    private struct Child {
        let name: String
        var process: Process
        let arguments: [String]
        var restarts = 0
        /// Ended after the run finished: not restarted, not waited for.
        var settled = false
    }

    /// Writes whole lines to standard error, one writer at a time. A closed standard error (the reader
    /// of a pipe gone, `cohort launch ... | head`) loses the lines, not the run.
    private final class LineWriter: Sendable {
        private let lock = Mutex(())
        func write(_ text: String) {
            _ = lock.withLock { _ in FileDescriptor.writeAll(2, text) }
        }
    }

    /// Appends lines to one process's log file; writes that fail (a full disk) lose the line, not the run.
    private final class LogFile: Sendable {
        private let handle: Mutex<FileHandle?>
        init(path: String) throws {
            if !FileManager.default.fileExists(atPath: path) { _ = FileManager.default.createFile(atPath: path, contents: nil) }
            guard let h = FileHandle(forWritingAtPath: path) else { throw LauncherError(description: "cannot write the log file \(path)") }
            h.seekToEndOfFile()
            handle = Mutex(h)
        }
        func write(_ text: String) { handle.withLock { try? $0?.write(contentsOf: Data(text.utf8)) } }
        func close() { handle.withLock { try? $0?.close(); $0 = nil } }
    }

    let plan: Plan
    private let output = LineWriter()
    private var children: [Child] = []
    private var logFiles: [String: LogFile] = [:]
    /// Each process's standard output, in start order, printed once every process has ended.
    private final class HeldOutput: Sendable {
        let texts = Mutex([String]())
    }
    private let results = HeldOutput()

    public init(plan: Plan) { self.plan = plan }

    /// Runs the cohort to its end. Returns the exit status: 0 when every process succeeded, the first
    /// failure's status otherwise, 128 + the signal's number when stopped by one.
    public func run() throws -> Int32 {
        // Writing to a closed pipe must not kill the launcher (and orphan its children): it gets EPIPE.
        signal(SIGPIPE, SIG_IGN)
        if let directory = plan.logDirectory {
            do { try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true) } catch {
                throw LauncherError(description: "cannot create the log directory \(directory): \(error.localizedDescription)")
            }
            for name in ["launch", "coordinator"] + (0..<plan.peerCount).map({ "peer-\($0)" }) {
                logFiles[name] = try LogFile(path: directory + "/" + name + ".log")
            }
            let stamp = Date().formatted(Date.ISO8601FormatStyle(timeZone: .current))
            for file in logFiles.values { file.write("--- cohort launch started \(stamp) (pid \(getpid())) ---\n") }
        }
        defer {
            flushResults()
            for file in logFiles.values { file.close() }
        }
        let ready = NSTemporaryDirectory() + "cohort-launch-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).json"
        defer { try? FileManager.default.removeItem(atPath: ready) }
        var common = ["--config", plan.configurationPath]
        if let out = plan.output { common += ["--out", out] }
        func key(_ name: String) -> [String] { plan.keys.map { ["--key", $0 + "/" + name + ".key"] } ?? [] }
        let resume = plan.resume ? ["--resume"] : []
        func metrics(_ offset: Int) -> [String] {
            (plan.metricsPort.map { ["--metrics-port", "\($0 == 0 ? 0 : $0 + offset)"] } ?? [])
                + (offset == 0 ? plan.teacherAhead.map { ["--teacher-ahead", "\($0)"] } ?? [] : [])
        }
        let coordinator = try start(name: "coordinator",
                                    ["coordinator"] + common + key("coordinator") + metrics(0) + ["--threads", "\(plan.coordinatorThreads)", "--ready-file", ready] + resume)
        // The coordinator writes its endpoints once bound (with the data and teacher loaded).
        let deadline = Date() + plan.startTimeout
        var endpoints: [String: String]?
        while endpoints == nil {
            if let data = FileManager.default.contents(atPath: ready) {
                endpoints = try? JSONSerialization.jsonObject(with: data) as? [String: String]
            }
            if endpoints != nil { break }
            if !coordinator.process.isRunning || StopSignal.current != nil || Date() >= deadline {
                if coordinator.process.isRunning { say("the coordinator did not start within \(Int(plan.startTimeout)) s") }
                return stopAll()
            }
            Thread.sleep(forTimeInterval: 0.05)
        }
        let control = Launcher.local(endpoints!["coordinator"] ?? "")
        let stream = Launcher.local(endpoints!["stream"] ?? "")
        say("coordinator at \(control); log stream at \(stream) (watch it with: cohort monitor \(stream))")
        // A restarted coordinator binds the same endpoints again, so the peers find it where it was.
        children[0] = Child(name: "coordinator", process: coordinator.process,
                            arguments: ["coordinator"] + common + key("coordinator") + metrics(0) + ["--threads", "\(plan.coordinatorThreads)",
                                        "--bind", endpoints!["coordinator"] ?? "", "--stream", endpoints!["stream"] ?? "", "--resume"])
        for rank in 0..<plan.peerCount {
            let arguments = ["peer"] + common + key("peer-\(rank)") + metrics(1 + rank) + ["--rank", "\(rank)", "--coordinator", control,
                                                                      "--threads", "\(plan.peerThreads)"]
            let child = try start(name: "peer \(rank)", arguments + resume)
            children[children.count - 1] = Child(name: child.name, process: child.process, arguments: arguments + ["--resume"])
        }
        return supervise()
    }

    /// Waits for every child; restarts one that crashed (up to `maxRestarts` times), stops the rest when
    /// one fails for good or a signal arrives.
    private func supervise() -> Int32 {
        var coordinatorFinished = false
        while true {
            if StopSignal.current != nil { return stopAll() }
            for i in children.indices where !children[i].settled && !children[i].process.isRunning && children[i].process.terminationStatus != 0 {
                let c = children[i]
                let how = c.process.terminationReason == .uncaughtSignal ? "killed by signal" : "exit status"
                if coordinatorFinished {
                    say("\(c.name) ended with \(how) \(c.process.terminationStatus) after the run finished")
                    children[i].settled = true
                    continue
                }
                guard c.restarts < plan.maxRestarts else {
                    say("\(c.name) failed (\(how) \(c.process.terminationStatus)) after \(c.restarts) restart(s); stopping the others")
                    _ = stopAll()
                    return c.process.terminationStatus
                }
                say("\(c.name) failed (\(how) \(c.process.terminationStatus)); restarting it with --resume (\(c.restarts + 1) of \(plan.maxRestarts))")
                do {
                    let process = try spawn(name: c.name, c.arguments)
                    children[i].process = process
                    children[i].restarts += 1
                } catch {
                    say("cannot restart \(c.name): \(error)")
                    _ = stopAll()
                    return 1
                }
            }
            if !children[0].process.isRunning && children[0].process.terminationStatus == 0 { coordinatorFinished = true }
            if children.allSatisfy({ !$0.process.isRunning && ($0.settled || $0.process.terminationStatus == 0) }) { return 0 }
            Thread.sleep(forTimeInterval: 0.1)
        }
    }

    /// Sends SIGTERM to every running child (they stop cleanly), waits up to 15 s, then kills the rest.
    private func stopAll() -> Int32 {
        for c in children where c.process.isRunning { kill(c.process.processIdentifier, SIGTERM) }
        let deadline = Date() + 15
        while children.contains(where: { $0.process.isRunning }) && Date() < deadline { Thread.sleep(forTimeInterval: 0.05) }
        for c in children where c.process.isRunning {
            say("\(c.name) did not stop; killing it")
            kill(c.process.processIdentifier, SIGKILL)
            c.process.waitUntilExit()
        }
        if let signal = StopSignal.current { return StopSignal.exitStatus(signal) }
        return children.first { $0.process.terminationStatus != 0 }?.process.terminationStatus ?? 1
    }

    private func start(name: String, _ arguments: [String]) throws -> Child {
        let child = Child(name: name, process: try spawn(name: name, arguments), arguments: arguments)
        children.append(child)
        return child
    }

    private func spawn(name: String, _ arguments: [String]) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: plan.executable)
        process.arguments = arguments
        var environment = ProcessInfo.processInfo.environment
        environment[LauncherChild.environmentKey] = "\(getpid())"
        process.environment = environment
        let logs = Pipe(), results = Pipe()
        process.standardOutput = results
        process.standardError = logs
        let prefix = "[\(name)] "
        let file = logFiles[name.replacingOccurrences(of: " ", with: "-")]
        let lock = output
        readLines(logs) { lines in
            file?.write(lines.map { $0 + "\n" }.joined())
            lock.write(lines.map { prefix + $0 + "\n" }.joined())
        }
        let held = self.results
        let index = held.texts.withLock { r in r.append(""); return r.count - 1 }
        readLines(results) { lines in
            file?.write(lines.map { $0 + "\n" }.joined())
            held.texts.withLock { $0[index] += lines.map { $0 + "\n" }.joined() }
        }
        try process.run()
        return process
    }

    /// Calls `body` with each batch of whole lines read from `pipe` (a last unterminated line at its end).
    private func readLines(_ pipe: Pipe, _ body: @escaping @Sendable ([String]) -> Void) {
        let pending = Mutex([UInt8]())
        pipe.fileHandleForReading.readabilityHandler = { handle in
            let chunk = handle.availableData
            let lines: [UInt8] = pending.withLock { buffer in
                if chunk.isEmpty {  // end of file: flush a last unterminated line
                    defer { buffer = [] }
                    return buffer.isEmpty ? [] : buffer + [10]
                }
                buffer += chunk
                guard let end = buffer.lastIndex(of: 10) else { return [] }
                defer { buffer.removeSubrange(...end) }
                return Array(buffer[...end])
            }
            if chunk.isEmpty { handle.readabilityHandler = nil }
            guard !lines.isEmpty else { return }
            body(lines.split(separator: 10, omittingEmptySubsequences: false).dropLast().map { String(decoding: $0, as: UTF8.self) })
        }
    }

    /// Prints what the processes wrote on standard output (their results), once, on standard output.
    private func flushResults() {
        // The pipes' last bytes arrive just after a process ends.
        Thread.sleep(forTimeInterval: 0.1)
        let text = results.texts.withLock { r in defer { r = [] }; return r.joined() }
        FileDescriptor.writeAll(1, text)
    }

    private func say(_ text: String) {
        output.write("[launch] \(text)\n")
        logFiles["launch"]?.write(text + "\n")
    }

    /// An endpoint a local process can connect to: a wildcard address becomes loopback.
    static func local(_ endpoint: String) -> String {
        endpoint.replacingOccurrences(of: "://0.0.0.0:", with: "://127.0.0.1:").replacingOccurrences(of: "://*:", with: "://127.0.0.1:")
    }
}

/// Why the launcher could not start.
public struct LauncherError: Error, CustomStringConvertible {
    public let description: String
}
