import ArgumentParser
import Foundation
import Conformance

/// `cohort conformance DIR`: runs every reference fixture under DIR.
struct ConformanceCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "conformance",
        abstract: "Check the engine against reference fixtures from the official PyTorch implementations.",
        discussion: """
            Runs every .json fixture under DIRECTORY (recursively), prints one line per case (name, PASS or FAIL, \
            the worst error against its bound) and a final "N passed, M failed". Exits 1 when any case fails.
            """)

    @Argument(help: "A directory of fixture files, e.g. Tests/ConformanceTests/Fixtures.")
    var directory: String

    func run() throws {
        let files: [URL]
        do {
            files = try ConformanceRunner.fixtureFiles(in: URL(fileURLWithPath: directory))
        } catch {
            throw CLIError(message: "cannot read fixtures: \(error)")
        }
        guard !files.isEmpty else { throw CLIError(message: "no .json fixture files under \(directory)") }
        let runner = ConformanceRunner()
        var passed = 0, failed = 0
        for file in files {
            let result = runner.run(file: file)
            print(result.line)
            if result.passed { passed += 1 } else { failed += 1 }
        }
        print("\(passed) passed, \(failed) failed")
        if failed > 0 { throw ExitCode(1) }
    }
}
