import Foundation
import Testing
import NN
import Runtime
@testable import Cluster

/// A shortened chaos run: SIGKILL a peer, the coordinator and another peer at different points of a
/// supervised cohort (`cohort launch`); the run finishes, every peer is in the summary, every checkpoint
/// on disk reads back whole (checksums), and the absences and rejoins are on record.
@Suite(.serialized) struct FaultToleranceTests {
    /// Both exchanges: through the coordinator, and peer to peer (mesh; a peer back from a kill receives at
    /// a new data endpoint, and a resumed coordinator sends the peers back to a common step).
    @Test(arguments: ["coordinator", "mesh"]) func cohortSurvivesKilledPeersAndCoordinator(exchange: String) throws {
        let directory = scratch("chaos-\(exchange)")
        let config = directory + "/cohort.yaml"
        try write(cohortConfiguration(epochs: 3, trainLimit: 1920, extra: "checkpoint_every: 5").replacingOccurrences(
            of: "timeout: 60, join_timeout: 60",
            with: "timeout: 30, join_timeout: 60, heartbeat_interval: 0.5, heartbeat_timeout: 3, exchange: \(exchange)"), to: config)
        let run = directory + "/run"
        let launch = try CohortProcess(["launch", "--config", config, "--threads", "2", "--out", run])
        // 30 steps an epoch, 90 in all: kill peer 1 after step 12, the coordinator after 40, peer 2 after 55 —
        // early enough that it is back before the last step (a restart took 12 steps of a Zen 5's cohort;
        // after 65 the run ended first).
        for (after, victim) in [(12, ["peer", "--rank 1"]), (40, ["cohort coordinator"]), (55, ["peer", "--rank 2"])] {
            let deadline = Date() + 300
            while cohortSteps(run) < after && launch.process.isRunning && Date() < deadline { usleep(20_000) }
            let pids = processes(matching: victim + [config])
            try #require(pids.count == 1, "\(victim): \(pids) — \(launch.output)")
            kill(pids[0], SIGKILL)
        }
        #expect(launch.finish() == 0, "\(launch.output)")

        let summary = try JSONDecoder().decode(CohortSummary.self, from: Data(contentsOf: URL(fileURLWithPath: run + "/summary.json")))
        #expect(summary.steps == 90 && summary.peers.count == 3 && summary.peers.allSatisfy { $0.test_top1 > 0.3 }, "\(summary)")
        for name in ["peer 1 failed (killed by signal 9); restarting", "coordinator failed (killed by signal 9); restarting",
                     "peer 2 failed (killed by signal 9); restarting", "resumed", "lost the coordinator; rejoining"] {
            #expect(launch.output.contains(name), "\(name)")
        }
        // Every checkpoint on disk reads back whole, its checksum verified.
        var files = 0
        for rank in 0..<3 {
            let checkpoints = run + "/peer-\(rank)/checkpoints"
            for file in try FileManager.default.contentsOfDirectory(atPath: checkpoints) where file.hasSuffix(".safetensors") {
                let st = try SafeTensors.read(checkpoints + "/" + file)
                #expect(st.metadata[SafeTensors.checksumKey] != nil, "\(file)")
                files += 1
            }
        }
        for file in try FileManager.default.contentsOfDirectory(atPath: run + "/coordinator") {
            _ = try CoordinatorState.read(run + "/coordinator/" + file)
            files += 1
        }
        #expect(files >= 3 * 5 + 1)
        // The cohort went on without the killed peers for some steps, and says so.
        let present = try jsonLines(run + "/metrics.jsonl").filter { $0["kind"] as? String == "step" }.compactMap { $0["present"] as? [Int] }
        #expect(present.contains { $0.count < 3 } && present.last == [0, 1, 2])
        let stream = try String(contentsOfFile: run + "/stream.jsonl", encoding: .utf8)
        #expect((stream.contains("is absent") || stream.contains("joined again from a new connection")) && stream.contains("rejoins at the next step"))
    }

