import Foundation
import Testing
import TestSupport
import NN
import Runtime

/// The distributed cohort run as processes (`cohort launch`, transport zmq), against the in-process one.
@Suite(.serialized) struct DistributedCohortTests {
    /// Equivalence: three MCL peers and a teacher with KD, CRCD and RRD, 20 steps, run once in one process
    /// and once as a coordinator and three peer processes over ZeroMQ, train bit-identical networks, loss
    /// states (memories, queues, heads) and momentum. The stream and the peers' metrics are complete.
    @Test func multiProcessCohortTrainsExactlyTheInProcessNetworks() throws {
        let directory = scratch("equivalence")
        let config = directory + "/cohort.yaml"
        try write(cohortConfiguration(), to: config)
        // One thread per process in both runs: the same kernels split the same way.
        let inproc = try CohortProcess(["launch", "--config", config, "--transport", "inproc", "--threads", "1", "--out", directory + "/inproc",
                                        "--log-dir", directory + "/inproc-logs"])
        #expect(inproc.finish() == 0, "\(inproc.output)")
        let zmq = try CohortProcess(["launch", "--config", config, "--threads", "3", "--out", directory + "/zmq", "--log-dir", directory + "/logs"])
        #expect(zmq.finish() == 0, "\(zmq.output)")

        // --log-dir: one file per process, its own lines unprefixed (inproc: the one process's file).
        let inprocLog = try String(contentsOfFile: directory + "/inproc-logs/cohort.log", encoding: .utf8)
        #expect(inprocLog.contains("epoch 2/2") && inprocLog.contains("ensemble: test top-1"), "\(inprocLog)")
        for (name, expected) in [("coordinator", "coordinator@"), ("peer-0", "peer 0@"), ("peer-1", "peer 1@"), ("peer-2", "peer 2@"),
                                 ("launch", "log stream at")] {
            let log = try String(contentsOfFile: directory + "/logs/\(name).log", encoding: .utf8)
            #expect(log.hasPrefix("--- cohort launch started") && log.contains(expected) && !log.contains("[peer") && !log.contains("[coordinator]"),
                    "\(name).log: \(log)")
        }
        #expect(try String(contentsOfFile: directory + "/logs/coordinator.log", encoding: .utf8).contains("ensemble: test top-1"))
        // The merged output in order: every peer's epoch line before the cohort's result of that epoch, the
        // results (the coordinator's standard output) after every process's last line.
        let merged = zmq.output.split(separator: "\n").map(String.init)
        for epoch in 1...2 {
            let result = merged.firstIndex { $0.hasPrefix("[coordinator]") && $0.contains("epoch \(epoch)/2: peer 0") }
            for rank in 0..<3 {
                let line = merged.firstIndex { $0.hasPrefix("[peer \(rank)]") && $0.contains("epoch \(epoch)/2: test top-1") }
                #expect(line != nil && result != nil && line! < result!, "peer \(rank), epoch \(epoch):\n\(zmq.output)")
            }
        }
        #expect(merged.last?.hasPrefix("ensemble: test top-1") == true, "\(zmq.output)")
        #expect(merged.dropLast(4).allSatisfy { $0.hasPrefix("[") }, "only the results are unprefixed")

        for rank in 0..<3 {
            for file in ["last.safetensors", "epoch-0002.state.safetensors", "epoch-0001.safetensors"] {
                try expectIdentical(directory + "/inproc/peer-\(rank)/checkpoints/" + file, directory + "/zmq/peer-\(rank)/checkpoints/" + file)
            }
            // A peer process's checkpoints record the time it trained, as the in-process cohort's do.
            let first = try SafeTensors.read(directory + "/zmq/peer-\(rank)/checkpoints/epoch-0001.safetensors").metadata["elapsed_seconds"]
            let last = try SafeTensors.read(directory + "/zmq/peer-\(rank)/checkpoints/last.safetensors").metadata["elapsed_seconds"]
            #expect((first.flatMap(Double.init) ?? 0) > 0 && (last.flatMap(Double.init) ?? 0) > (first.flatMap(Double.init) ?? 0), "\(first ?? "-") \(last ?? "-")")
        }
        let a = try JSONDecoder().decode(CohortSummary.self, from: Data(contentsOf: URL(fileURLWithPath: directory + "/inproc/summary.json")))
        let b = try JSONDecoder().decode(CohortSummary.self, from: Data(contentsOf: URL(fileURLWithPath: directory + "/zmq/summary.json")))
        #expect(a.steps == 20 && b.steps == 20 && b.transport == "zmq")
        #expect(a.peers.map(\.test_top1) == b.peers.map(\.test_top1) && a.ensemble_top1 == b.ensemble_top1 && a.teacher_top1 == b.teacher_top1)

