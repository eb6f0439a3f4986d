import Foundation
import Synchronization
import Testing
import NN
import Training
import TestSupport

func scratch(_ name: String) -> String {
    let path = NSTemporaryDirectory() + "cohort-cluster-\(name)-\(getpid())"
    try? FileManager.default.removeItem(atPath: path)
    try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

/// A `cohort` subcommand running in its own process, its output (stdout and stderr) collected live.
final class CohortProcess {
    /// Output text shared with the pipe's reader thread.
    private final class Collected: Sendable {
        let text = Mutex("")
    }
    let process: Process
    private let collected = Collected()

    init(_ arguments: [String]) throws {
        process = Process()
        process.executableURL = URL(fileURLWithPath: try cohortExecutable())
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        let collected = self.collected
        pipe.fileHandleForReading.readabilityHandler = { handle in
            let data = handle.availableData
            if data.isEmpty { handle.readabilityHandler = nil; return }
            collected.text.withLock { $0 += String(decoding: data, as: UTF8.self) }
        }
        try process.run()
    }

    var output: String { collected.text.withLock { $0 } }

    /// Waits until `predicate` holds of the output so far, the process ends, or `seconds` pass.
    @discardableResult
    func waitForOutput(seconds: Double = 300, _ predicate: (String) -> Bool) -> Bool {
        let deadline = Date() + seconds
        while Date() < deadline {
            if predicate(output) { return true }
            if !process.isRunning { return predicate(output) }
            usleep(20_000)
        }
        return false
    }

    /// Waits for the process to end (at most `seconds`, then kills it) and returns its exit status.
    func finish(seconds: Double = 600) -> Int32 {
        let deadline = Date() + seconds
        while process.isRunning && Date() < deadline { usleep(20_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
        usleep(100_000)  // let the last output arrive
        return process.terminationStatus
    }
}

/// A resnet8 teacher from one short epoch, trained once for the suite.
let teacherCheckpoint: String = {
    var options = TrainingOptions()
    options.model = "resnet8"; options.epochs = 1; options.batchSize = 64; options.trainLimit = 512; options.testLimit = 100
    let directory = scratch("teacher")
    _ = try! Trainer(options: options, outputDirectory: directory).run(resume: false, progress: ProgressReporter(interactive: false))
    return directory + "/checkpoints/last.safetensors"
}()

/// A cohort of three peers with MCL and a teacher with KD, CRCD and RRD, on small slices of
/// Fashion-MNIST, every endpoint on a free loopback port.
func cohortConfiguration(epochs: Int = 2, trainLimit: Int = 640, extra: String = "") -> String {
    """
    data: {dataset: fashion-mnist, train_limit: \(trainLimit), test_limit: 300}
    seed: 3
    epochs: \(epochs)
    batch_size: 64
    peers: [{model: resnet8}, {model: resnet8}, {model: resnet14}]
    mcl: {embedding_dim: 32}
    teacher:
      model: resnet8
      checkpoint: \(teacherCheckpoint)
      kd: {weight: 0.9}
      crcd: {weight: 1, gradient_weight: 1, negatives: 32}
      rrd: {weight: 1, keys: 256}
    network: {coordinator: "tcp://127.0.0.1:*", stream: "tcp://127.0.0.1:*", timeout: 60, join_timeout: 60}
    \(extra)
    """
}

func write(_ text: String, to path: String) throws {
    try text.write(toFile: path, atomically: true, encoding: .utf8)
}

/// The JSON objects of a JSON-lines file.
func jsonLines(_ path: String) throws -> [[String: Any]] {
    try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n")
        .map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
}

/// A `cohort coordinator` on `config` (output `directory/run`, one thread, `extra` arguments), waited for until
/// it has bound: the process (the caller kills it) and its control endpoint.
func startCoordinator(config: String, directory: String, extra: [String] = []) throws -> (process: CohortProcess, endpoint: String) {
    let ready = directory + "/ready.json"
    let coordinator = try CohortProcess(["coordinator", "--config", config, "--out", directory + "/run", "--threads", "1",
                                         "--ready-file", ready] + extra)
    guard coordinator.waitForOutput(seconds: 120, { _ in FileManager.default.fileExists(atPath: ready) }) else {
        kill(coordinator.process.processIdentifier, SIGKILL)
        throw CLIFailure(message: "the coordinator did not start: \(coordinator.output)")
    }
    let endpoints = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: ready))) as? [String: String]
    guard let endpoint = endpoints?["coordinator"] else { throw CLIFailure(message: "no coordinator endpoint in \(ready)") }
    return (coordinator, endpoint)
}

/// A helper's failure, with what the process printed.
struct CLIFailure: Error, CustomStringConvertible {
    let message: String
    var description: String { message }
}

/// Process ids whose command line contains every one of `parts` (read from /proc).
func processes(matching parts: [String]) -> [Int32] {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    return entries.compactMap { entry -> Int32? in
        guard let pid = Int32(entry), let data = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline") else { return nil }
        let line = String(decoding: data.map { $0 == 0 ? 32 : $0 }, as: UTF8.self)
        return parts.allSatisfy { line.contains($0) } ? pid : nil
    }
}

/// Steps the cohort has completed so far, from the coordinator's metrics.
func cohortSteps(_ run: String) -> Int {
    ((try? String(contentsOfFile: run + "/metrics.jsonl", encoding: .utf8)) ?? "").split(separator: "\n")
        .filter { $0.contains("\"kind\":\"step\"") }.compactMap { line -> Int? in
            guard let r = line.range(of: "\"global_step\":") else { return nil }
            return Int(line[r.upperBound...].prefix { $0.isNumber })
        }.max() ?? 0
}

/// `GET path` from `127.0.0.1:port` over plain HTTP/1.1: the status code and the body (nil when nothing answers).
func httpGet(port: Int, path: String) -> (status: Int, body: String)? {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = in_port_t(UInt16(port).bigEndian)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard connected == 0 else { return nil }
    let request = Array("GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".utf8)
    guard request.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, 0) }) == request.count else { return nil }
    var response = [UInt8]()
    var chunk = [UInt8](repeating: 0, count: 65_536)
    while true {
        let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        guard n > 0 else { break }
        response += chunk[0..<n]
    }
    let text = String(decoding: response, as: UTF8.self)
    guard let head = text.range(of: "\r\n\r\n"), let status = text.split(separator: " ").dropFirst().first.flatMap({ Int($0) }) else { return nil }
    return (status, String(text[head.upperBound...]))
}