    /// Codistillation survives the same: peer 1 killed, then the coordinator while peer 0 is ahead; each
    /// comes back (`--resume`) and the peers go on from where each is; the run ends with both scored.
    @Test func codistillationSurvivesAKilledPeerAndCoordinator() throws {
        let directory = scratch("chaos-codistill")
        let config = directory + "/cohort.yaml"
        try write("""
            data: {dataset: fashion-mnist, train_limit: 1920, test_limit: 300}
            seed: 3
            epochs: 3
            batch_size: 64
            peers: [{model: resnet8}, {model: resnet8}]
            mcl: {embedding_dim: 16}
            codistillation: {every: 5}
            checkpoint_every: 5
            network: {exchange: mesh, coordinator: "tcp://127.0.0.1:*", stream: "tcp://127.0.0.1:*", timeout: 30, join_timeout: 60,
                      heartbeat_interval: 0.5, heartbeat_timeout: 3}
            """, to: config)
        let run = directory + "/run"
        let launch = try CohortProcess(["launch", "--config", config, "--threads", "1", "--out", run])
        // 30 steps an epoch, 90 in all: kill peer 1 after its step 12, the coordinator after peer 0's step 45.
        for (rank, after, victim) in [(1, 12, ["peer", "--rank 1"]), (0, 45, ["cohort coordinator"])] {
            let deadline = Date() + 300
            while peerSteps(run, rank: rank) < after && launch.process.isRunning && Date() < deadline { usleep(20_000) }
            let pids = processes(matching: victim + [config])
            try #require(pids.count == 1, "\(victim): \(pids) — \(launch.output)")
            kill(pids[0], SIGKILL)
        }
        #expect(launch.finish() == 0, "\(launch.output)")
        let summary = try JSONDecoder().decode(CohortSummary.self, from: Data(contentsOf: URL(fileURLWithPath: run + "/summary.json")))
        #expect(summary.steps == 90 && summary.peers.count == 2 && summary.peers.allSatisfy { $0.test_top1 > 0.3 }, "\(summary)")
        for name in ["peer 1 failed (killed by signal 9); restarting", "coordinator failed (killed by signal 9); restarting", "resumed",
                     "lost the coordinator; rejoining"] {
            #expect(launch.output.contains(name), "\(name)")
        }
        // Every peer trained every step: peer 1 went back to its checkpoint and trained on from there.
        for rank in 0..<2 { #expect(peerSteps(run, rank: rank) == 90) }
        // Every epoch is scored once, except one whose logits only the killed coordinator held while both
        // peers went past its end: that one ends unscored, and says so (it used to hang the run).
        let scored = try jsonLines(run + "/metrics.jsonl").filter { $0["kind"] as? String == "epoch" }.compactMap { $0["epoch"] as? Int }
        let stream = try String(contentsOfFile: run + "/stream.jsonl", encoding: .utf8)
        #expect(scored.last == 2 && Set(scored).count == scored.count, "\(scored)")
        for epoch in 0..<3 where !scored.contains(epoch) {
            #expect(stream.contains("epoch \(epoch + 1) ends unscored"), "epoch \(epoch + 1) neither scored nor said to be unscored")
        }
    }

    /// The newest step peer `rank` has recorded.
    func peerSteps(_ run: String, rank: Int) -> Int {
        ((try? String(contentsOfFile: run + "/peer-\(rank)/metrics.jsonl", encoding: .utf8)) ?? "").split(separator: "\n")
            .filter { $0.contains("\"kind\":\"step\"") }.compactMap { line -> Int? in
                guard let r = line.range(of: "\"global_step\":") else { return nil }
                return Int(line[r.upperBound...].prefix { $0.isNumber })
            }.max() ?? 0
    }

    /// A corrupt newest cohort checkpoint is reported and the one before it used.
    @Test func corruptCoordinatorStateFallsBackToThePreviousOne() throws {
        let output = scratch("state")
        var a = CoordinatorState()
        a.globalStep = 10
        try a.save(output: output)
        var b = a
        b.globalStep = 20
        try b.save(output: output)
        let newest = CoordinatorState.directory(output) + "/state-000000020.json"
        var bytes = try Data(contentsOf: URL(fileURLWithPath: newest))
        bytes[5] ^= 0x01
        try bytes.write(to: URL(fileURLWithPath: newest))
        let (state, skipped) = CoordinatorState.newest(output: output)
        #expect(state?.globalStep == 10 && skipped.count == 1 && skipped[0].contains("checksum"))
    }
}
