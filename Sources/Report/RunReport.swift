import Foundation

/// The report of one or more runs: a chart per recorded quantity (one line per network of every run, on
/// shared axes) and a table of final results, as a self-contained HTML page or one SVG file per chart.
public struct RunReport {
    public let runs: [RunRecords]
    /// The charts in page order, each with a file-name-safe identifier.
    public private(set) var charts: [(id: String, chart: LineChart)] = []

    /// Longest line drawn per series: step series are averaged over bins beyond this many points.
    public static let maximumPoints = 400

    /// Fields of step records that are positions or flags, not quantities to plot.
    static let positional: Set<String> = ["epoch", "step", "global_step", "skipped", "peers_present"]

    /// Charts `runs`; runs whose directories end in the same name are told apart by as many of their
    /// directories' trailing components as it takes (`kd/seed-0`, `mcl2/seed-0`).
    public init(runs: [RunRecords]) {
        var runs = runs
        let unlabelled = runs.indices.filter { runs[$0].name == URL(fileURLWithPath: runs[$0].directory).standardizedFileURL.lastPathComponent }
        for (i, name) in zip(unlabelled, Self.distinctNames(unlabelled.map { runs[$0].directory })) { runs[i].name = name }
        self.runs = runs
        let several = runs.count > 1
        func name(_ run: RunRecords, _ member: RunRecords.Member) -> String { several ? "\(run.name) \(member.label)" : member.label }

        // Per epoch: test accuracy (with the cohorts' ensembles), the epoch's mean training accuracy, the rate.
        var test: [LineChart.Series] = [], train: [LineChart.Series] = [], rate: [LineChart.Series] = []
        for run in runs {
            for m in run.members {
                let t = m.epochs.compactMap { e in e["test_top1"].map { (x: (e["epoch"] ?? 0) + 1, y: 100 * $0) } }
                if !t.isEmpty { test.append(.init(name: name(run, m), points: t)) }
                let a = m.epochs.compactMap { e in e["train_accuracy"].map { (x: (e["epoch"] ?? 0) + 1, y: 100 * $0) } }
                if !a.isEmpty { train.append(.init(name: name(run, m), points: a)) }
            }
            // A cohort of one network has an "ensemble" equal to that network: not drawn.
            let ensemble = run.networkCount < 2 ? [] : run.cohortEpochs.compactMap { e in e["ensemble_top1"].map { (x: (e["epoch"] ?? 0) + 1, y: 100 * $0) } }
            if !ensemble.isEmpty { test.append(.init(name: several ? "\(run.name) ensemble" : "ensemble", points: ensemble)) }
            if let perStep = run.imagesPerStep {
                // Cohort: from the cumulative seconds at each epoch's end; single network: each epoch's seconds.
                var points: [(x: Double, y: Double)] = []
                if !run.cohortEpochs.isEmpty {
                    var previous = (step: 0.0, seconds: 0.0)
                    for e in run.cohortEpochs {
                        guard let s = e["global_step"], let t = e["seconds"], t > previous.seconds else { continue }
                        points.append(((e["epoch"] ?? 0) + 1, (s - previous.step) * perStep / (t - previous.seconds)))
                        previous = (s, t)
                    }
                } else if let m = run.members.first {
                    var previousStep = 0.0
                    for e in m.epochs {
                        guard let s = e["global_step"], let t = e["seconds"], t > 0 else { continue }
                        points.append(((e["epoch"] ?? 0) + 1, (s - previousStep) * perStep / t))
                        previousStep = s
                    }
                }
                if !points.isEmpty { rate.append(.init(name: several ? run.name : "all networks", points: points)) }
            }
        }
        charts.append(("test_top1", LineChart(title: "Test top-1 accuracy", xLabel: "epoch", yLabel: "%", series: test, integerX: true)))
        if !train.isEmpty {
            charts.append(("train_accuracy", LineChart(title: "Training accuracy (epoch mean)", xLabel: "epoch", yLabel: "%", series: train, integerX: true)))
        }
        if !rate.isEmpty {
            charts.append(("images_per_epoch", LineChart(title: "Throughput per epoch (training and evaluation)", xLabel: "epoch",
                                                         yLabel: "images/s", series: rate, integerX: true)))
        }

        // Per step: every quantity any network recorded, the total loss first.
        var keys = Set<String>()
        for run in runs { for m in run.members { for s in m.steps { keys.formUnion(s.keys) } } }
        keys.subtract(Self.positional)
        keys = keys.filter { !$0.hasPrefix("present.") }
        let first = ["total", "loss", "ce", "accuracy", "lr"]
        let ordered = first.filter(keys.contains) + keys.subtracting(first).sorted()
        for key in ordered {
            var series: [LineChart.Series] = []
            for run in runs {
                for m in run.members {
                    var points = m.steps.compactMap { s in s[key].map { (x: s["global_step"] ?? 0, y: key == "accuracy" ? 100 * $0 : $0) } }
                    if key.hasSuffix("_seconds") || key == "seconds" { points = points.map { ($0.x, 1000 * $0.y) } }
                    if !points.isEmpty { series.append(.init(name: name(run, m), points: Self.binned(points))) }
                }
            }
            charts.append(("step_" + key, LineChart(title: Self.title(key), xLabel: "step", yLabel: Self.unit(key), series: series)))
        }
        // Per step throughput where the steps were timed (distributed peers, single networks).
        var stepRate: [LineChart.Series] = []
        for run in runs {
            guard let perStep = run.imagesPerStep else { continue }
            for m in run.members {
                let points = m.steps.compactMap { s -> (x: Double, y: Double)? in
                    guard let t = s["step_seconds"] ?? s["seconds"], t > 0 else { return nil }
                    return (s["global_step"] ?? 0, perStep / t)
                }
                if !points.isEmpty { stepRate.append(.init(name: name(run, m), points: Self.binned(points))) }
            }
        }
        if !stepRate.isEmpty {
            charts.append(("step_images_per_second", LineChart(title: "Throughput per step", xLabel: "step", yLabel: "images/s", series: stepRate)))
        }
    }

