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
}
