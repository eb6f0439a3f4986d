import Foundation
import Testing
@testable import Conformance

@Suite struct ConformanceTests {
    static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")
    static let files = (try? ConformanceRunner.fixtureFiles(in: directory)) ?? []

    /// Every kind the runner knows has at least one case in the repository's own copy of the fixtures, so a clone
    /// without `../shared` still checks every layer and loss against the official implementations.
    @Test func everyKindIsCovered() {
        let kinds = Set(Self.files.compactMap { try? Fixture.load($0).kind })
        #expect(Self.files.count == 15)
        #expect(kinds == Set(ConformanceRunner().kinds.keys))
    }

    @Test(arguments: files) func fixturePasses(_ file: URL) {
        let result = ConformanceRunner().run(file: file)
        #expect(result.failure == nil, "\(result.failure ?? "")")
        #expect(!result.comparisons.isEmpty)
        for c in result.comparisons {
            #expect(c.passed, "\(result.name) \(c.name): error \(c.error) > bound \(c.bound) \(c.shapeMismatch ?? "")")
        }
    }

    @Test func unknownKindFails() throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("cohort-unknown-kind.json")
        try Data(#"{"case": "x", "kind": "no_such_kind", "params": {}, "tensors": {}}"#.utf8).write(to: file)
        let result = ConformanceRunner().run(file: file)
        #expect(!result.passed)
        #expect(result.line.contains("FAIL") && result.line.contains("no_such_kind"))
    }

    @Test func malformedFileFails() throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("cohort-malformed.json")
        try Data("{ not json".utf8).write(to: file)
        #expect(!ConformanceRunner().run(file: file).passed)
    }

    @Test func aWrongResultFailsTheMatchingRule() {
        let expected = FixtureTensor(shape: [2], data: [1, -2])
        #expect(Comparison("t", computed: [1, -2.0001], shape: [2], expected: expected).passed)
        #expect(!Comparison("t", computed: [1, -2.001], shape: [2], expected: expected).passed)
        #expect(!Comparison("t", computed: [1, .nan], shape: [2], expected: expected).passed)
        #expect(!Comparison("t", computed: [1, -2], shape: [1, 2, 1], expected: FixtureTensor(shape: [3], data: [1, 2, 3])).passed)
    }
}
