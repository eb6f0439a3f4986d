import Foundation
import Testing

/// Bad input across the commands (issue 20): each gets one clear line that names the fix, exit status 1
/// (64 for a malformed command line), and no usage text when the command line itself was fine.
@Suite(.serialized) struct CommandLineErrorTests {
    struct Case {
        let arguments: [String]
        let expected: [String]
        let usageError: Bool
        init(_ arguments: [String], _ expected: [String], usage: Bool = false) {
            self.arguments = arguments; self.expected = expected; usageError = usage
        }
    }

    @Test func badInputGetsAClearErrorThatNamesTheFix() throws {
        let directory = scratch("errors")
        func yaml(_ name: String, _ text: String) throws -> String {
            let path = directory + "/" + name + ".yaml"
            try write(text, to: path)
            return path
        }
        // One tiny finished run, for the cases that need a run or a checkpoint.
        let finishedConfig = try yaml("finished", """
            data: {dataset: fashion-mnist, train_limit: 128, test_limit: 50}
            epochs: 1
            batch_size: 64
            peers: [{model: resnet8}]
            output: \(directory)/finished
            """)
        let finished = try CohortProcess(["launch", "--config", finishedConfig, "--transport", "inproc", "--threads", "1"])
        try #require(finished.finish() == 0, "\(finished.output)")
        let checkpoints = directory + "/finished/peer-0/checkpoints"
        try FileManager.default.createDirectory(atPath: directory + "/empty", withIntermediateDirectories: true)
        // What a launch that failed before its first step leaves: the peers' directories with empty metrics.
        try FileManager.default.createDirectory(atPath: directory + "/failed/peer-0", withIntermediateDirectories: true)
        try Data().write(to: URL(fileURLWithPath: directory + "/failed/peer-0/metrics.jsonl"))
        try Data().write(to: URL(fileURLWithPath: directory + "/failed/metrics.jsonl"))
        let base = "data: {dataset: fashion-mnist, train_limit: 128, test_limit: 50}\npeers: [{model: resnet8}]\n"

        let cases: [Case] = [
            Case(["--version"], ["cohort ", "wire protocol"]),
            Case(["report", directory + "/empty"], ["is not a run directory", "no metrics.jsonl"]),
            Case(["report", directory + "/failed"], ["is not a run directory", "hold no step", "say why"]),
            Case(["verify", directory + "/empty"], ["no checkpoint files under"]),
            Case(["evaluate", "--checkpoint", directory + "/finished"], ["is a directory", "peer-0/checkpoints/last.safetensors"]),
            Case(["evaluate", "--checkpoint", checkpoints + "/epoch-0001.state.safetensors"], ["training-state file", "epoch-0001.safetensors"]),
            Case(["evaluate", "--checkpoint", checkpoints + "/last.safetensors", "--model", "resnet20"], ["holds a resnet8", "--model resnet8"]),
            Case(["evaluate", "--checkpoint", directory + "/nothing.safetensors"], ["nothing.safetensors"]),
            Case(["train", "--batch", "-5"], ["--batch", "at least 2", "-5"], usage: true),
            Case(["train", "--model", "resnet21"], ["did you mean \"resnet20\""], usage: true),
            Case(["train", "--train-limit", "99999999", "--out", directory + "/t1"], ["--train-limit", "60000"]),
            Case(["train", "--epochs", "1", "--train-limit", "128", "--out", directory + "/finished"], ["already holds a run", "--resume"]),
            Case(["peer", "--config", finishedConfig, "--rank", "5"], ["--rank 5", "ranks 0...0"]),
            Case(["launch", "--config", directory + "/missing.yaml"], ["cannot read configuration", "missing.yaml"]),
            Case(["monitor", "localhost:5571"], ["not a ZeroMQ endpoint", "tcp://localhost:5571"], usage: true),
            Case(["launch", "--config", finishedConfig, "--transport", "tcp"], ["zmq or inproc"], usage: true),
            Case(["launch", "--config", finishedConfig, "--resume", "--fresh"], ["choose one"], usage: true),
            Case(["launch", "--config", finishedConfig], ["holds a finished cohort run", "--fresh"]),
            Case(["coordinator", "--config", finishedConfig], ["already holds a finished cohort run"]),
            Case(["launch", "--config", try yaml("key", base + "epoch: 3\n")], ["unknown key epoch", "did you mean \"epochs\""]),
            Case(["launch", "--config", try yaml("sampler", base + "sampler: m-per-clas\n")], ["sampler", "did you mean \"m-per-class\""]),
            Case(["launch", "--config", try yaml("model", "peers: [{model: resnet9}]\n")], ["peers[0].model", "did you mean \"resnet8\""]),
            Case(["launch", "--config", try yaml("limit", "data: {dataset: fashion-mnist, train_limit: 99999999}\npeers: [{model: resnet8}]\noutput: \(directory)/limit\n"),
                  "--transport", "inproc"], ["data.train_limit must be at most 60000"]),
            Case(["launch", "--config", try yaml("mnist", "data: {dataset: mnist}\npeers: [{model: resnet8}]\noutput: \(directory)/mnist\n"),
                  "--transport", "inproc"], ["data.directory"]),
            Case(["launch", "--config", try yaml("every", base + "evaluation_every: 0\n")], ["evaluation_every"]),
            Case(["launch", "--config", try yaml("warmup", base + "epochs: 3\nschedule: {warmup_epochs: 3}\n")], ["schedule.warmup_epochs", "fewer than epochs (3)"]),
            Case(["train", "--config", finishedConfig, "--epochs", "2"], ["--epochs and --config", "change it there"], usage: true),
            Case(["train", "--config", try yaml("two", "peers: [{model: resnet8}, {model: resnet14}]\n")], ["--rank", "a cohort of 2"]),
            Case(["train", "--config", try yaml("single-mcl", "model: resnet8\nmcl: {enabled: false}\n")], ["unknown key mcl", "allowed here"]),
            Case(["train", "--config", try yaml("single", "model: resnet8\n"), "--rank", "1"], ["--rank", "describes one network"]),
            Case(["train", "--config", try yaml("single-model", "model: resnet2O\n")], ["model must be one of", "did you mean \"resnet20\""]),
            Case(["launch", "--config", try yaml("teacher", base + "teacher: {model: resnet20, checkpoint: \(checkpoints)/last.safetensors, kd: {weight: 0.9}}\noutput: \(directory)/teacher\n"),
                  "--transport", "inproc"], ["teacher.checkpoint", "holds a resnet8", "teacher.model: resnet8"]),
        ]
        #expect(cases.count >= 20)
        for c in cases {
            let p = try CohortProcess(c.arguments)
            let status = p.finish(seconds: 120)
            let output = p.output
            if c.arguments == ["--version"] {
                #expect(status == 0 && c.expected.allSatisfy { output.contains($0) }, "\(output)")
                continue
            }
            #expect(status == (c.usageError ? 64 : 1), "cohort \(c.arguments.joined(separator: " ")): status \(status)\n\(output)")
            for text in c.expected { #expect(output.contains(text), "cohort \(c.arguments.joined(separator: " ")): no \"\(text)\" in\n\(output)") }
            #expect(output.hasPrefix("Error: "), "cohort \(c.arguments.joined(separator: " ")): \(output)")
            if !c.usageError { #expect(!output.contains("Usage:"), "cohort \(c.arguments.joined(separator: " ")): a usage text for a run-time error\n\(output)") }
        }
    }

    /// A monitor pointed where nothing publishes says so after a few seconds, and what to check.
    @Test func aSilentMonitorSaysWhy() throws {
        let monitor = try CohortProcess(["monitor", "tcp://127.0.0.1:9"])
        let said = monitor.waitForOutput(seconds: 30) { $0.contains("nothing from tcp://127.0.0.1:9 for 5 s") }
        kill(monitor.process.processIdentifier, SIGINT)
        _ = monitor.finish(seconds: 10)
        #expect(said, "\(monitor.output)")
        #expect(monitor.output.contains("--key") && monitor.output.contains("log stream at"))
    }
}
