import Foundation
import Testing
import Yams
import Runtime
import TestSupport

/// The deploy files agree with the CLI and with each other: every flag they pass exists, ports match the
/// configuration, ranks come from the scheduler, keys are where the configuration says, restarts resume.
@Suite struct DeployFilesTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../deploy").standardized.path

    /// `cohort SUBCOMMAND --help`.
    static func help(_ subcommand: String) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try cohortExecutable())
        process.arguments = [subcommand, "--help"]
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let text = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        return text
    }

    /// Every `--flag` after `cohort SUBCOMMAND` in `text` must be one of the subcommand's options.
    static func expectFlagsExist(in text: String, file: String) throws {
        var checked = 0
        for subcommand in ["coordinator", "peer", "monitor", "launch", "keygen"] {
            let help = try Self.help(subcommand)
            var rest = Substring(text)
            while let r = rest.range(of: "cohort\\s+\(subcommand)\\b", options: .regularExpression) {
                // The command runs to the end of its line (continuation backslashes joined) or its JSON list.
                var command = ""
                var tail = rest[r.upperBound...]
                while true {
                    let line = tail.prefix { $0 != "\n" }
                    command += line
                    tail = tail.dropFirst(line.count + 1)
                    if !(line.hasSuffix("\\") || (line.contains("[") && !line.contains("]"))) { break }
                }
                let flags = command.matches(of: /--[a-z][a-z-]*/).map { String($0.output) }
                checked += flags.count
                for flag in flags {
                    #expect(help.contains(flag), "\(file): cohort \(subcommand) has no \(flag)")
                }
                rest = tail
            }
        }
        #expect(checked > 0, "\(file): no cohort command found")
    }

    @Test func kubernetesManifestsMatchTheCLIAndTheConfiguration() throws {
        let path = Self.root + "/kubernetes/cohort.yaml"
        let text = try String(contentsOfFile: path, encoding: .utf8)
        let documents = try Yams.load_all(yaml: text).compactMap { $0 as? [String: Any] }
        func document(_ kind: String, _ name: String) throws -> [String: Any] {
            try #require(documents.first { $0["kind"] as? String == kind && ($0["metadata"] as? [String: Any])?["name"] as? String == name },
                         "\(kind) \(name)")
        }
        let configMap = try document("ConfigMap", "cohort-config")
        let configuration = try CohortConfiguration.parse(try #require((configMap["data"] as? [String: String])?["cohort.yaml"]))
        let port = { (endpoint: String) in Int(endpoint.split(separator: ":").last!)! }
        let service = try document("Service", "cohort-coordinator")
        let servicePorts = ((service["spec"] as? [String: Any])?["ports"] as? [[String: Any]] ?? []).compactMap { $0["port"] as? Int }
        #expect(Set(servicePorts) == [port(configuration.network.coordinator), port(configuration.network.stream)])

        let coordinatorJob = try document("Job", "cohort-coordinator")
        let peersJob = try document("Job", "cohort-peers")
        let peersSpec = try #require(peersJob["spec"] as? [String: Any])
        #expect(peersSpec["completionMode"] as? String == "Indexed")
        #expect(peersSpec["completions"] as? Int == configuration.peers.count && peersSpec["parallelism"] as? Int == configuration.peers.count)

        func pod(_ job: [String: Any]) throws -> [String: Any] {
            try #require(((job["spec"] as? [String: Any])?["template"] as? [String: Any])?["spec"] as? [String: Any])
        }
        for (job, role) in [(coordinatorJob, "coordinator"), (peersJob, "peer")] {
            let spec = try pod(job)
            #expect(spec["restartPolicy"] as? String == "OnFailure")
            let container = try #require((spec["containers"] as? [[String: Any]])?.first)
            let command = (container["command"] as? [String] ?? []).joined(separator: " ")
            #expect(command.contains("cohort \(role)") && command.contains("--resume"), "\(command)")
            #expect(command.contains("--config /etc/cohort/cohort.yaml"))
            let mounts = container["volumeMounts"] as? [[String: Any]] ?? []
            let mountPaths = mounts.compactMap { $0["mountPath"] as? String }
            #expect(Set(mountPaths) == ["/etc/cohort", "/keys", "/runs"])
            #expect(configuration.output.hasPrefix("/runs/"))
            let volumes = spec["volumes"] as? [[String: Any]] ?? []
            #expect(volumes.contains { ($0["secret"] as? [String: Any])?["secretName"] as? String == "cohort-keys" })
            #expect(container["resources"] != nil)
            // Scraped by Prometheus: the pod's annotations name the port the process serves its metrics on.
            let annotations = ((job["spec"] as? [String: Any])?["template"] as? [String: Any]).flatMap { ($0["metadata"] as? [String: Any])?["annotations"] as? [String: String] } ?? [:]
            #expect(annotations["prometheus.io/scrape"] == "true" && annotations["prometheus.io/path"] == "/metrics", "\(role)")
            let metricsPort = try #require(annotations["prometheus.io/port"])
            #expect(command.contains("--metrics-port \(metricsPort)"), "\(command)")
            let containerPorts = (container["ports"] as? [[String: Any]] ?? []).compactMap { $0["containerPort"] as? Int }
            #expect(containerPorts.contains(Int(metricsPort)!))
            if role == "peer" {
                #expect(command.contains("--rank $JOB_COMPLETION_INDEX") && command.contains("--key /keys/peer-$JOB_COMPLETION_INDEX.key"))
                #expect(command.contains("--coordinator tcp://cohort-coordinator:\(port(configuration.network.coordinator))"))
            } else {
                #expect(command.contains("--key /keys/coordinator.key"))
                #expect(Set(containerPorts.filter { $0 != Int(metricsPort)! }) == Set(servicePorts))
            }
        }
        // The configuration's keys are the secret's files, one per peer in rank order.
        let security = try #require(configuration.security)
        #expect(security.coordinatorKey == "/keys/coordinator.pub")
        #expect(security.peerKeys == (0..<configuration.peers.count).map { "/keys/peer-\($0).pub" })
        try Self.expectFlagsExist(in: text, file: "kubernetes/cohort.yaml")
    }

    @Test func slurmAndSystemdCommandsUseRealFlags() throws {
        for file in ["slurm/cohort.sbatch", "systemd/cohort-coordinator.service", "systemd/cohort-peer@.service"] {
            let text = try String(contentsOfFile: Self.root + "/" + file, encoding: .utf8)
            try Self.expectFlagsExist(in: text.replacingOccurrences(of: "\"$COHORT\"", with: "cohort"), file: file)
        }
        let sbatch = try String(contentsOfFile: Self.root + "/slurm/cohort.sbatch", encoding: .utf8)
        #expect(sbatch.contains("SLURM_PROCID") && sbatch.contains("SLURM_JOB_NODELIST"))
    }
}
