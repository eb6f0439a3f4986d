import Foundation
import Testing
@testable import Runtime

@Suite struct ConfigurationTests {
    /// Every example in docs/examples reads: the cohorts' files as cohorts, the single network's with
    /// `cohort train --config` (the teacher of mcl-teacher.yaml, written where that file looks for it).
    @Test func everyExampleReads() throws {
        let docs = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("docs/examples").path
        let files = try FileManager.default.contentsOfDirectory(atPath: docs).filter { $0.hasSuffix(".yaml") }.sorted()
        #expect(files.count >= 4)
        for file in files where file != "teacher.yaml" { _ = try CohortConfiguration.load(path: docs + "/" + file) }
        let teacher = try TrainingConfiguration.load(path: docs + "/teacher.yaml", rank: nil)
        let cohort = try CohortConfiguration.load(path: docs + "/mcl-teacher.yaml")
        #expect(teacher.options.model == cohort.teacher?.model)
        #expect(teacher.output.map { $0 + "/checkpoints/last.safetensors" } == cohort.teacher?.checkpoint)
    }

    @Test func readsEveryKey() throws {
        let c = try CohortConfiguration.parse("""
            data: {dataset: cifar100, directory: /data/c100, train_limit: 500, test_limit: 100}
            seed: 7
            epochs: 240
            batch_size: 64
            sampler: shuffled
            optimizer: {lr: 0.05, momentum: 0.9, weight_decay: 0.0005, nesterov: false}
            schedule: {kind: multistep, milestones: [150, 180, 210], gamma: 0.1, warmup_epochs: 1}
            peers: [{model: resnet32x4}, {model: wrn-16-2}]
            mcl:
              enabled: true
              tau: 0.07
              temperature: 3
              embedding_dim: 64
              weights: {vcl: 0.1, soft_vcl: 1.0, icl: 0.1, soft_icl: 1.0, logit: 0}
            teacher:
              model: resnet56
              checkpoint: t.safetensors
              schedule: linear-decay
              kd: {weight: 0.9, temperature: 4}
              crcd: {weight: 1, gradient_weight: 0, negatives: 100, temperature: 0.05, momentum: 0.5, embedding_dim: 32}
              rrd: {weight: 1, memory: momentum, keys: 1000, momentum: 0.4, student_temperature: 0.1, teacher_temperature: 0.02, embedding_dim: 32}
            output: runs/x
            evaluation_batch_size: 250
            """)
        #expect(c.data.dataSet == .cifar100 && c.data.directory == "/data/c100" && c.data.trainLimit == 500 && c.data.testLimit == 100)
        #expect(c.seed == 7 && c.epochs == 240 && c.batchSize == 64 && c.sampler == .shuffled)
        #expect(c.learningRate == 0.05 && !c.nesterov && c.schedule == .multistep && c.milestones == [150, 180, 210] && c.warmupEpochs == 1)
        #expect(c.peers.map(\.model) == ["resnet32x4", "wrn-16-2"])
        #expect(c.mcl.embeddingDimension == 64 && c.mcl.settings.logitDistillation == 0)
        #expect(c.teacher?.model == "resnet56" && c.teacher?.schedule == .linearDecay)
        #expect(c.teacher?.kd?.weight == 0.9 && c.teacher?.crcd?.gradientWeight == 0 && c.teacher?.crcd?.negatives == 100)
        #expect(c.teacher?.rrd?.keys == 1000 && c.teacher?.rrd?.memory == .momentum && c.teacher?.rrd?.momentum == 0.4)
        #expect(c.output == "runs/x" && c.evaluationBatchSize == 250)
    }

