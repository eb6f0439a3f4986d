import Foundation
import Testing
import Tensors
@testable import NN

/// Cohort's checkpoints against the Python `safetensors` package, the reader and writer PyTorch users
/// have (`pip install safetensors numpy`; CI installs them).
@Suite struct SafeTensorsInteropTests {
    static let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("Resources/safetensors_interop.py").path

    func python(_ arguments: [String]) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", Self.script] + arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    @Test func pythonReadsACohortCheckpoint() throws {
        let net = Architecture.resnet8.make(inputChannels: 1, classCount: 10, seed: 11)
        var generator = SeededGenerator(seed: 12)
        _ = net(Tensor.randomNormal([4, 1, 28, 28], using: &generator))   // move the running statistics
        let file = net.safeTensors(metadata: ["model": "resnet8", "epoch": "2"])
        let dir = NSTemporaryDirectory() + "cohort-interop-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try file.write(to: dir + "/model.safetensors")
        var tensors: [String: Any] = [:]
        for (name, t) in net.stateDict() {
            tensors[name] = ["shape": t.shape, "dtype": "float32", "values": t.scalars.map { Double($0) }]
        }
        for (name, c) in net.namedCounters() {
            tensors[name] = ["shape": [Int](), "dtype": "int64", "values": [c.value]]
        }
        let expected: [String: Any] = ["names": file.names, "tensors": tensors, "metadata": ["model": "resnet8", "epoch": "2"]]
        try JSONSerialization.data(withJSONObject: expected).write(to: URL(fileURLWithPath: dir + "/expected.json"))
        let (status, output) = try python(["read", dir + "/model.safetensors", dir + "/expected.json"])
        #expect(status == 0, "python could not read the checkpoint (pip install safetensors numpy?): \(output)")
    }

    @Test func aPythonStateDictLoadsIntoCohort() throws {
        let net = Architecture.resnet8.make(inputChannels: 1, classCount: 10, seed: 13)
        var keys: [[Any]] = []
        for (name, t) in net.stateDict() {
            keys.append([name, t.shape])
            if name.hasSuffix("running_var") {
                keys.append([String(name.dropLast("running_var".count)) + "num_batches_tracked", [Int]()])
            }
        }
        let dir = NSTemporaryDirectory() + "cohort-interop-w-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try JSONSerialization.data(withJSONObject: keys).write(to: URL(fileURLWithPath: dir + "/keys.json"))
        let (status, output) = try python(["write", dir + "/python.safetensors", dir + "/keys.json"])
        try #require(status == 0, "python could not write (pip install safetensors numpy?): \(output)")
        let file = try SafeTensors.read(dir + "/python.safetensors")
        #expect(file.metadata["written_by"] == "python safetensors")
        try net.load(file)
        for (i, entry) in keys.enumerated() {
            let name = entry[0] as! String
            if name.hasSuffix("num_batches_tracked") {
                #expect(net.namedCounters().first { $0.0 == name }!.1.value == 7 + i)
            } else {
                let t = net.stateDict().first { $0.0 == name }!.1
                #expect(t.scalars == (0..<t.count).map { Float($0) * 0.001 + Float(i) }, "\(name)")
            }
        }
    }
}
