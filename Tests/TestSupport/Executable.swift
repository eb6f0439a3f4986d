import Foundation

/// The `cohort` executable was not found beside the tests.
public struct MissingExecutable: Error, CustomStringConvertible {
    public let candidates: [String]
    public var description: String { "the cohort executable is not built (looked at \(candidates)); run `swift build` first" }
}

/// The `cohort` executable built beside the tests (`swift build` builds it; CI runs that first).
public func cohortExecutable() throws -> String {
    let candidates = [
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("cohort").path,
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../.build/debug/cohort").path,
    ]
    guard let found = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
        throw MissingExecutable(candidates: candidates)
    }
    return found
}
