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
            """)

    @Argument(help: "Run directories.") var runs: [String]
    @Option(help: "The HTML file to write (default: <run>/report.html for one run, report.html for several).") var out: String?
    @Option(help: "Also write each chart as <directory>/<chart>.svg.") var charts: String?

    func run() throws {
        let records: [RunRecords]
        do { records = try runs.map { try RunRecords(directory: $0) } } catch {
            throw ValidationError("\(error)")
        }
        let report = RunReport(runs: records)
        let path = out ?? (runs.count == 1 ? runs[0] + "/report.html" : "report.html")
        let written = try report.write(html: path, chartsDirectory: charts)
        print("wrote \(path) (\(report.charts.count) charts, \(records.map { $0.members.count }.reduce(0, +)) network(s) from \(records.count) run(s))")
        if charts != nil { print("wrote \(written.count - 1) SVG file(s) in \(charts!)") }
    }
}
