import Foundation
import Testing
import TestSupport
import Tensors
import NN
import Training
@testable import Runtime

/// Resuming the in-process cohort, and what protects a run directory (issue 16).
@Suite(.serialized) struct RunHistoryTests {
    func configuration(_ out: String, extra: String = "") throws -> CohortConfiguration {
        try CohortConfiguration.parse("""
            data: {dataset: fashion-mnist, train_limit: 256, test_limit: 100}
            epochs: 2
            batch_size: 64
            seed: 5
            peers: [{model: resnet8}, {model: resnet8}]
            output: \(out)
            \(extra)
            """)
    }

    @Test func settingChangesNameEveryChangedKey() throws {
        let a = try CohortConfiguration.parse("batch_size: 64\noptimizer: {lr: 0.1}\npeers: [{model: resnet8}]")
        let b = try CohortConfiguration.parse("batch_size: 32\noptimizer: {lr: 0.5}\npeers: [{model: resnet8}, {model: resnet8}]")
        #expect(b.settingChanges(from: a.canonicalSettings) == ["batch_size: 64 -> 32", "optimizer.lr: 0.1 -> 0.5", "peers.1.model: (unset) -> resnet8"])
        #expect(a.settingChanges(from: a.canonicalSettings).isEmpty)
        #expect(throws: ResumeError.settingsChanged(changes: ["batch_size: 64 -> 32", "optimizer.lr: 0.1 -> 0.5", "peers.1.model: (unset) -> resnet8"])) {
            try b.checkUnchanged(since: a.canonicalSettings)
        }
        try b.checkUnchanged(since: nil)  // a run from before the settings were kept: nothing to compare
    }

    /// Stopped between steps (as by Ctrl-C), the cohort checkpoints where it is; resumed, it ends with the
    /// weights of an uninterrupted run, and each log holds every step once. A resume with another
    /// learning rate is refused before anything is written.
    @Test func stoppedCohortResumesToTheUninterruptedWeights() throws {
        let quiet = ProgressReporter(interactive: false)
        let (reference, run) = (scratch("history-reference"), scratch("history-run"))
        try Parallelism.withThreadCount(1) {
            _ = try InProcessCohort(configuration: try configuration(reference)).run(progress: quiet)
            var asked = 0
            #expect(throws: CohortStopped.self) {
                _ = try InProcessCohort(configuration: try configuration(run)).run(shouldStop: { asked += 1; return asked > 5 }, progress: quiet)
            }
        }
        #expect(ExistingRun.inspect(run) == .unfinished(step: 5))
        let metricsBefore = try Data(contentsOf: URL(fileURLWithPath: run + "/peer-0/metrics.jsonl"))
        #expect(throws: ResumeError.settingsChanged(changes: ["optimizer.lr: 0.1 -> 0.5"])) {
            _ = try InProcessCohort(configuration: try configuration(run, extra: "optimizer: {lr: 0.5}")).run(resume: true, progress: quiet)
        }
        #expect(try Data(contentsOf: URL(fileURLWithPath: run + "/peer-0/metrics.jsonl")) == metricsBefore)
        let summary = try Parallelism.withThreadCount(1) {
            try InProcessCohort(configuration: try configuration(run)).run(resume: true, progress: quiet)
        }
        #expect(summary.steps == 8)
        for rank in 0..<2 {
            for file in ["last.safetensors", "epoch-0002.state.safetensors"] {
                try expectIdentical(reference + "/peer-\(rank)/checkpoints/" + file, run + "/peer-\(rank)/checkpoints/" + file)
            }
            let steps = try String(contentsOfFile: run + "/peer-\(rank)/metrics.jsonl", encoding: .utf8).split(separator: "\n")
                .compactMap { try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
                .filter { $0["kind"] as? String == "step" }.compactMap { $0["global_step"] as? Int }
            #expect(steps == Array(1...8))
        }
        #expect(ExistingRun.inspect(run) == .finished)
        // Moved aside, the directory is free for a new run.
        let moved = try ExistingRun.moveAside(run)
        #expect(moved == run + ".old-1" && ExistingRun.inspect(run) == .none && ExistingRun.inspect(moved) == .finished)
    }

    /// A run from before the in-process cohort wrote the coordinator's states (here: its `coordinator/`
    /// removed) resumes at the newest step every peer has a checkpoint of, to the uninterrupted weights.
    @Test func aRunWithoutCoordinatorStatesResumesAtThePeersCommonStep() throws {
        let quiet = ProgressReporter(interactive: false)
        let (reference, run) = (scratch("history-old-reference"), scratch("history-old-run"))
        try Parallelism.withThreadCount(1) {
            _ = try InProcessCohort(configuration: try configuration(reference)).run(progress: quiet)
            var asked = 0
            #expect(throws: CohortStopped.self) {
                _ = try InProcessCohort(configuration: try configuration(run)).run(shouldStop: { asked += 1; return asked > 3 }, progress: quiet)
            }
            try FileManager.default.removeItem(atPath: run + "/coordinator")
            let summary = try InProcessCohort(configuration: try configuration(run)).run(resume: true, progress: quiet)
            #expect(summary.steps == 8)
        }
        for rank in 0..<2 {
            try expectIdentical(reference + "/peer-\(rank)/checkpoints/last.safetensors", run + "/peer-\(rank)/checkpoints/last.safetensors")
        }
    }
}
