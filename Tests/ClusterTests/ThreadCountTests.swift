import Foundation
import Testing
import TestSupport
import NN
import Tensors
import Training
import Runtime

/// The weights do not depend on the thread count: every reduction is split into parts the problem fixes
/// (`Parallelism.fixedRanges`), whatever the number of threads that compute them.
@Suite(.serialized) struct ThreadCountTests {
    /// A cohort with a teacher (KD, CRCD, RRD) and layer-wise MCL, trained in one process at 1, 2 and 3
    /// threads and as processes with 2 threads each, ends with bit-identical weights, loss states and momentum.
    @Test func aCohortTrainsTheSameWeightsAtAnyThreadCount() throws {
        let directory = scratch("threads")
        let text = cohortConfiguration(epochs: 1, trainLimit: 256, extra: "mcl: {embedding_dim: 16, layer_weights: [1.0, 0.5, 1.0]}")
            .replacingOccurrences(of: "mcl: {embedding_dim: 32}\n", with: "")
        let config = directory + "/cohort.yaml"
        try write(text, to: config)
        for threads in 1...3 {
            var configuration = try CohortConfiguration.parse(text)
            configuration.output = directory + "/threads-\(threads)"
            _ = try Parallelism.withThreadCount(threads) {
                try InProcessCohort(configuration: configuration).run(progress: ProgressReporter(interactive: false))
            }
        }
        let processes = try CohortProcess(["launch", "--config", config, "--threads", "6", "--out", directory + "/processes"])
        #expect(processes.finish() == 0, "\(processes.output)")
        for run in ["threads-2", "threads-3", "processes"] {
            for rank in 0..<3 {
                for file in ["last.safetensors", "epoch-0001.state.safetensors"] {
                    try expectIdentical(directory + "/threads-1/peer-\(rank)/checkpoints/" + file, directory + "/\(run)/peer-\(rank)/checkpoints/" + file)
                }
            }
        }
    }

    /// `cohort train` likewise: one network at 1 and 2 threads.
    @Test func oneNetworkTrainsTheSameWeightsAtAnyThreadCount() throws {
        var options = TrainingOptions()
        options.model = "resnet14"; options.epochs = 1; options.batchSize = 64; options.trainLimit = 256; options.testLimit = 100
        let directories = (1...2).map { scratch("train-threads-\($0)") }
        for (threads, directory) in zip(1...2, directories) {
            _ = try Parallelism.withThreadCount(threads) {
                try Trainer(options: options, outputDirectory: directory).run(resume: false, progress: ProgressReporter(interactive: false))
            }
        }
        for file in ["last.safetensors", "epoch-0001.state.safetensors"] {
            try expectIdentical(directories[0] + "/checkpoints/" + file, directories[1] + "/checkpoints/" + file)
        }
    }
}
