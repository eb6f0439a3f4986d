import Foundation
import Testing
import Training
import Runtime
import TestSupport
@testable import Report

/// `cohort report` on tiny real runs: a two-peer cohort and a single network.
@Suite(.serialized) struct ReportTests {
    static let root = NSTemporaryDirectory() + "cohort-report-\(getpid())"

    /// A 2-peer, 2-epoch cohort (4 steps), a 2-epoch single network and a cohort of one peer, made once.
    static let runs: (cohort: String, single: String, solo: String) = {
        try? FileManager.default.removeItem(atPath: root)
        let cohort = root + "/tiny-cohort", single = root + "/tiny-train"
        let c = try! CohortConfiguration.parse("""
            data: {dataset: fashion-mnist, train_limit: 128, test_limit: 64}
            epochs: 2
            batch_size: 64
            peers: [{model: resnet8}, {model: resnet8}]
            mcl: {embedding_dim: 16}
            output: \(cohort)
            """)
        _ = try! InProcessCohort(configuration: c).run(progress: ProgressReporter(interactive: false))
        var o = TrainingOptions()
        o.model = "resnet8"; o.epochs = 2; o.batchSize = 64; o.trainLimit = 128; o.testLimit = 64
        _ = try! Trainer(options: o, outputDirectory: single).run(resume: false, progress: ProgressReporter(interactive: false))
        let solo = root + "/solo"
        let s = try! CohortConfiguration.parse("""
            data: {dataset: fashion-mnist, train_limit: 128, test_limit: 64}
            epochs: 1
            batch_size: 64
            peers: [{model: resnet8}]
            output: \(solo)
            """)
        _ = try! InProcessCohort(configuration: s).run(progress: ProgressReporter(interactive: false))
        return (cohort, single, solo)
    }()

    @Test func readsACohortAndASingleNetwork() throws {
        let cohort = try RunRecords(directory: Self.runs.cohort)
        #expect(cohort.isCohort && cohort.name == "tiny-cohort")
        #expect(cohort.members.map(\.label) == ["p0 resnet8", "p1 resnet8"])
        #expect(cohort.members.allSatisfy { $0.steps.count == 4 && $0.epochs.count == 2 })
        #expect(cohort.cohortEpochs.count == 2 && cohort.cohortEpochs[1]["peer_top1.1"] != nil)
        #expect(cohort.imagesPerStep == 64)
        let single = try RunRecords(directory: Self.runs.single)
        #expect(!single.isCohort && single.members.map(\.label) == ["resnet8"])
        #expect(single.members[0].steps.count == 4 && single.members[0].epochs.count == 2 && single.imagesPerStep == 64)
    }

    @Test func chartsEveryTermAndTabulatesTheFinalResults() throws {
        let cohort = try RunRecords(directory: Self.runs.cohort)
        let report = RunReport(runs: [cohort])
        let ids = report.charts.map(\.id)
        for id in ["test_top1", "train_accuracy", "images_per_epoch", "step_total", "step_ce", "step_vcl", "step_soft_icl",
                   "step_logit_kd", "step_accuracy", "step_lr"] {
            #expect(ids.contains(id), "\(id) in \(ids)")
        }
        #expect(ids.first == "test_top1" && ids.firstIndex(of: "step_total")! < ids.firstIndex(of: "step_vcl")!)
        let test = report.charts.first { $0.id == "test_top1" }!.chart
        #expect(test.series.map(\.name) == ["p0 resnet8", "p1 resnet8", "ensemble"])
        #expect(test.series.allSatisfy { $0.points.map(\.x) == [1, 2] })
        // The table's last test accuracy is the summary's.
        let summaryFile = try Data(contentsOf: URL(fileURLWithPath: Self.runs.cohort + "/summary.json"))
        let summary = (try JSONSerialization.jsonObject(with: summaryFile) as! [String: Any])["peers"] as! [[String: Any]]
        let rows = report.finalResults
        #expect(rows.count == 3 && rows[2][1] == "ensemble")
        for rank in 0..<2 {
            #expect(rows[rank][2] == String(format: "%.2f", 100 * (summary[rank]["test_top1"] as! Double)))
            #expect(rows[rank][5] == "4")
        }
        let html = report.html
        #expect(html.hasPrefix("<!DOCTYPE html>") && html.contains("<svg") && html.contains("<polyline"))
        #expect(!html.contains("<script") && !html.contains("src=") && !html.contains("href="), "self-contained")
        #expect(html.components(separatedBy: "<svg").count - 1 == report.charts.count)
    }

