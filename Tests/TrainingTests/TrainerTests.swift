import Foundation
import TestSupport
import Testing
import Tensors
import NN
import Data
@testable import Training

func scratchDirectory(_ name: String) -> String {
    let path = NSTemporaryDirectory() + "cohort-training-\(name)-\(getpid())"
    try? FileManager.default.removeItem(atPath: path)
    return path
}

@Suite(.serialized) struct TrainerTests {
    /// A short run on real Fashion-MNIST data (Debian's dataset-fashion-mnist) must learn: far above
    /// the 10% of chance.
    @Test func smokeTrainingLearnsFashionMNIST() throws {
        var options = TrainingOptions()
        options.model = "resnet8"
        options.epochs = 3
        options.batchSize = 64
        options.learningRate = 0.1
        options.trainLimit = 4096
        options.testLimit = 1000
        options.seed = 4
        let out = scratchDirectory("smoke")
        let summary = try Trainer(options: options, outputDirectory: out).run(resume: false,
                                                                              progress: ProgressReporter(interactive: false, plainInterval: 1e9))
        #expect(summary.test_top1 > 0.65, "test top-1 \(summary.test_top1)")
        #expect(summary.steps == 3 * 64 && summary.epochs == 3 && summary.train_samples == 4096)
        // The run directory: summary, options, metrics (a line per step and per epoch), checkpoints.
        let fm = FileManager.default
        for file in ["summary.json", "options.json", "metrics.jsonl", "checkpoints/last.safetensors",
                     "checkpoints/epoch-0001.safetensors", "checkpoints/epoch-0003.state.safetensors"] {
            #expect(fm.fileExists(atPath: out + "/" + file), "\(file)")
        }
        let lines = try String(contentsOfFile: out + "/metrics.jsonl", encoding: .utf8).split(separator: "\n")
        #expect(lines.count == 192 + 3)
        let summaryJSON = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out + "/summary.json"))) as! [String: Any]
        for key in ["test_top1", "test_top5", "epochs", "steps", "seconds"] { #expect(summaryJSON[key] != nil, "\(key)") }
        // The checkpoint evaluates to the same accuracy in a fresh model.
        let file = try SafeTensors.read(out + "/checkpoints/last.safetensors")
        #expect(file.metadata["model"] == "resnet8" && file.metadata["epoch"] == "3")
        let net = Architecture.resnet8.make(inputChannels: 1, classCount: 10, seed: 99)
        try net.load(file)
        let testSet = try DataSet.load(.fashionMNIST, split: .test).prefix(1000)
        #expect(evaluate(net, on: testSet).top1 == summary.test_top1)
        // Starting again in the same directory without --resume is refused.
        #expect(throws: TrainingError.self) {
            try Trainer(options: options, outputDirectory: out).run(resume: false, progress: ProgressReporter(interactive: false))
        }
    }

    @Test func resumeRefusesChangedSettingsAndMissingCheckpoints() throws {
        var options = TrainingOptions()
        options.model = "resnet8"; options.epochs = 1; options.batchSize = 32; options.trainLimit = 64; options.testLimit = 32
        let out = scratchDirectory("mismatch")
        let quiet = ProgressReporter(interactive: false, plainInterval: 1e9)
        #expect(throws: TrainingError.self) { try Trainer(options: options, outputDirectory: out).run(resume: true, progress: quiet) }
        _ = try Trainer(options: options, outputDirectory: out).run(resume: false, progress: quiet)
        var changed = options
        changed.learningRate = 0.5
        do {
            _ = try Trainer(options: changed, outputDirectory: out).run(resume: true, progress: quiet)
            Issue.record("expected a mismatch error")
        } catch let error as TrainingError {
            #expect(error.description.contains("learningRate"))
        }
        // More epochs is allowed: the run continues.
        var longer = options
        longer.epochs = 2
        let summary = try Trainer(options: longer, outputDirectory: out).run(resume: true, progress: quiet)
        #expect(summary.steps == 4 && summary.resumed_from_step == 2)
        // The best accuracy covers the epochs before the resume too.
        let epochTop1 = try String(contentsOfFile: out + "/metrics.jsonl", encoding: .utf8).split(separator: "\n")
            .compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
            .filter { $0["kind"] as? String == "epoch" }.compactMap { $0["test_top1"] as? Double }
        #expect(epochTop1.count == 2 && summary.best_test_top1 == epochTop1.max())
    }

    @Test func corruptOrPartialCheckpointsAreSkipped() throws {
        var options = TrainingOptions()
        options.model = "resnet8"; options.epochs = 2; options.batchSize = 32; options.trainLimit = 64; options.testLimit = 32
        let out = scratchDirectory("corrupt")
        _ = try Trainer(options: options, outputDirectory: out).run(resume: false, progress: ProgressReporter(interactive: false))
        let store = CheckpointStore(directory: out + "/checkpoints")
        var skipped: [String] = []
        #expect(store.newest(skipped: &skipped)?.position.globalStep == 4 && skipped.isEmpty)
        // Truncate last.safetensors and lose the newest state file: epoch 1 is what is left.
        let last = try Data(contentsOf: URL(fileURLWithPath: store.lastPath))
        try last.prefix(last.count / 2).write(to: URL(fileURLWithPath: store.lastPath))
        try FileManager.default.removeItem(atPath: out + "/checkpoints/epoch-0002.state.safetensors")
        let loaded = store.newest(skipped: &skipped)
        #expect(loaded?.position.globalStep == 2 && loaded?.path.hasSuffix("epoch-0001.safetensors") == true)
        #expect(skipped.count == 2, "\(skipped)")
        // Resuming trains epoch 2 again from there.
        let summary = try Trainer(options: options, outputDirectory: out).run(resume: true, progress: ProgressReporter(interactive: false))
        #expect(summary.resumed_from_step == 2 && summary.steps == 4)
    }

    /// `--evaluate-every 2` over 3 epochs: test scores after epochs 2 and 3 only, the same weights as
    /// evaluating every epoch, and a resume may change it (it does not change the weights).
    @Test func evaluateEveryScoresSomeEpochsAndTrainsTheSameWeights() throws {
        var options = TrainingOptions()
        options.model = "resnet8"; options.epochs = 3; options.batchSize = 64; options.trainLimit = 128; options.testLimit = 100
        let quiet = ProgressReporter(interactive: false, plainInterval: 1e9)
        let every = scratchDirectory("eval-every-1"), sparse = scratchDirectory("eval-every-2")
        let a = try Trainer(options: options, outputDirectory: every, threads: 1).run(resume: false, progress: quiet)
        options.evaluateEvery = 2
        let b = try Trainer(options: options, outputDirectory: sparse, threads: 1).run(resume: false, progress: quiet)
        #expect(a.test_top1 == b.test_top1)
        let epochs = try String(contentsOfFile: sparse + "/metrics.jsonl", encoding: .utf8).split(separator: "\n")
            .compactMap { try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
            .filter { $0["kind"] as? String == "epoch" }
        #expect(epochs.map { $0["test_top1"] != nil } == [false, true, true])
        #expect(epochs.allSatisfy { $0["train_accuracy"] is Double })
        try expectIdentical(every + "/checkpoints/last.safetensors", sparse + "/checkpoints/last.safetensors")
        options.epochs = 4; options.evaluateEvery = nil
        let resumed = try Trainer(options: options, outputDirectory: sparse, threads: 1).run(resume: true, progress: quiet)
        #expect(resumed.steps == 8)
        options.evaluateEvery = 0
        do { try options.validate(); Issue.record("0 accepted") } catch { #expect("\(error)".contains("evaluate-every")) }
    }

    @Test func badOptionsNameTheOption() {
        var o = TrainingOptions()
        o.model = "resnet18"
        #expect(throws: TrainingError.self) { try o.validate() }
        o = TrainingOptions(); o.schedule = .multistep
        do { try o.validate() } catch { #expect("\(error)".contains("--milestones")) }
        o = TrainingOptions(); o.batchSize = 1
        do { try o.validate() } catch { #expect("\(error)".contains("--batch")) }
    }

    @Test func topKCountsTiesTowardsTheLowerIndex() {
        let logits = Tensor([0.1, 0.9, 0.0, 0.5, 0.5, 0.2], shape: [2, 3])
        #expect(topKCorrect(logits: logits, labels: [1, 1]) == (1, 2))
        #expect(topKCorrect(logits: logits, labels: [2, 0]) == (1, 2))
    }
}

@Suite(.serialized) struct KillAndResumeTests {
    func train(_ out: String, extra: [String] = []) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try cohortExecutable())
        process.arguments = ["train", "--model", "resnet8", "--train-limit", "1024", "--test-limit", "200", "--epochs", "3",
                             "--batch", "64", "--lr", "0.05", "--seed", "7", "--threads", "1", "--out", out] + extra
        process.standardError = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        return process
    }

    static let reference: String = {
        let out = scratchDirectory("uninterrupted")
        let a = try! KillAndResumeTests().train(out)
        a.waitUntilExit()
        precondition(a.terminationStatus == 0, "the uninterrupted reference run failed")
        return out
    }()

    /// SIGKILL a run in the middle of its second epoch, restart it with --resume: it finishes, and its
    /// final weights equal those of a run that was never interrupted — resumed from the epoch boundary
    /// (`checkpointEvery` 0), or from a step checkpoint inside the epoch (`checkpointEvery` 5).
    @Test(arguments: [0, 5]) func killedRunResumesToTheSameWeights(checkpointEvery: Int) throws {
        let reference = Self.reference, killed = scratchDirectory("killed-\(checkpointEvery)")
        let b = try train(killed, extra: ["--checkpoint-every", String(checkpointEvery)])
        // Wait until the second epoch is under way (its first checkpoint written, a few steps logged).
        let deadline = Date().addingTimeInterval(300)
        var stepsInSecondEpoch = 0
        while Date() < deadline && b.isRunning {
            let log = (try? String(contentsOfFile: killed + "/metrics.jsonl", encoding: .utf8)) ?? ""
            stepsInSecondEpoch = log.split(separator: "\n").filter { $0.contains("\"kind\":\"step\"") && $0.contains("\"epoch\":1,") }.count
            // With step checkpoints, wait for the first one inside the second epoch (global step 20).
            let marker = checkpointEvery == 0 ? "epoch-0001" : "step-000020"
            if stepsInSecondEpoch >= 3 && FileManager.default.fileExists(atPath: killed + "/checkpoints/\(marker).safetensors") { break }
            usleep(2_000)
        }
        try #require(b.isRunning, "the run finished before it could be killed")
        kill(b.processIdentifier, SIGKILL)
        b.waitUntilExit()
        #expect(b.terminationReason == .uncaughtSignal)
        #expect(!FileManager.default.fileExists(atPath: killed + "/summary.json"))
        #expect(stepsInSecondEpoch >= 3 && stepsInSecondEpoch < 16, "killed mid-epoch: \(stepsInSecondEpoch) steps into epoch 2")

        let c = try train(killed, extra: ["--checkpoint-every", String(checkpointEvery), "--resume"])
        c.waitUntilExit()
        #expect(c.terminationStatus == 0)
        let x = try SafeTensors.read(reference + "/checkpoints/last.safetensors")
        let y = try SafeTensors.read(killed + "/checkpoints/last.safetensors")
        #expect(x.names == y.names)
        for name in x.names {
            if x.entry(name)!.dtype == .f32 {
                #expect(try x.floats(name).scalars == y.floats(name).scalars, "\(name) differs after resume")
            } else {
                #expect(try x.integers(name) == y.integers(name), "\(name) differs after resume")
            }
        }
        let summary = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: killed + "/summary.json"))) as! [String: Any]
        let resumedFrom = summary["resumed_from_step"] as? Int ?? -1
        if checkpointEvery == 0 {
            #expect(resumedFrom == 16, "resumed at the epoch boundary")
        } else {
            #expect(resumedFrom > 16 && resumedFrom % checkpointEvery == 0, "resumed mid-epoch, from step \(resumedFrom)")
        }
    }
}