    @Test(arguments: [
        ("peers: [{model: resnet8}]\nepoch: 3", "unknown key epoch"),
        ("peers: [{model: resnet8, width: 2}]", "unknown key peers[0].width"),
        ("peers: [{model: resnet8}, {model: resnet18}]", "peers[1].model must be one of"),
        ("peers: []", "peers must be at least one peer"),
        ("seed: 1", "missing peers"),
        ("peers: [{model: resnet8}]\nbatch_size: many", "batch_size must be an integer"),
        ("peers: [{model: resnet8}]\noptimizer: {lr: -1}", "optimizer.lr must be a number >="),
        ("peers: [{model: resnet8}]\nschedule: {kind: step}", "schedule.kind must be one of cosine, multistep, constant"),
        ("peers: [{model: resnet8}]\nschedule: {kind: multistep}", "missing schedule.milestones"),
        ("peers: [{model: resnet8}]\ndata: {dataset: imagenet}", "data.dataset must be one of"),
        ("peers: [{model: resnet8}]\nteacher: {model: resnet56}", "missing teacher.checkpoint"),
        ("peers: [{model: resnet8}]\nteacher: {model: resnet56, checkpoint: x, rrd: {keys: 1000}}", "teacher.rrd.keys must be a multiple of batch_size"),
        ("peers: [{model: resnet8}]\nmcl: {weights: {vcl: 0.1, scl: 1}}", "unknown key mcl.weights.scl"),
        ("peers: [{model: resnet8}\n", "not valid YAML"),
    ])
    func badConfigurationsNameTheKey(_ text: String, _ expected: String) {
        do {
            _ = try CohortConfiguration.parse(text)
            Issue.record("accepted: \(text)")
        } catch {
            #expect("\(error)".contains(expected), "\(error)")
        }
    }
}

@Suite struct ConfigurationDigestTests {
    @Test func sha256MatchesTheStandardVectors() {
        #expect(SHA256.hex([]) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(SHA256.hex(Array("abc".utf8)) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        let long = Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8)
        #expect(SHA256.hex(long) == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
    }

    /// The digest covers what shapes training, not what differs between hosts.
    @Test func digestIgnoresHostLocalSettings() throws {
        let base = "peers: [{model: resnet8}, {model: resnet8}]\n"
        let digest = try CohortConfiguration.parse(base).digest
        let local = try CohortConfiguration.parse(base + """
            output: /elsewhere
            data: {directory: /data/fmnist}
            network: {coordinator: "tcp://*:6000", stream: "tcp://*:6001", timeout: 30}
            """)
        #expect(local.digest == digest && local.network.timeout == 30 && local.network.coordinator == "tcp://*:6000")
        #expect(try CohortConfiguration.parse(base + "optimizer: {lr: 0.05}").digest != digest)
        #expect(try CohortConfiguration.parse(base + "seed: 1").digest != digest)
        #expect(try CohortConfiguration.parse("peers: [{model: resnet8}, {model: resnet14}]").digest != digest)
        #expect(throws: ConfigurationError.self) { try CohortConfiguration.parse(base + "network: {coordinator: \"localhost:5\"}") }
    }
}

@Suite struct CanonicalSettingsTests {
    /// The documented canonical text: sorted key=value lines, defaults included, floats as shortest decimals.
    @Test func canonicalTextIsTheDocumentedOne() throws {
        let c = try CohortConfiguration.parse("""
            peers: [{model: resnet8}, {model: wrn_16_2}]
            optimizer: {lr: 0.05}
            teacher: {model: resnet20, checkpoint: /x.safetensors, kd: {temperature: 4}}
            """)
        let lines = c.canonicalSettings.split(separator: "\n").map(String.init)
        #expect(lines == lines.sorted())
        for line in ["optimizer.lr=0.05", "peers.1.model=wrn_16_2", "teacher.kd.temperature=4.0", "teacher.kd.weight=0.9",
                     "data.train_limit=none", "mcl.tau=0.07", "sampler=m-per-class", "teacher.schedule=mimic"] {
            #expect(lines.contains(line), "\(line)")
        }
        #expect(!c.canonicalSettings.contains("checkpoint") && !c.canonicalSettings.contains("teacher.crcd"))
        #expect(c.digest == SHA256.hex(Array(c.canonicalSettings.utf8)))
    }
}
