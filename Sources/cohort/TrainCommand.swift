import ArgumentParser
import Foundation
import Tensors
import NN
import Data
import Training
import Runtime

/// `cohort train`: trains one network.
struct TrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Train one network (a teacher, or a baseline student) with SGD and cross-entropy.",
        discussion: """
            Writes OUT/metrics.jsonl (one JSON object per step and per epoch), OUT/summary.json, and \
            checkpoints in OUT/checkpoints (safetensors with PyTorch state_dict names; last.safetensors is \
            always the newest). Evaluates on the test set after every epoch.

            With --config FILE the settings come from a YAML file with the keys a cohort uses for the same \
            things (docs/configuration.md): a file with model: and the shared keys (data, seed, epochs, \
            batch_size, sampler, optimizer, schedule, evaluation_batch_size, evaluation_every, \
            checkpoint_every, output), or a cohort's own file with --rank R, which trains peer R's network \
            alone with the cohort's settings (its baseline). Only --out, --threads and --resume may be given \
            beside it.

            Examples:
              cohort train --model resnet20 --dataset fashion-mnist --epochs 3 --batch 128 --lr 0.1 \\
                --schedule cosine --seed 0 --out runs/teacher
              cohort train --config docs/examples/teacher.yaml
              cohort train --config docs/examples/mcl.yaml --rank 0 --out runs/alone
            """)

    @Option(help: "A YAML file of settings (a network's, or a cohort's with --rank) instead of the flags below.",
            completion: .file(extensions: ["yaml", "yml"]))
    var config: String?
    @Option(help: "With a cohort's --config: the peer whose network to train alone.") var rank: Int?

    @Option(help: "Architecture: \(Architecture.allNames).") var model = "resnet20"
    @Option(help: "Data set: fashion-mnist, mnist, cifar10, cifar100.") var dataset = "fashion-mnist"
    @Option(help: "Directory of the data set's files (default for fashion-mnist: /usr/share/datasets/fashion-mnist).")
    var dataDir: String?
    @Option(parsing: .unconditional, help: "Epochs.") var epochs = 3
    @Option(parsing: .unconditional, help: "Images per step.") var batch = 128
    @Option(parsing: .unconditional, help: "Initial learning rate.") var lr: Float = 0.1
    @Option(help: "Learning-rate schedule over the steps: cosine, multistep, constant.") var schedule = "cosine"
    @Option(help: "Epochs at which a multistep schedule multiplies the rate by --gamma, e.g. 150,180,210.")
    var milestones: String?
    @Option(parsing: .unconditional, help: "Factor of a multistep schedule.") var gamma: Float = 0.1
    @Option(parsing: .unconditional, help: "Epochs of linear warm-up from 10% of the rate.") var warmupEpochs = 0
    @Option(parsing: .unconditional, help: "SGD momentum.") var momentum: Float = 0.9
    @Option(parsing: .unconditional, help: "Weight decay.") var weightDecay: Float = 5e-4
    @Flag(inversion: .prefixedNo, help: "Nesterov momentum.") var nesterov = true
    @Option(parsing: .unconditional, help: "Seed of every random choice (initial weights, batches, augmentation).") var seed: UInt64 = 0
    @Option(help: "Batch sampler: shuffled, or m-per-class (each class in a batch at least twice, as MCL).")
    var sampler = "shuffled"
    @Option(parsing: .unconditional, help: "Train on the first N training images only.") var trainLimit: Int?
    @Option(parsing: .unconditional, help: "Evaluate on the first N test images only.") var testLimit: Int?
    @Option(parsing: .unconditional, help: "Also checkpoint every N steps (0: at the end of each epoch only).") var checkpointEvery = 0
    @Option(parsing: .unconditional, help: "Evaluate on the test set every N epochs (and after the last).") var evaluateEvery = 1
    @Option(parsing: .unconditional, help: "Threads for BLAS and Cohort's loops.") var threads = ProcessInfo.processInfo.activeProcessorCount
    @Option(help: "Output directory (default: the configuration's output, else runs/train).") var out: String?
    @Flag(help: "Continue the run in --out from its newest checkpoint.") var resume = false

    /// The flags that set what --config sets.
    static let trainingFlags = ["--model", "--dataset", "--data-dir", "--epochs", "--batch", "--lr", "--schedule", "--milestones", "--gamma",
                                "--warmup-epochs", "--momentum", "--weight-decay", "--nesterov", "--no-nesterov", "--seed", "--sampler",
                                "--train-limit", "--test-limit", "--checkpoint-every", "--evaluate-every"]

    /// The settings and the output directory: from --config, or from the flags.
    func settings() throws -> (options: TrainingOptions, output: String) {
        guard let config else {
            if rank != nil { throw ValidationError("--rank goes with --config (a cohort's file)") }
            return (try options(), out ?? "runs/train")
        }
        let given = CommandLine.arguments.filter { argument in
            Self.trainingFlags.contains { argument == $0 || argument.hasPrefix($0 + "=") }
        }
        if let first = given.first {
            throw ValidationError("\(first.split(separator: "=")[0]) and --config: the file sets the training; change it there (docs/configuration.md), "
                                  + "or drop --config")
        }
        do {
            let loaded = try TrainingConfiguration.load(path: config, rank: rank)
            try loaded.options.validate()
            return (loaded.options, out ?? loaded.output ?? "runs/train")
        } catch let error as ConfigurationError {
            throw CLIError(message: "\(config): \(error)")
        } catch let error as TrainingError {
            throw CLIError(message: "\(config): \(error)")
        }
    }

    func options() throws -> TrainingOptions {
        var o = TrainingOptions()
        o.model = model
        do { o.dataSet = try DataSetKind(name: dataset) } catch { throw ValidationError("--dataset: \(error)") }
        o.dataDirectory = dataDir
        o.epochs = epochs
        o.batchSize = batch
        o.learningRate = lr
        guard let kind = TrainingOptions.ScheduleKind(rawValue: schedule) else {
            throw ValidationError("--schedule must be one of: \(TrainingOptions.ScheduleKind.allCases.map(\.rawValue).joined(separator: ", ")); got \"\(schedule)\"")
        }
        o.schedule = kind
        if let milestones {
            let values = milestones.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces)) }
            guard values.allSatisfy({ $0 != nil && $0! > 0 }) else {
                throw ValidationError("--milestones must be positive epochs separated by commas, e.g. 150,180,210; got \"\(milestones)\"")
            }
            o.milestones = values.map { $0! }
        }
        o.gamma = gamma
        o.warmupEpochs = warmupEpochs
        o.momentum = momentum
        o.weightDecay = weightDecay
        o.nesterov = nesterov
        o.seed = seed
        guard let samplerKind = TrainingOptions.SamplerKind(rawValue: sampler) else {
            throw ValidationError("--sampler must be one of: \(TrainingOptions.SamplerKind.allCases.map(\.rawValue).joined(separator: ", ")); got \"\(sampler)\"")
        }
        o.sampler = samplerKind
        o.trainLimit = trainLimit
        o.testLimit = testLimit
        o.checkpointEvery = checkpointEvery
        o.evaluateEvery = evaluateEvery == 1 ? nil : evaluateEvery
        do { try o.validate() } catch { throw ValidationError("\(error)") }
        return o
    }

    func validate() throws {
        guard threads >= 1 else { throw ValidationError("--threads must be at least 1") }
        if config == nil { _ = try options() }
    }

    func run() throws {
        Parallelism.setThreadCount(threads)
        do {
            let (options, out) = try settings()
            let trainer = try Trainer(options: options, outputDirectory: out, threads: threads)
            let summary = try trainer.run(resume: resume)
            print(String(format: "%@ on %@: test top-1 %.2f%%, top-5 %.2f%% after %d epochs (%d steps) in %.0f s, %.0f images/s; wrote %@",
                         summary.model, summary.dataset, 100 * summary.test_top1, 100 * summary.test_top5, summary.epochs,
                         summary.steps, summary.seconds, summary.images_per_s, out))
        } catch let error as DataSetError {
            throw CLIError(message: "\(error)")
        } catch let error as TrainingError {
            throw CLIError(message: "\(error)")
        } catch let error as RunLock.Held {
            throw CLIError(message: "\(error)")
        }
    }
}

