import ArgumentParser
import Wire
import Tensors

/// This build's version.
let cohortVersion = "0.9.0"

/// The `cohort` command line.
struct Cohort: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cohort",
        abstract: "Distributed online distillation: mutual contrastive learning in a cohort of networks.",
        version: "cohort \(cohortVersion) (wire protocol \(WireCodec.version); matrix products on \(Gemm.path) on this CPU)",
        subcommands: [TrainCommand.self, EvaluateCommand.self, LaunchCommand.self, CoordinatorCommand.self, PeerCommand.self, MonitorCommand.self, KeygenCommand.self, VerifyCommand.self, ConformanceCommand.self, BenchCommand.self, ReportCommand.self, ConfigCommand.self])
}

Cohort.main()