        // The coordinator reports the teacher's evaluation before admitting anyone.
        #expect(zmq.output.contains("evaluating the teacher (resnet8) on the test set: done, test top-1"), "\(zmq.output)")
        #expect(!zmq.output.contains("unexpected welcome"), "repeated hellos are answered quietly")
        // Every process's output reached the terminal, prefixed.
        for name in ["[coordinator]", "[peer 0]", "[peer 1]", "[peer 2]", "[launch]"] { #expect(zmq.output.contains(name), "\(name)") }
        // The stream: records from the coordinator and every peer, every peer's status after every step, the end.
        let stream = try jsonLines(directory + "/zmq/stream.jsonl")
        for rank in 0..<3 {
            #expect(stream.contains { $0["topic"] as? String == "log" && $0["rank"] as? Int == rank && $0["host"] != nil })
            // A status after every step, and again after each epoch's evaluation with its test accuracy.
            let statuses = stream.filter { $0["topic"] as? String == "status" && $0["rank"] as? Int == rank }
            #expect(Set(statuses.compactMap { $0["globalStep"] as? Int }) == Set(1...20) && statuses.count == 22)
            #expect(statuses.last?["testAccuracy"] is Double)
        }
        #expect(stream.contains { $0["topic"] as? String == "log" && $0["rank"] == nil && ($0["message"] as? String)?.hasPrefix("epoch 2/2") == true })
        #expect(stream.last?["topic"] as? String == "end" && stream.last?["ok"] as? Bool == true)
        // Each peer's metrics time its exchange.
        let steps = try jsonLines(directory + "/zmq/peer-1/metrics.jsonl").filter { $0["kind"] as? String == "step" }
        #expect(steps.count == 20 && steps.allSatisfy { ($0["exchange_seconds"] as? Double ?? -1) >= 0 })
    }

    /// `cohort monitor` follows a running cohort: JSON events from every peer, a status table with a row
    /// per peer, and it exits 0 when the run finishes.
    @Test func monitorFollowsTheStreamUntilTheRunEnds() throws {
        let directory = scratch("monitor")
        let config = directory + "/cohort.yaml"
        try write(cohortConfiguration(epochs: 2, trainLimit: 1280), to: config)
        let launch = try CohortProcess(["launch", "--config", config, "--threads", "2", "--out", directory + "/run"])
        var stream = ""
        try #require(launch.waitForOutput(seconds: 120) { output in
            guard let range = output.range(of: "log stream at ") else { return false }
            stream = String(output[range.upperBound...].prefix { $0 != " " && $0 != "\n" })
            return true
        }, "\(launch.output)")
        let json = try CohortProcess(["monitor", stream, "--json"])
        let table = try CohortProcess(["monitor", stream, "--status", "--interval", "0.5"])
        let filtered = try CohortProcess(["monitor", stream, "--peer", "2", "--no-coordinator"])
        #expect(launch.finish() == 0, "\(launch.output)")
        #expect(json.finish(seconds: 30) == 0 && table.finish(seconds: 30) == 0 && filtered.finish(seconds: 30) == 0)

        let events = json.output.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        for rank in 0..<3 {
            #expect(events.contains { $0["topic"] as? String == "status" && $0["rank"] as? Int == rank && $0["loss"] is Double }, "rank \(rank)")
        }
        #expect(events.last?["topic"] as? String == "end")
        #expect(table.output.contains("peer  host  phase") && table.output.contains("exchange") && table.output.contains("resnet14"))
        // Phases on the stream: each peer evaluates and checkpoints at each epoch's end; the last table says
        // finished, with the last epoch's test accuracy.
        for rank in 0..<3 {
            let phases = events.filter { $0["topic"] as? String == "phase" && $0["rank"] as? Int == rank }.compactMap { $0["phase"] as? String }
            #expect(phases.filter { $0 == "evaluating" }.count == 2 && phases.filter { $0 == "checkpointing" }.count == 2, "\(phases)")
        }
        let finalTable = table.output.components(separatedBy: "coordinator: ").last ?? ""
        #expect(finalTable.hasPrefix("finished"), "\(table.output)")
        let rows = finalTable.split(separator: "\n").filter { $0.first?.isNumber == true }
        // Percentages: train acc, test acc (the last epoch's, sent after the last step) and the exchange's share.
        #expect(rows.count == 3 && rows.allSatisfy { $0.contains("finished") && $0.filter { $0 == "%" }.count == 3 }, "\(finalTable)")
        #expect(table.output.hasSuffix("run finished\n"))
        // Without the monitor's own note on standard error ("cohort monitor: following ...") and its last line, "run finished".
        let lines = filtered.output.split(separator: "\n").dropLast().filter { !$0.hasPrefix("cohort monitor:") }
        #expect(!lines.isEmpty && lines.allSatisfy { $0.contains("peer 2@") }, "\(filtered.output)")
    }

    /// SIGTERM to `cohort launch` stops the coordinator and every peer; the stream says why; the exit
    /// status is 128 + 15.
    @Test func launchStopsEveryProcessOnSIGTERM() throws {
        let directory = scratch("sigterm")
        let config = directory + "/cohort.yaml"
        try write(cohortConfiguration(epochs: 30, trainLimit: 6400), to: config)
        let launch = try CohortProcess(["launch", "--config", config, "--threads", "2", "--out", directory + "/run"])
        try #require(launch.waitForOutput(seconds: 120) { $0.contains("epoch 1/30 step") || $0.contains("status\":\"") || $0.contains("all 3 peer(s) joined") })
        usleep(500_000)
        kill(launch.process.processIdentifier, SIGTERM)
        #expect(launch.finish(seconds: 60) == 143, "\(launch.output)")
        // No process of this run is left.
        let ps = Process()
        ps.executableURL = URL(fileURLWithPath: "/bin/ps")
        ps.arguments = ["-eo", "args"]
        let pipe = Pipe()
        ps.standardOutput = pipe
        try ps.run()
        let table = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        ps.waitUntilExit()
        #expect(!table.contains(directory + "/run"), "left running: \(table)")
        let stream = try jsonLines(directory + "/run/stream.jsonl")
        #expect(stream.last?["topic"] as? String == "end" && stream.last?["ok"] as? Bool == false)
        #expect((stream.last?["reason"] as? String)?.contains("signal") == true)
        #expect(!FileManager.default.fileExists(atPath: directory + "/run/summary.json"))
    }
}