    @Test func severalRunsShareAxesWithOneLinePerNetwork() throws {
        let report = RunReport(runs: [try RunRecords(directory: Self.runs.cohort), try RunRecords(directory: Self.runs.single)])
        let test = report.charts.first { $0.id == "test_top1" }!.chart
        #expect(test.series.map(\.name) == ["tiny-cohort p0 resnet8", "tiny-cohort p1 resnet8", "tiny-cohort ensemble", "tiny-train resnet8"])
        // The single network's loss has its own chart; the cohort's cross-entropy and the network's step time theirs.
        #expect(report.charts.contains { $0.id == "step_loss" && $0.chart.series.map(\.name) == ["tiny-train resnet8"] })
        #expect(report.charts.contains { $0.id == "step_images_per_second" })
        #expect(report.finalResults.map(\.[0]) == ["tiny-cohort", "tiny-cohort", "tiny-cohort", "tiny-train"])
    }

    @Test func writesThePageAndOneSVGPerChart() throws {
        let report = RunReport(runs: [try RunRecords(directory: Self.runs.cohort)])
        let out = Self.root + "/out"
        let written = try report.write(html: out + ".html", chartsDirectory: out)
        #expect(written.count == report.charts.count + 1)
        for file in written.dropFirst() {
            let svg = try String(contentsOfFile: file, encoding: .utf8)
            #expect(svg.hasPrefix("<svg xmlns=\"http://www.w3.org/2000/svg\"") && svg.hasSuffix("</svg>\n"), "\(file)")
            #expect(svg.components(separatedBy: "<text").count == svg.components(separatedBy: "</text>").count)
        }
    }

