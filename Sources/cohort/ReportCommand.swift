import ArgumentParser
import Foundation
import Report

/// `cohort report`: a self-contained HTML page (and optionally one SVG per chart) of one or more runs.
struct ReportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "report",
        abstract: "Chart one or more runs: every loss term, accuracy, learning rate and throughput, and a table of final results.",
        discussion: """
            Reads the run directories of `cohort launch` (every peer and the ensemble) and `cohort train`. With several \
            runs, each network of each run is one line on shared axes. The page has no scripts and loads nothing.

            Examples:
              cohort report runs/mcl
              cohort report runs/mcl runs/layer-mcl --out compare.html --charts charts/
              cohort report runs/alone runs/mcl2 runs/mcl4 --peer 0 --label alone --label "MCL x2" --label "MCL x4"
            """)

    @Argument(help: "Run directories.") var runs: [String]
    @Option(help: "The HTML file to write (default: <run>/report.html for one run, report.html for several).") var out: String?
    @Option(help: "Also write each chart as <directory>/<chart>.svg.") var charts: String?
    @Option(help: "Chart only this peer of each cohort (repeatable; default: every peer).") var peer: [Int] = []
    @Option(help: "The name of each run on the charts, in the order of the runs (repeatable; default: the directories' names).")
    var label: [String] = []

    func validate() throws {
        if !label.isEmpty && label.count != runs.count {
            throw ValidationError("--label: \(label.count) label(s) for \(runs.count) run(s); give one per run or none")
        }
        if let bad = peer.first(where: { $0 < 0 }) { throw ValidationError("--peer: \(bad) is not a rank (0, 1, ...)") }
    }

    func run() throws {
        var records: [RunRecords]
        do { records = try runs.map { try RunRecords(directory: $0) } } catch {
            throw CLIError(message: "\(error)")
        }
        for i in label.indices { records[i].name = label[i] }
        if !peer.isEmpty {
            records = records.map { $0.keepingPeers(Set(peer)) }
            if let empty = records.first(where: { $0.members.isEmpty }) {
                throw CLIError(message: "--peer \(peer.map(String.init).joined(separator: ", ")): \(empty.directory) has no such peer")
            }
        }
        let report = RunReport(runs: records)
        let path = out ?? (runs.count == 1 ? runs[0] + "/report.html" : "report.html")
        let written = try report.write(html: path, chartsDirectory: charts)
        print("wrote \(path) (\(report.charts.count) charts, \(records.map { $0.members.count }.reduce(0, +)) network(s) from \(records.count) run(s))")
        if charts != nil { print("wrote \(written.count - 1) SVG file(s) in \(charts!)") }
    }
}
