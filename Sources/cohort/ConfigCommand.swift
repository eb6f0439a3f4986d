import ArgumentParser
import Foundation
import Runtime

/// `cohort config`: check a configuration file, or print the key reference.
struct ConfigCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "config",
        abstract: "Check a configuration file, or print the reference of every key.",
        subcommands: [ConfigCheckCommand.self, ConfigReferenceCommand.self])
}

/// `cohort config check FILE`: validates without starting anything.
struct ConfigCheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Validate a configuration file and print its effective settings (defaults filled in) and its digest.",
        discussion: """
            FILE is a cohort's file (cohort launch, coordinator, peer) or a single network's (cohort train \
            --config: model instead of peers). Nothing is started and no data is loaded: a limit beyond the \
            data set's size is reported when the data is loaded. Exits 1 with the key and the fix when the \
            file is not valid.
            """)

    @Argument(help: "The YAML file.", completion: .file(extensions: ["yaml", "yml"])) var file: String

    func run() throws {
        let text: String
        do { text = try String(contentsOfFile: file, encoding: .utf8) } catch {
            throw CLIError(message: "cannot read \(file): \(error.localizedDescription)")
        }
        let singleNetwork: Bool
        let configuration: CohortConfiguration
        do {
            singleNetwork = try TrainingConfiguration.describesOneNetwork(text)
            configuration = try CohortConfiguration.parse(text, singleNetwork: singleNetwork)
        } catch {
            throw CLIError(message: "\(file): \(error)")
        }
        let models = configuration.peers.map(\.model)
        if singleNetwork {
            print("\(file): valid; one network (cohort train --config): \(models[0])")
        } else {
            print("\(file): valid; a cohort of \(models.count) peer(s) (\(models.joined(separator: ", ")))"
                  + (configuration.teacher.map { " with a \($0.model) teacher" } ?? ""))
        }
        let settings = ConfigurationSchema.effectiveSettings(configuration, singleNetwork: singleNetwork)
        let width = settings.map(\.key.count).max() ?? 0
        for (key, value) in settings { print(key.padding(toLength: width, withPad: " ", startingAt: 0) + "  " + value) }
        if !singleNetwork { print("digest: \(configuration.digest)") }
        if let checkpoint = configuration.teacher?.checkpoint, !FileManager.default.fileExists(atPath: checkpoint) {
            print("note: teacher.checkpoint \(checkpoint) does not exist yet; train the teacher first (cohort train) or point the key at its checkpoint")
        }
    }
}

/// `cohort config reference`: every key as a markdown table (docs/configuration.md holds it verbatim).
struct ConfigReferenceCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reference",
        abstract: "Print every configuration key (type, allowed values, default, digest, meaning) as a markdown table.")

    func run() throws {
        print(ConfigurationSchema.reference(), terminator: "")
    }
}
