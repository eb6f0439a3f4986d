import Foundation
import Testing
@testable import Runtime

@Suite struct ConfigurationTests {
    /// docs/configuration.md holds the key reference exactly as the schema produces it (`cohort config reference`),
    /// and the reference lists every key the parser accepts.
    @Test func theDocumentedReferenceIsTheSchemas() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let doc = try String(contentsOf: root.appendingPathComponent("docs/configuration.md"), encoding: .utf8)
        let reference = ConfigurationSchema.reference()
        #expect(doc.contains(reference), "docs/configuration.md differs from `cohort config reference`; paste its output there")
        #expect(reference.split(separator: "\n").count == ConfigurationSchema.keys.count + 2)
        // A key the reference does not list is refused, naming the keys allowed there.
        #expect(throws: ConfigurationError.unknownKey(path: "mcl.weights.scl", allowed: ["vcl", "soft_vcl", "icl", "soft_icl", "logit"])) {
            try CohortConfiguration.parse("peers: [{model: resnet8}]\nmcl: {weights: {scl: 1}}")
        }
        // Every documented key can be written: a file setting every leaf key of a cohort reads.
        let everything = try CohortConfiguration.parse(CanonicalSettingsGoldenTests.corpus[2].0)
        #expect(everything.teacher?.rrd?.memory == .momentum && everything.network.heartbeatTimeout == 5 && everything.checkpointEvery == 100)
    }

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

/// The digests of a set of configurations, pinned: the canonical settings text (and so every cohort's
/// digest and every run's resume check) stays byte for byte what it was, whatever produces it.
@Suite struct CanonicalSettingsGoldenTests {
    static let corpus: [(String, String)] = [
        // docs/protocol.md's worked example.
        ("peers: [{model: resnet20}, {model: resnet8}]\n", "13da386964da27fdfcf070451a3cf4919deccaab32bb1162f9241407354d4dfb"),
        ("peers: [{model: resnet8}, {model: resnet8}]\n", "95b7e61e80e521bc28dfebed2821ea97e1ad2b29c3152a634e8e48fedf891de7"),
        ("""
        data: {dataset: CIFAR-100, directory: /d, train_limit: 500, test_limit: 100}
        seed: 7
        epochs: 240
        batch_size: 64
        sampler: shuffled
        optimizer: {lr: 0.05, momentum: 0.9, weight_decay: 0.0005, nesterov: false}
        schedule: {kind: multistep, milestones: [150, 180, 210], gamma: 0.1, warmup_epochs: 2}
        peers: [{model: resnet32x4}, {model: ResNet8}, {model: wrn-16-2}]
        mcl: {enabled: true, tau: 0.1, temperature: 4, embedding_dim: 64, soft_ramp_epochs: 1.5,
              weights: {vcl: 0.2, soft_vcl: 0.5, icl: 0.3, soft_icl: 0.25, logit: 0}, layer_weights: [1, 0.5, 1e-05]}
        teacher:
          model: resnet56
          checkpoint: /t.safetensors
          schedule: linear-decay
          kd: {weight: 0.5, temperature: 2}
          crcd: {weight: 0.8, gradient_weight: 0, negatives: 100, temperature: 0.07, momentum: 0.9, embedding_dim: 32}
          rrd: {weight: 2, memory: momentum, keys: 1000, momentum: 0.4, student_temperature: 0.2, teacher_temperature: 0.03, embedding_dim: 16}
        output: /o
        evaluation_batch_size: 250
        evaluation_every: 5
        checkpoint_every: 100
        network: {coordinator: "tcp://*:6000", stream: "tcp://*:6001", timeout: 30, join_timeout: 60, heartbeat_interval: 0.5, heartbeat_timeout: 5}
        """, "e3b34f54161123171c0624c68bf75aa48db618ba4a41d0b252516cd1ad54b249"),
        ("peers: [{model: resnet20}]\nteacher: {model: resnet20, checkpoint: x, kd: {}, crcd: {}, rrd: {}}\n", "0886335a0252e090f96980c931ac884fc0b57709ac12cb59af39aa4d1fc59e08"),
        ("peers: [{model: resnet8}, {model: resnet14}]\nmcl: {enabled: false}\nschedule: {kind: constant}\noptimizer: {momentum: 0, nesterov: false}\n", "955cc548d1cbe7f587ac3f80921422f838fde368b735b7051c17764bd85fe2a1"),
    ]

    @Test func digestsAreUnchanged() throws {
        for (i, (text, digest)) in Self.corpus.enumerated() {
            let c = try CohortConfiguration.parse(text)
            #expect(c.digest == digest, "corpus \(i): \(c.digest)\n\(c.canonicalSettings)")
        }
    }
}
