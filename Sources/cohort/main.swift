import ArgumentParser

/// The `cohort` command line.
struct Cohort: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cohort",
        abstract: "Distributed online distillation: mutual contrastive learning in a cohort of networks.",
        subcommands: [TrainCommand.self, EvaluateCommand.self, LaunchCommand.self, CoordinatorCommand.self, PeerCommand.self, MonitorCommand.self, KeygenCommand.self, VerifyCommand.self, ConformanceCommand.self, BenchCommand.self, ReportCommand.self])
}

Cohort.main()
