import Foundation
import Testing
import TestSupport
import NN
import Runtime

/// Issue 16's story with real processes: a launch interrupted by Ctrl-C, the refusals that protect its
/// directory, and `cohort launch --resume` finishing it with exactly the weights of an uninterrupted run.
@Suite(.serialized) struct SafeRunTests {
    /// Every file under `directory` (lock files aside: they record who holds the directory) and its bytes.
    func snapshot(_ directory: String) -> [String: Data] {
        var files: [String: Data] = [:]
        for case let file as String in FileManager.default.enumerator(atPath: directory)?.allObjects ?? [] {
            guard !(file as NSString).lastPathComponent.hasSuffix(".lock"),
                  let data = FileManager.default.contents(atPath: directory + "/" + file) else { continue }
            files[file] = data
        }
        return files
    }

    /// The global steps of `metrics.jsonl`'s lines that have one, in file order.
    func steps(_ path: String, kind: String = "step") throws -> [Int] {
        try jsonLines(path).filter { $0["kind"] as? String == kind }.compactMap { $0["global_step"] as? Int }
    }

    @Test(arguments: ["zmq", "inproc"]) func interruptedLaunchIsProtectedAndResumesToTheSameWeights(transport: String) throws {
        let directory = scratch("safe-\(transport)")
        let config = directory + "/cohort.yaml", changed = directory + "/changed.yaml"
        // 3 epochs of 10 steps, cohort checkpoints every 4 steps; three peers and a teacher (KD, CRCD, RRD).
        try write(cohortConfiguration(epochs: 3, trainLimit: 640, extra: "checkpoint_every: 4"), to: config)
        try write(cohortConfiguration(epochs: 3, trainLimit: 640, extra: "checkpoint_every: 4\noptimizer: {lr: 0.5}"), to: changed)
        let threads = transport == "zmq" ? "3" : "1"
        func launch(_ file: String, _ out: String, _ more: [String] = []) throws -> CohortProcess {
            try CohortProcess(["launch", "--config", file, "--transport", transport, "--threads", threads, "--out", out] + more)
        }
        let reference = try launch(config, directory + "/reference")
        #expect(reference.finish() == 0, "\(reference.output)")

        let run = directory + "/run"
        let first = try launch(config, run)
        // A second launch into the directory in use is refused at once, naming the holder.
        try #require(first.waitForOutput(seconds: 120) { _ in FileManager.default.fileExists(atPath: run + "/.launch.lock") })
        let second = try launch(config, run)
        #expect(second.finish(seconds: 60) != 0)
        #expect(second.output.contains("in use by another process (PID \(first.process.processIdentifier)"), "\(second.output)")
        // Ctrl-C after the first cohort checkpoints, before the end.
        let checkpointed = first.waitForOutput(seconds: 300) { _ in
            if case .unfinished(let step?) = ExistingRun.inspect(run), step >= 8 { return true }
            return false
        }
        try #require(checkpointed, "\(first.output)")
        kill(first.process.processIdentifier, SIGINT)
        try #require(first.finish(seconds: 120) == 130, "\(first.output)")
        #expect(first.output.contains("--resume"), "the exact command that resumes: \(first.output)")
        #expect(!FileManager.default.fileExists(atPath: run + "/summary.json"))

        // Launching again without --resume is refused and changes nothing.
        let before = snapshot(run)
        let again = try launch(config, run)
        #expect(again.finish(seconds: 60) != 0)
        #expect(again.output.contains("unfinished cohort run") && again.output.contains("--resume") && again.output.contains("--fresh"), "\(again.output)")
        #expect(snapshot(run) == before, "a refused launch changed the run directory")

        // Resuming with another learning rate is refused, naming the change.
        let drift = try launch(changed, run, ["--resume", "--max-restarts", "0"])
        #expect(drift.finish(seconds: 120) != 0)
        #expect(drift.output.contains("optimizer.lr: 0.1 -> 0.5"), "\(drift.output)")

        // `--resume` finishes the run with the uninterrupted run's weights, bit for bit.
        let resumed = try launch(config, run, ["--resume"])
        #expect(resumed.finish() == 0, "\(resumed.output)")
        for rank in 0..<3 {
            for file in ["last.safetensors", "epoch-0003.state.safetensors"] {
                try expectIdentical(directory + "/reference/peer-\(rank)/checkpoints/" + file, run + "/peer-\(rank)/checkpoints/" + file)
            }
            // One history: every step once, in order.
            #expect(try steps(run + "/peer-\(rank)/metrics.jsonl") == Array(1...30))
            #expect(try steps(run + "/peer-\(rank)/metrics.jsonl", kind: "epoch") == [10, 20, 30])
        }
        #expect(try steps(run + "/metrics.jsonl", kind: "epoch") == [10, 20, 30])
        if transport == "zmq" { #expect(try steps(run + "/metrics.jsonl") == Array(1...30)) }

        // A finished run is not overwritten either; --fresh moves it aside.
        let finished = try launch(config, run)
        #expect(finished.finish(seconds: 60) != 0 && finished.output.contains("finished cohort run"), "\(finished.output)")
        let fresh = try launch(config, run, ["--fresh"])
        #expect(fresh.finish() == 0, "\(fresh.output)")
        #expect(FileManager.default.fileExists(atPath: run + ".old-1/summary.json") && FileManager.default.fileExists(atPath: run + "/summary.json"))
    }

    /// The launcher killed with SIGKILL leaves no process of the cohort behind; a launcher whose output
    /// pipe is closed (`cohort launch ... | head`) does not die of SIGPIPE and finishes the run.
    @Test func noProcessOutlivesItsLauncher() throws {
        let directory = scratch("orphans")
        let config = directory + "/cohort.yaml"
        try write(cohortConfiguration(epochs: 30, trainLimit: 6400), to: config)
        let killed = try CohortProcess(["launch", "--config", config, "--threads", "2", "--out", directory + "/killed"])
        try #require(killed.waitForOutput(seconds: 120) { $0.contains("all 3 peer(s) joined") || $0.contains("epoch 1/30 step") })
        kill(killed.process.processIdentifier, SIGKILL)
        _ = killed.finish(seconds: 10)
        let deadline = Date() + 30
        while !processes(matching: [directory + "/killed"]).isEmpty && Date() < deadline { usleep(100_000) }
        #expect(processes(matching: [directory + "/killed"]).isEmpty, "left running after SIGKILL")

        try write(cohortConfiguration(epochs: 1, trainLimit: 320), to: config)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try cohortExecutable())
        process.arguments = ["launch", "--config", config, "--threads", "2", "--out", directory + "/piped"]
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        // Read a little, then go away like `head` does.
        _ = pipe.fileHandleForReading.readData(ofLength: 64)
        try pipe.fileHandleForReading.close()
        let end = Date() + 300
        while process.isRunning && Date() < end { usleep(50_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
        #expect(process.terminationReason == .exit && process.terminationStatus == 0, "status \(process.terminationStatus)")
        #expect(FileManager.default.fileExists(atPath: directory + "/piped/summary.json"))
        #expect(processes(matching: [directory + "/piped"]).isEmpty)
    }
}