    /// Names for `directories`: each its last path component, extended by parent components while it
    /// equals another's.
    static func distinctNames(_ directories: [String]) -> [String] {
        let components = directories.map { URL(fileURLWithPath: $0).standardizedFileURL.pathComponents.filter { $0 != "/" } }
        var depth = components.map { _ in 1 }
        func name(_ i: Int) -> String { components[i].suffix(depth[i]).joined(separator: "/") }
        while true {
            var byName: [String: [Int]] = [:]
            for i in components.indices { byName[name(i), default: []].append(i) }
            let clashing = byName.values.filter { $0.count > 1 }.flatMap { $0 }.filter { depth[$0] < components[$0].count }
            if clashing.isEmpty { break }
            for i in clashing { depth[i] += 1 }
        }
        return components.indices.map(name)
    }

    /// At most ``maximumPoints`` points: consecutive points averaged in equal bins.
    static func binned(_ points: [(x: Double, y: Double)]) -> [(x: Double, y: Double)] {
        guard points.count > maximumPoints else { return points }
        let bin = (points.count + maximumPoints - 1) / maximumPoints
        return stride(from: 0, to: points.count, by: bin).map { start in
            let slice = points[start..<Swift.min(start + bin, points.count)]
            return (slice.map(\.x).reduce(0, +) / Double(slice.count), slice.map(\.y).reduce(0, +) / Double(slice.count))
        }
    }

    static func title(_ key: String) -> String {
        let names = ["total": "Total loss", "loss": "Loss", "ce": "Cross-entropy", "accuracy": "Training accuracy (batch)",
                     "lr": "Learning rate", "vcl": "VCL", "icl": "ICL", "soft_vcl": "Soft VCL", "soft_icl": "Soft ICL",
                     "logit_kd": "Logit distillation (to the ensemble)", "kd": "KD", "crcd": "CRCD (features)",
                     "crcd_gradient": "CRCD (gradient elements)", "rrd": "RRD", "distillation_weight": "Teacher-loss weight",
                     "exchange_seconds": "Exchange time", "step_seconds": "Step time", "idle_seconds": "Idle time",
                     "seconds": "Step time", "embedding_cosine": "Embedding collapse (mean pairwise cosine; 1 = collapsed)"]
        if let n = names[key] { return n }
        if key.hasPrefix("ce_aux") { return "Cross-entropy, auxiliary branch \(key.dropFirst("ce_aux".count))" }
        if key.hasPrefix("embedding_cosine_aux") {
            return "Embedding collapse, auxiliary branch \(key.dropFirst("embedding_cosine_aux".count)) (mean pairwise cosine)"
        }
        if key.hasPrefix("mcl_aux") { return "MCL, auxiliary branch \(key.dropFirst("mcl_aux".count))" }
        return key
    }

