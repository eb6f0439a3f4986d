import Foundation
import Testing
@testable import Cluster

/// `--metrics-port` (issue 20): every process of a running cohort serves its series in Prometheus's text format.
@Suite(.serialized) struct MetricsEndpointTests {
    /// The value of the sample `name{...}` whose labels include every one of `labels`.
    static func sample(_ body: String, _ name: String, _ labels: [String] = []) -> Double? {
        body.split(separator: "\n").first { line in
            !line.hasPrefix("#") && (line.hasPrefix(name + "{") || line.hasPrefix(name + " ")) && labels.allSatisfy { line.contains($0) }
        }.flatMap { Double($0.split(separator: " ").last ?? "") }
    }

    /// A peer's endpoint, scraped while the cohort trains: the step, the loss terms (total, ce, the teacher's
    /// kd, crcd, rrd), the training accuracy and, after the first epoch, the test accuracy; the coordinator's
    /// endpoint has the cohort's step and the ensemble's accuracy. Anything but /metrics is 404.
    @Test func aRunningPeerServesItsStepLossAndAccuracy() throws {
        let directory = scratch("metrics")
        let config = directory + "/cohort.yaml"
        try write(cohortConfiguration(epochs: 3, trainLimit: 1280), to: config)
        let launch = try CohortProcess(["launch", "--config", config, "--threads", "2", "--out", directory + "/run", "--metrics-port", "0"])
        defer { _ = launch.finish() }
        func port(of process: String) -> Int? {
            launch.output.split(separator: "\n").first { $0.hasPrefix("[\(process)]") && $0.contains("serving metrics at http://") }
                .flatMap { line in line.range(of: "port=").map { Int(line[$0.upperBound...].prefix { $0.isNumber }) } ?? nil }
        }
        try #require(launch.waitForOutput(seconds: 120) { _ in port(of: "peer 1") != nil && port(of: "coordinator") != nil }, "\(launch.output)")
        let peerPort = port(of: "peer 1")!, coordinatorPort = port(of: "coordinator")!

        var body = ""
        let deadline = Date() + 240
        while Date() < deadline && launch.process.isRunning {
            if let (status, text) = httpGet(port: peerPort, path: "/metrics"), status == 200 {
                body = text
                if (Self.sample(body, "cohort_peer_test_accuracy") ?? 0) > 0 { break }
            }
            usleep(200_000)
        }
        let peer = [#"rank="1""#, #"model="resnet8""#]
        #expect((Self.sample(body, "cohort_peer_global_step", peer) ?? 0) >= 20, "\(body)")
        for term in ["total", "ce", "kd", "crcd", "rrd"] {
            #expect(Self.sample(body, "cohort_peer_loss", peer + [#"term="\#(term)""#])?.isFinite == true, "\(term): \(body)")
        }
        #expect((0...1).contains(Self.sample(body, "cohort_peer_train_accuracy", peer) ?? -1))
        #expect((Self.sample(body, "cohort_peer_test_accuracy", peer) ?? 0) > 0, "\(body)")
        #expect((Self.sample(body, "cohort_peer_images_total", peer) ?? 0) >= 1280)
        #expect(body.contains("# TYPE cohort_peer_global_step gauge") && body.contains("# HELP cohort_peer_loss"))

        // The coordinator scores the epoch once every peer's logits arrived, just after the peers' own line.
        var cohort = httpGet(port: coordinatorPort, path: "/metrics")
        while Date() < deadline && launch.process.isRunning && Self.sample(cohort?.body ?? "", "cohort_ensemble_test_accuracy") == nil {
            usleep(200_000)
            cohort = httpGet(port: coordinatorPort, path: "/metrics")
        }
        #expect(cohort?.status == 200 && (Self.sample(cohort?.body ?? "", "cohort_global_step") ?? 0) >= 20, "\(cohort?.body ?? "")")
        #expect(Self.sample(cohort?.body ?? "", "cohort_ensemble_test_accuracy") != nil)
        #expect(httpGet(port: peerPort, path: "/nothing")?.status == 404)
        #expect(launch.finish() == 0, "\(launch.output)")
    }

    /// A port already taken is a clear error naming the option.
    @Test func aTakenPortIsRefusedClearly() throws {
        let first = try MetricsEndpoint(port: 0, host: "127.0.0.1")
        defer { first.stop() }
        #expect(throws: MetricsEndpointError.self) { try MetricsEndpoint(port: first.port, host: "127.0.0.1") }
        do { _ = try MetricsEndpoint(port: first.port, host: "127.0.0.1") } catch {
            #expect("\(error)".contains("--metrics-port") && "\(error)".contains("\(first.port)"))
        }
        #expect(httpGet(port: first.port, path: "/")?.status == 200)
    }
}
