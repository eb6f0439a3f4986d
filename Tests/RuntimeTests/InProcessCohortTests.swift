import Foundation
import Testing
import TestSupport
import Tensors
import NN
import Training
@testable import Runtime

/// A fresh (absent) scratch path for a run directory of this module's tests.
func scratch(_ name: String) -> String {
    let path = NSTemporaryDirectory() + "cohort-runtime-\(name)-\(getpid())"
    try? FileManager.default.removeItem(atPath: path)
    return path
}

@Suite(.serialized) struct InProcessCohortTests {

    /// A small teacher-guided cohort on real Fashion-MNIST data: every loss runs, the run directory has
    /// the promised layout, and the checkpoints carry the losses' state.
    @Test func teacherGuidedCohortRunsAndWritesItsRunDirectory() throws {
        // A teacher from a short `cohort train` run.
        var options = TrainingOptions()
        options.model = "resnet8"; options.epochs = 1; options.batchSize = 64; options.trainLimit = 512; options.testLimit = 200
        let teacherDirectory = scratch("teacher")
        _ = try Trainer(options: options, outputDirectory: teacherDirectory).run(resume: false, progress: ProgressReporter(interactive: false))

        let out = scratch("cohort")
        let c = try CohortConfiguration.parse("""
            data: {dataset: fashion-mnist, train_limit: 512, test_limit: 200}
            epochs: 2
            batch_size: 64
            peers: [{model: resnet8}, {model: resnet14}]
            teacher:
              model: resnet8
              checkpoint: \(teacherDirectory)/checkpoints/last.safetensors
              kd: {weight: 0.9}
              crcd: {weight: 1, gradient_weight: 1, negatives: 16}
              rrd: {weight: 1, keys: 128}
            output: \(out)
            """)
        let summary = try InProcessCohort(configuration: c).run(progress: ProgressReporter(interactive: false))
        #expect(summary.peers.map(\.model) == ["resnet8", "resnet14"] && summary.steps == 16 && summary.transport == "inproc")
        #expect(summary.peers.allSatisfy { $0.test_top1 > 0 && $0.test_top1 <= 1 } && summary.ensemble_top1 > 0, "\(summary)")
        #expect(summary.teacher_top1 != nil)
        let fm = FileManager.default
        for file in ["summary.json", "metrics.jsonl", "peer-0/metrics.jsonl", "peer-1/checkpoints/last.safetensors",
                     "peer-1/checkpoints/epoch-0002.state.safetensors"] {
            #expect(fm.fileExists(atPath: out + "/" + file), "\(file)")
        }
        // Every loss term is logged per peer.
        let firstStep = try String(contentsOfFile: out + "/peer-0/metrics.jsonl", encoding: .utf8).split(separator: "\n")[0]
        for term in ["ce", "vcl", "soft_vcl", "icl", "soft_icl", "logit_kd", "kd", "crcd", "crcd_gradient", "rrd", "total"] {
            #expect(firstStep.contains("\"\(term)\""), "\(term) missing from \(firstStep)")
        }
        // Every peer learns: its cross-entropy falls over the 16 steps.
        for rank in 0..<2 {
            let steps = try String(contentsOfFile: out + "/peer-\(rank)/metrics.jsonl", encoding: .utf8).split(separator: "\n")
                .compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
                .filter { $0["kind"] as? String == "step" }.compactMap { $0["ce"] as? Double }
            #expect(steps.count == 16)
            let early = steps.prefix(4).reduce(0, +) / 4, late = steps.suffix(4).reduce(0, +) / 4
            #expect(late < early - 0.2, "peer \(rank): cross-entropy \(early) -> \(late)")
        }
        // The weights load into a plain network; the state file holds the losses' memories and queue.
        let net = Architecture.resnet14.make(inputChannels: 1, classCount: 10, seed: 5)
        try net.load(try SafeTensors.read(out + "/peer-1/checkpoints/last.safetensors"))
        let state = try SafeTensors.read(out + "/peer-1/checkpoints/epoch-0002.state.safetensors")
        for key in ["loss.mcl_head.proj_head.0.weight", "loss.crcd.contrast.memory_v1", "loss.crcd.contrast.params",
                    "loss.crcd_gradient.contrast.memory_v2", "loss.rrd.queue", "loss.rrd.queue_ptr", "momentum.fc.weight"] {
            #expect(state.entry(key) != nil, "\(key)")
        }
        #expect(try state.floats("loss.crcd.contrast.params").scalars[2] > 0, "the normaliser was set and saved")
        // A fresh peer restored from the checkpoint holds exactly the saved state.
        let fresh = PeerTrainer(rank: 1, configuration: c, dataCount: 512, teacherFeatureCount: 64, stepsPerEpoch: 8)
        try fresh.restore(weights: try SafeTensors.read(out + "/peer-1/checkpoints/last.safetensors"), state: state)
        let saved = state.names.filter { $0.hasPrefix("loss.") }
        #expect(!saved.isEmpty)
        for (prefix, module) in fresh.lossState {
            for (name, tensor) in module.stateDict() {
                #expect(tensor.scalars == (try state.floats(prefix + "." + name)).scalars, "\(prefix).\(name)")
            }
            for (name, counter) in module.namedCounters() {
                #expect([counter.value] == (try state.integers(prefix + "." + name)), "\(prefix).\(name)")
            }
        }
        // Every parameter that has had a gradient has its momentum back (RRD's teacher projection never does).
        #expect(fresh.optimizer.momentumBuffers.count == state.names.filter { $0.hasPrefix("momentum.") }.count)
        #expect(fresh.optimizer.momentumBuffers.count == fresh.optimizer.parameters.count - 2)
        #expect(fresh.optimizer.momentumBuffers["loss.rrd.embed_t.weight"] == nil)
    }