/// One writer per run directory, and logs cut back to a resumed checkpoint's step (issue 16).
@Suite struct RunDirectorySafetyTests {
    @Test func aSecondWriterIsRefusedWithTheHoldersPID() throws {
        let directory = scratchDirectory("lock")
        var first: RunLock? = try RunLock(directory: directory, role: "train", what: "a test")
        do {
            _ = try RunLock(directory: directory, role: "train", what: "another")
            Issue.record("the second lock was granted")
        } catch let held as RunLock.Held {
            #expect(held.holder.hasPrefix("PID \(getpid()) on ") && held.holder.hasSuffix("(a test)"), "\(held)")
        }
        _ = try RunLock(directory: directory, role: "peer", what: "another role")  // other parts of the directory are free
        withExtendedLifetime(first) {}
        first = nil
        _ = try RunLock(directory: directory, role: "train", what: "after release")
    }

    @Test func metricsAreCutBackToTheResumedStep() throws {
        let directory = scratchDirectory("truncate")
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let log = try MetricsLog(path: directory + "/metrics.jsonl")
        func step(_ g: Int) -> MetricsRecord { .step(.init(epoch: 0, step: g - 1, globalStep: g, values: ["loss": 1])) }
        for g in 1...5 { log.write(step(g)) }
        log.write(.epoch(.init(epoch: 0, globalStep: 5, test: nil, values: [:])))
        log.write(step(6))
        #expect(try log.truncate(afterGlobalStep: 5) == 1)
        log.write(step(6))
        #expect(try log.truncate(afterGlobalStep: 3) == 4)
        let steps = try String(contentsOfFile: directory + "/metrics.jsonl", encoding: .utf8).split(separator: "\n")
            .compactMap { try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }.compactMap { $0["global_step"] as? Int }
        #expect(steps == [1, 2, 3])
        #expect(try log.truncate(afterGlobalStep: 10) == 0)
    }