    @Test func theCommandLineWritesTheReport() throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try cohortExecutable())
        process.arguments = ["report", Self.runs.cohort, Self.runs.single, "--out", Self.root + "/cli.html"]
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationStatus == 0, "\(output)")
        #expect(output.contains("3 network(s) from 2 run(s)"))
        #expect(FileManager.default.fileExists(atPath: Self.root + "/cli.html"))
    }

    @Test func runsWithTheSameDirectoryNameAreToldApart() throws {
        #expect(RunReport.distinctNames(["/r/resnet8/kd/seed-0", "/r/resnet8/mcl2/seed-0", "/r/teacher", "runs/x/seed-1"])
                == ["kd/seed-0", "mcl2/seed-0", "teacher", "seed-1"])
        #expect(RunReport.distinctNames(["/a/s", "/b/a/s"]) == ["a/s", "b/a/s"])
        // Labels given by the caller are kept.
        var labelled = try RunRecords(directory: Self.runs.cohort)
        labelled.name = "MCL x2"
        let report = RunReport(runs: [labelled, try RunRecords(directory: Self.runs.cohort)])
        #expect(report.runs.map(\.name) == ["MCL x2", "tiny-cohort"])
    }

    @Test func onePeerPerCohortKeepsSingleNetworks() throws {
        let cohort = try RunRecords(directory: Self.runs.cohort).keepingPeers([1])
        #expect(cohort.members.map(\.label) == ["p1 resnet8"] && cohort.members[0].rank == 1)
        let single = try RunRecords(directory: Self.runs.single).keepingPeers([1])
        #expect(single.members.map(\.label) == ["resnet8"])
        let test = RunReport(runs: [cohort, single]).charts.first { $0.id == "test_top1" }!.chart
        #expect(test.series.map(\.name) == ["tiny-cohort p1 resnet8", "tiny-cohort ensemble", "tiny-train resnet8"])
    }

    @Test func aCohortOfOneHasNoEnsembleLine() throws {
        let solo = try RunRecords(directory: Self.runs.solo)
        #expect(solo.networkCount == 1 && solo.cohortEpochs.count == 1)
        let report = RunReport(runs: [solo])
        #expect(report.charts.first { $0.id == "test_top1" }!.chart.series.map(\.name) == ["p0 resnet8"])
        #expect(report.finalResults.map(\.[1]) == ["p0 resnet8"])
        let epochCharts = report.charts.filter { $0.chart.xLabel == "epoch" }
        #expect(!epochCharts.isEmpty && epochCharts.allSatisfy { $0.chart.integerX })
        // One peer kept of two: still a cohort's ensemble.
        let kept = try RunRecords(directory: Self.runs.cohort).keepingPeers([0])
        #expect(kept.networkCount == 2 && RunReport(runs: [kept]).finalResults.map(\.[1]) == ["p0 resnet8", "ensemble"])
    }

    @Test func theCommandLineLabelsRunsAndPicksPeers() throws {
        func cohort(_ arguments: [String]) throws -> (status: Int32, output: String) {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: try cohortExecutable())
            process.arguments = arguments
            let pipe = Pipe()
            process.standardOutput = pipe
            process.standardError = pipe
            try process.run()
            let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            process.waitUntilExit()
            return (process.terminationStatus, output)
        }
        let page = Self.root + "/labelled.html"
        let ok = try cohort(["report", Self.runs.cohort, Self.runs.single, "--peer", "0", "--label", "two peers",
                             "--label", "alone", "--out", page])
        #expect(ok.status == 0 && ok.output.contains("2 network(s) from 2 run(s)"), "\(ok.output)")
        let html = try String(contentsOfFile: page, encoding: .utf8)
        #expect(html.contains("two peers p0 resnet8") && html.contains("alone resnet8") && !html.contains("p1 resnet8"))
        let labels = try cohort(["report", Self.runs.cohort, Self.runs.single, "--label", "one", "--out", page])
        #expect(labels.status != 0 && labels.output.contains("--label: 1 label(s) for 2 run(s)"), "\(labels.output)")
        let peers = try cohort(["report", Self.runs.cohort, "--peer", "5", "--out", page])
        #expect(peers.status != 0 && peers.output.contains("has no such peer"), "\(peers.output)")
    }

    @Test func aDirectoryWithoutMetricsIsNamed() {
        do {
            _ = try RunRecords(directory: Self.root + "/nowhere")
            Issue.record("no error")
        } catch {
            #expect("\(error)".contains("/nowhere") && "\(error)".contains("no such directory"))
        }
        let empty = Self.root + "/empty"
        try? FileManager.default.createDirectory(atPath: empty, withIntermediateDirectories: true)
        #expect(throws: ReportError.self) { try RunRecords(directory: empty) }
    }

    @Test func ticksAreRoundAndCoverTheRange() {
        let unit = LineChart.ticks(0, 1)
        #expect(unit.count == 6 && zip(unit, [0, 0.2, 0.4, 0.6, 0.8, 1]).allSatisfy { abs($0 - $1) < 1e-9 })
        // Epochs: whole numbers, however few.
        #expect(LineChart.ticks(1, 3) == [1, 1.5, 2, 2.5, 3] && LineChart.ticks(1, 3, integers: true) == [1, 2, 3])
        #expect(LineChart.ticks(1, 30, integers: true) == [0, 10, 20, 30])
        let t = LineChart.ticks(13, 87)
        #expect(t.first! <= 13 && t.last! >= 87 && t.count <= 8)
        #expect(escape("a<b & \"c\"") == "a&lt;b &amp; &quot;c&quot;")
        let one = LineChart(title: "x", xLabel: "a", yLabel: "b", series: [.init(name: "s", points: [(1, 2)])]).svg
        #expect(one.contains("<circle"))
        let none = LineChart(title: "x", xLabel: "a", yLabel: "b", series: []).svg
        #expect(none.contains("no data"))
    }
}
