import Foundation
import Testing
import TestSupport

/// `cohort train --config` (issue 20): one network configured with the keys a cohort uses.
@Suite struct TrainConfigurationTests {
    /// A network's YAML file trains bit for bit what the same settings as flags train; a cohort's file with
    /// --rank trains that peer's network with the cohort's settings.
    @Test func aFileTrainsWhatTheFlagsTrain() throws {
        let directory = scratch("train-config")
        try write("""
            model: resnet8
            data: {dataset: fashion-mnist, train_limit: 256, test_limit: 100}
            seed: 5
            epochs: 1
            batch_size: 64
            sampler: m-per-class
            optimizer: {lr: 0.05, weight_decay: 0.001}
            schedule: {kind: constant}
            output: \(directory)/from-file
            """, to: directory + "/single.yaml")
        let fromFile = try CohortProcess(["train", "--config", directory + "/single.yaml", "--threads", "1"])
        #expect(fromFile.finish() == 0, "\(fromFile.output)")
        let fromFlags = try CohortProcess(["train", "--model", "resnet8", "--train-limit", "256", "--test-limit", "100", "--seed", "5",
                                           "--epochs", "1", "--batch", "64", "--sampler", "m-per-class", "--lr", "0.05", "--weight-decay", "0.001",
                                           "--schedule", "constant", "--threads", "1", "--out", directory + "/from-flags"])
        #expect(fromFlags.finish() == 0, "\(fromFlags.output)")
        try expectIdentical(directory + "/from-file/checkpoints/last.safetensors", directory + "/from-flags/checkpoints/last.safetensors")

        // Peer 1 of a cohort, alone: its model, the cohort's sampler and seed; --out overrides the file's output.
        try write("""
            data: {dataset: fashion-mnist, train_limit: 256, test_limit: 100}
            seed: 5
            epochs: 1
            batch_size: 64
            peers: [{model: resnet8}, {model: resnet14}]
            mcl: {embedding_dim: 32}
            output: \(directory)/cohort
            """, to: directory + "/cohort.yaml")
        let alone = try CohortProcess(["train", "--config", directory + "/cohort.yaml", "--rank", "1", "--threads", "1", "--out", directory + "/alone"])
        #expect(alone.finish() == 0, "\(alone.output)")
        let options = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: directory + "/alone/options.json"))) as? [String: Any]
        #expect(options?["model"] as? String == "resnet14" && options?["sampler"] as? String == "m-per-class" && options?["seed"] as? Int == 5,
                "\(options ?? [:])")
        #expect(!FileManager.default.fileExists(atPath: directory + "/cohort"))
    }

    /// `cohort config check` on every example: valid, every key's effective value, the digest of a cohort's file;
    /// a bad file names the key, exit status 1.
    @Test func configCheckAcceptsEveryExample() throws {
        let examples = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("docs/examples").path
        let files = try FileManager.default.contentsOfDirectory(atPath: examples).filter { $0.hasSuffix(".yaml") }.sorted()
        #expect(files.count >= 4)
        for file in files {
            let check = try CohortProcess(["config", "check", examples + "/" + file])
            #expect(check.finish() == 0, "\(file): \(check.output)")
            #expect(check.output.contains("valid;") && check.output.contains("optimizer.lr") && check.output.contains("data.dataset"), "\(check.output)")
            if file != "teacher.yaml" {
                #expect(check.output.contains("digest: ") && check.output.contains("mcl.tau") && check.output.contains("network.heartbeat_timeout"))
            }
        }
        let directory = scratch("config-check")
        try write("peers: [{model: resnet8}]\nteacher: {model: resnet20, checkpoint: x, rrd: {keys: 1000}}\n", to: directory + "/bad.yaml")
        let bad = try CohortProcess(["config", "check", directory + "/bad.yaml"])
        #expect(bad.finish() == 1 && bad.output.contains("teacher.rrd.keys must be a multiple of batch_size (128), got 1000"), "\(bad.output)")
        let reference = try CohortProcess(["config", "reference"])
        #expect(reference.finish() == 0 && reference.output.hasPrefix("| key | type | allowed | default | digest |"))
    }
}