    /// Same seed, same configuration: the same result (batches, initialisation and contrast sampling are
    /// all positional).
    @Test func cohortRunsAreReproducible() throws {
        func run(_ name: String) throws -> CohortSummary {
            let c = try CohortConfiguration.parse("""
                data: {dataset: fashion-mnist, train_limit: 256, test_limit: 100}
                epochs: 1
                batch_size: 32
                seed: 3
                peers: [{model: resnet8}, {model: resnet8}]
                output: \(scratch(name))
                """)
            return try InProcessCohort(configuration: c).run(progress: ProgressReporter(interactive: false))
        }
        let (a, b) = try Parallelism.withThreadCount(1) { (try run("repro-a"), try run("repro-b")) }
        #expect(a.peers.map(\.test_top1) == b.peers.map(\.test_top1) && a.ensemble_top1 == b.ensemble_top1)
    }

    /// `evaluation_every: 2` over 3 epochs: the test set is scored after epochs 2 and 3 only (the last is
    /// always scored), every epoch still ends with its line and checkpoint, and the networks are
    /// bit-identical to a run that evaluates every epoch (evaluation does not touch the weights).
    @Test func evaluationEveryScoresSomeEpochsAndTrainsTheSameWeights() throws {
        func run(_ name: String, every: Int) throws -> String {
            let out = scratch(name)
            let c = try CohortConfiguration.parse("""
                data: {dataset: fashion-mnist, train_limit: 128, test_limit: 100}
                epochs: 3
                batch_size: 64
                seed: 2
                peers: [{model: resnet8}, {model: resnet8}]
                evaluation_every: \(every)
                output: \(out)
                """)
            _ = try InProcessCohort(configuration: c).run(progress: ProgressReporter(interactive: false))
            return out
        }
        let (every, sparse) = try Parallelism.withThreadCount(1) { (try run("eval-every-1", every: 1), try run("eval-every-2", every: 2)) }
        func epochLines(_ path: String) throws -> [[String: Any]] {
            try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n")
                .compactMap { try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
                .filter { $0["kind"] as? String == "epoch" }
        }
        let peerEpochs = try epochLines(sparse + "/peer-1/metrics.jsonl")
        #expect(peerEpochs.map { $0["epoch"] as? Int } == [0, 1, 2])
        #expect(peerEpochs.map { $0["test_top1"] != nil } == [false, true, true])
        #expect(peerEpochs.allSatisfy { $0["train_ce"] is Double })
        #expect(try epochLines(sparse + "/metrics.jsonl").map { $0["epoch"] as? Int } == [1, 2])
        for rank in 0..<2 {
            for file in ["last.safetensors", "epoch-0001.safetensors", "epoch-0003.state.safetensors"] {
                try expectIdentical(every + "/peer-\(rank)/checkpoints/" + file, sparse + "/peer-\(rank)/checkpoints/" + file)
            }
        }
        let a = try JSONDecoder().decode(CohortSummary.self, from: Data(contentsOf: URL(fileURLWithPath: every + "/summary.json")))
        let b = try JSONDecoder().decode(CohortSummary.self, from: Data(contentsOf: URL(fileURLWithPath: sparse + "/summary.json")))
        #expect(a.peers.map(\.test_top1) == b.peers.map(\.test_top1) && a.ensemble_top1 == b.ensemble_top1)
        #expect(throws: ConfigurationError.self) { try CohortConfiguration.parse("evaluation_every: 0") }
    }

    /// A diverging peer (an absurd learning rate): its non-finite steps are skipped — the weights stay
    /// finite — and reported; five in a row stop the run with a clear error.
    @Test func divergingPeerSkipsStepsThenStops() throws {
        let out = scratch("diverge")
        let c = try CohortConfiguration.parse("""
            data: {dataset: fashion-mnist, train_limit: 1024, test_limit: 100}
            epochs: 1
            batch_size: 32
            optimizer: {lr: 1.0e+30, nesterov: false, momentum: 0}
            peers: [{model: resnet8}, {model: resnet8}]
            output: \(out)
            """)
        let cohort = try InProcessCohort(configuration: c)
        #expect(throws: DivergenceError.self) { try cohort.run(progress: ProgressReporter(interactive: false)) }
        let lines = try String(contentsOfFile: out + "/peer-0/metrics.jsonl", encoding: .utf8).split(separator: "\n")
        #expect(lines.filter { $0.contains("\"skipped\"") }.count >= 1)
        for peer in cohort.peers {
            #expect(peer.model.namedParameters().allSatisfy { $0.1.scalars.allSatisfy(\.isFinite) }, "peer \(peer.rank)'s weights stay finite")
        }
    }
}