    static func unit(_ key: String) -> String {
        if key == "accuracy" { return "%" }
        if key.hasPrefix("embedding_cosine") { return "mean cosine" }
        if key.hasSuffix("_seconds") || key == "seconds" { return "ms" }
        if key == "total" || key == "loss" { return "loss (weighted sum)" }
        return key == "lr" ? "learning rate" : "value (unweighted)"
    }

    /// Rows of the final-results table: run, network, last and best test top-1 (%), steps, seconds.
    public var finalResults: [[String]] {
        var rows: [[String]] = []
        for run in runs {
            let seconds = run.seconds ?? run.members.first.map { $0.epochs.compactMap { $0["seconds"] }.reduce(0, +) }
            for m in run.members {
                let tops = m.epochs.compactMap { $0["test_top1"] }
                rows.append([run.name, m.label, tops.last.map { String(format: "%.2f", 100 * $0) } ?? "–",
                             tops.max().map { String(format: "%.2f", 100 * $0) } ?? "–", "\(m.epochs.count)",
                             m.steps.last.flatMap { $0["global_step"] }.map { String(Int($0)) } ?? "–",
                             seconds.map { String(format: "%.0f", $0) } ?? "–"])
            }
            let ensemble = run.networkCount < 2 ? [] : run.cohortEpochs.compactMap { $0["ensemble_top1"] }
            if !ensemble.isEmpty {
                rows.append([run.name, "ensemble", String(format: "%.2f", 100 * ensemble.last!), String(format: "%.2f", 100 * ensemble.max()!),
                             "\(ensemble.count)", run.cohortEpochs.last.flatMap { $0["global_step"] }.map { String(Int($0)) } ?? "–",
                             seconds.map { String(format: "%.0f", $0) } ?? "–"])
            }
        }
        return rows
    }

    /// The whole report as one HTML page: no scripts, no external resources.
    public var html: String {
        var page = """
        <!DOCTYPE html>
        <html lang="en"><head><meta charset="utf-8"><title>Cohort report: \(escape(runs.map(\.name).joined(separator: ", ")))</title>
        <style>body{font-family:sans-serif;margin:24px;max-width:1500px}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child,td:nth-child(2),th{text-align:left}.charts{display:flex;flex-wrap:wrap;gap:12px}</style>
        </head><body>
        <h1>Cohort report</h1>

        """
        page += "<p>" + runs.map { "<b>\(escape($0.name))</b> (\(escape($0.directory)), \($0.isCohort ? "cohort of \($0.members.count)" : "single network"))" }
            .joined(separator: "; ") + "</p>\n"
        page += "<h2>Final results</h2>\n<table><tr><th>run</th><th>network</th><th>last test top-1 %</th><th>best test top-1 %</th><th>epochs</th><th>steps</th><th>seconds</th></tr>\n"
        for row in finalResults { page += "<tr>" + row.map { "<td>\(escape($0))</td>" }.joined() + "</tr>\n" }
        page += "</table>\n<h2>Charts</h2>\n<p>Step series with more than \(Self.maximumPoints) points are averaged over equal bins. Loss terms are unweighted.</p>\n<div class=\"charts\">\n"
        for (_, chart) in charts { page += "<div>\(chart.svg)</div>\n" }
        page += "</div>\n</body></html>\n"
        return page
    }

    /// Writes ``html`` to `path`, and each chart as `<chartsDirectory>/<id>.svg` when a directory is given
    /// (creating the directories).
    /// - Returns: the files written.
    @discardableResult
    public func write(html path: String, chartsDirectory: String? = nil) throws -> [String] {
        var written: [String] = []
        func put(_ text: String, _ file: String) throws {
            let url = URL(fileURLWithPath: file)
            do {
                try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
                try Data(text.utf8).write(to: url, options: .atomic)
            } catch {
                throw ReportError.cannotWrite(file, error.localizedDescription)
            }
            written.append(file)
        }
        try put(html, path)
        if let chartsDirectory {
            do { try FileManager.default.createDirectory(atPath: chartsDirectory, withIntermediateDirectories: true) } catch {
                throw ReportError.cannotWrite(chartsDirectory, error.localizedDescription)
            }
            for (id, chart) in charts { try put(chart.svg, chartsDirectory + "/" + id + ".svg") }
        }
        return written
    }
}