/// `cohort evaluate`: the accuracy of a checkpoint.
struct EvaluateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "evaluate",
        abstract: "Report the test accuracy of a checkpoint (a Cohort checkpoint, or a PyTorch state dict saved as safetensors).")

    @Option(help: "A safetensors checkpoint.") var checkpoint: String
    @Option(help: "Data set: fashion-mnist, mnist, cifar10, cifar100.") var dataset = "fashion-mnist"
    @Option(help: "Directory of the data set's files.") var dataDir: String?
    @Option(help: "Architecture, when the file does not name one (PyTorch-saved state dicts).") var model: String?
    @Option(parsing: .unconditional, help: "Evaluate on the first N test images only.") var testLimit: Int?
    @Option(help: "Images per evaluation batch.") var batch = 500
    @Option(help: "Threads.") var threads = ProcessInfo.processInfo.activeProcessorCount
    @Flag(help: "Print one JSON line.") var json = false

    func run() throws {
        Parallelism.setThreadCount(threads)
        let kind: DataSetKind
        do { kind = try DataSetKind(name: dataset) } catch { throw ValidationError("--dataset: \(error)") }
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: checkpoint, isDirectory: &isDirectory), isDirectory.boolValue {
            let candidates = ["/checkpoints/last.safetensors", "/peer-0/checkpoints/last.safetensors"].map { checkpoint + $0 }
                .filter { FileManager.default.fileExists(atPath: $0) }
            throw CLIError(message: "\(checkpoint) is a directory; give a checkpoint file" + (candidates.first.map { ", e.g. --checkpoint \($0)" } ?? " (*.safetensors)"))
        }
        if checkpoint.hasSuffix(".state.safetensors") {
            throw CLIError(message: "\(checkpoint) is a training-state file (momentum, loss memories), not weights; evaluate \(checkpoint.dropLast(".state.safetensors".count)).safetensors")
        }
        let file: SafeTensors
        do { file = try SafeTensors.read(checkpoint) } catch { throw CLIError(message: "\(error)") }
        guard let name = model ?? file.metadata["model"] else {
            throw CLIError(message: "\(checkpoint) does not say which model it holds; pass --model (one of: \(Architecture.allNames))")
        }
        guard let architecture = Architecture(name: name) else {
            throw CLIError(message: "unknown model \"\(name)\"\(suggestion(for: name, among: Architecture.allCases.map(\.rawValue))); choose one of: \(Architecture.allNames)")
        }
        if let saved = file.metadata["model"], saved != name {
            throw CLIError(message: "\(checkpoint) holds a \(saved) (its metadata says so), not a \(name); drop --model or pass --model \(saved)")
        }
        let net = architecture.make(inputChannels: kind.channels, classCount: kind.classCount, seed: 0)
        do { try net.load(file) } catch {
            throw CLIError(message: "\(checkpoint) does not fit \(name) for \(kind.rawValue) (\(kind.shapeDescription), \(kind.classCount) classes): \(error)")
        }
        let testSet: DataSet
        do { testSet = try DataSet.load(kind, split: .test, directory: dataDir).prefix(testLimit) } catch {
            throw CLIError(message: "\(error)")
        }
        let result = evaluate(net, on: testSet, batchSize: batch)
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            print(String(decoding: try encoder.encode(result), as: UTF8.self))
        } else {
            print(String(format: "%@ on %@ test (%d images): top-1 %.2f%%, top-5 %.2f%%, loss %.4f", name, kind.rawValue,
                         result.count, 100 * result.top1, 100 * result.top5, result.loss))
        }
    }
}

/// A failure to report as one clear line, exiting with status 1.
struct CLIError: Error, CustomStringConvertible {
    let message: String
    var description: String { message }
}