    /// Every kind of metrics line: written as the documented flat JSON (keys sorted, non-finite numbers
    /// as strings) and read back to the same record, the report's numeric fields included.
    @Test func metricsRecordsRoundTripAsFlatJSON() throws {
        let records: [MetricsRecord] = [
            .step(.init(epoch: 1, step: 2, globalStep: 7, values: ["loss": 0.5, "skipped": 1, "mcl": .nan, "lr": .infinity])),
            .epoch(.init(epoch: 1, globalStep: 8, test: EvaluationResult(top1: 0.75, top5: 1, loss: 0.25, count: 0), values: ["train_loss": 0.5])),
            .epoch(.init(epoch: 0, globalStep: 4, test: nil, values: ["seconds": 3])),
            .resume(globalStep: 4),
            .cohortStep(globalStep: 3, present: [0, 2]),
            .cohortEpoch(.init(epoch: 0, globalStep: 4, ensembleTop1: 0.5, ensembleTop5: 0.9, peerTop1: [0.25, 0], seconds: 12)),
        ]
        let encoder = MetricsRecord.makeEncoder(), decoder = MetricsRecord.makeDecoder()
        let lines = try records.map { String(decoding: try encoder.encode($0), as: UTF8.self) }
        #expect(lines[0] == #"{"epoch":1,"global_step":7,"kind":"step","loss":0.5,"lr":"inf","mcl":"nan","skipped":1,"step":2}"#)
        #expect(lines[1] == #"{"epoch":1,"global_step":8,"kind":"epoch","test_loss":0.25,"test_top1":0.75,"test_top5":1,"train_loss":0.5}"#)
        #expect(lines[4] == #"{"global_step":3,"kind":"step","present":[0,2]}"#)
        #expect(lines[5] == #"{"ensemble_top1":0.5,"ensemble_top5":0.9,"epoch":0,"global_step":4,"kind":"epoch","peer_top1":[0.25,0],"seconds":12}"#)
        for (record, line) in zip(records, lines) {
            let back = try decoder.decode(MetricsRecord.self, from: Data(line.utf8))
            if case .step(let s) = record, case .step(let t) = back {
                #expect(t.values["mcl"]!.isNaN && t.values["lr"] == .infinity && t.values["loss"] == s.values["loss"])
            } else {
                #expect(back == record, "\(line)")
            }
        }
        #expect(records[5].numericFields["peer_top1.1"] == 0 && records[1].numericFields["test_top1"] == 0.75)
        #expect(throws: (any Error).self) { try decoder.decode(MetricsRecord.self, from: Data(#"{"kind":"lap","global_step":1}"#.utf8)) }
    }
}
